using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Net.Sockets;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;

namespace Platter.Server.Api;

/// <summary>
/// Client of the management API over its unix socket (or TCP with a token). Failures come back as
/// <see cref="PlatterApiException"/> (the server answered with an error) or <see cref="ServerUnreachableException"/>
/// (nothing answered).
/// </summary>
public sealed partial class PlatterApiClient : IDisposable
{
    private readonly HttpClient _http;

    private PlatterApiClient(HttpClient http, string endpoint)
    {
        _http = http;
        Endpoint = endpoint;
    }

    /// <summary>Where the client connects, for messages: a socket path or a URL.</summary>
    public string Endpoint { get; }

    /// <summary>A client of the API on the unix socket at <paramref name="socketPath"/>.</summary>
    public static PlatterApiClient ForUnixSocket(string socketPath, TimeSpan? timeout = null)
    {
        var endPoint = new UnixDomainSocketEndPoint(socketPath);
        var handler = new SocketsHttpHandler
        {
            ConnectCallback = async (_, cancellationToken) =>
            {
                var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                try
                {
                    await socket.ConnectAsync(endPoint, cancellationToken).ConfigureAwait(false);
                    return new NetworkStream(socket, ownsSocket: true);
                }
                catch
                {
                    socket.Dispose();
                    throw;
                }
            },
        };
        // The host name is never resolved: every request goes through the callback above.
        var http = new HttpClient(handler) { BaseAddress = new Uri("http://platter/"), Timeout = timeout ?? TimeSpan.FromSeconds(60) };
        return new PlatterApiClient(http, socketPath);
    }

    /// <summary>A client of the API on TCP at <paramref name="baseUri"/>, authenticating with <paramref name="token"/>.</summary>
    public static PlatterApiClient ForTcp(Uri baseUri, string token, TimeSpan? timeout = null)
    {
        var http = new HttpClient { BaseAddress = baseUri, Timeout = timeout ?? TimeSpan.FromSeconds(60) };
        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", token);
        return new PlatterApiClient(http, baseUri.ToString());
    }

    private static PlatterJsonContext Json => PlatterJsonContext.Default;

    /// <summary>GET /v1/health.</summary>
    public Task<HealthDto> GetHealthAsync(CancellationToken cancellationToken = default) =>
        SendAsync(HttpMethod.Get, "v1/health", null, Json.HealthDto, cancellationToken);

    /// <summary>GET /v1/usage.</summary>
    public Task<UsageDto> GetUsageAsync(CancellationToken cancellationToken = default) =>
        SendAsync(HttpMethod.Get, "v1/usage", null, Json.UsageDto, cancellationToken);

    /// <summary>GET /v1/volumes.</summary>
    public async Task<IReadOnlyList<VolumeDto>> ListVolumesAsync(CancellationToken cancellationToken = default) =>
        (await SendAsync(HttpMethod.Get, "v1/volumes", null, Json.VolumeListDto, cancellationToken).ConfigureAwait(false)).Volumes;

    /// <summary>GET /v1/volumes/{name}.</summary>
    public Task<VolumeDto> GetVolumeAsync(string name, CancellationToken cancellationToken = default) =>
        GetVolumeAsync(name, usage: false, cancellationToken);

    /// <summary>GET /v1/volumes/{name}; with <paramref name="usage"/> (<c>?usage=true</c>) its allocated bytes are counted
    /// even on a store where that walks the image (RBD).</summary>
    public Task<VolumeDto> GetVolumeAsync(string name, bool usage, CancellationToken cancellationToken = default) =>
        SendAsync(HttpMethod.Get, VolumePath(name) + (usage ? "?usage=true" : ""), null, Json.VolumeDto, cancellationToken);

    /// <summary>POST /v1/volumes.</summary>
    public Task<VolumeDto> CreateVolumeAsync(string name, long sizeBytes, CancellationToken cancellationToken = default) =>
        CreateVolumeAsync(name, sizeBytes, cache: null, cancellationToken);

    /// <summary>POST /v1/volumes with a cache mode (<c>none</c>, <c>writethrough</c>, <c>writeback</c>; null: none).</summary>
    public Task<VolumeDto> CreateVolumeAsync(string name, long sizeBytes, string? cache, CancellationToken cancellationToken = default) =>
        SendAsync(HttpMethod.Post, "v1/volumes", JsonContent.Create(new CreateVolumeRequest(name, sizeBytes, cache), Json.CreateVolumeRequest), Json.VolumeDto, cancellationToken);

    /// <summary>POST /v1/scrub/start.</summary>
    public Task<ScrubStatusDto> StartScrubAsync(ScrubStartRequest request, CancellationToken cancellationToken = default) =>
        SendAsync(HttpMethod.Post, "v1/scrub/start", JsonContent.Create(request, Json.ScrubStartRequest), Json.ScrubStatusDto, cancellationToken);

    /// <summary>POST /v1/scrub/stop.</summary>
    public Task<ScrubStatusDto> StopScrubAsync(CancellationToken cancellationToken = default) =>
        SendAsync(HttpMethod.Post, "v1/scrub/stop", null, Json.ScrubStatusDto, cancellationToken);

    /// <summary>GET /v1/scrub.</summary>
    public Task<ScrubStatusDto> GetScrubStatusAsync(CancellationToken cancellationToken = default) =>
        SendAsync(HttpMethod.Get, "v1/scrub", null, Json.ScrubStatusDto, cancellationToken);

    /// <summary>POST /v1/volumes/{name}/takeover.</summary>
    public Task<TakeoverDto> TakeOverVolumeAsync(string name, CancellationToken cancellationToken = default) =>
        TakeOverVolumeAsync(name, acceptCacheLoss: false, cancellationToken);

    /// <summary>POST /v1/volumes/{name}/takeover; with <paramref name="acceptCacheLoss"/>, also when a dead server's write-back cache may hold writes the image lacks.</summary>
    public Task<TakeoverDto> TakeOverVolumeAsync(string name, bool acceptCacheLoss, CancellationToken cancellationToken = default) =>
        SendAsync(HttpMethod.Post, VolumePath(name) + "/takeover" + (acceptCacheLoss ? "?acceptCacheLoss=true" : ""), null, Json.TakeoverDto, cancellationToken);

    /// <summary>POST /v1/volumes/{name}/cache: stores the volume's cache mode.</summary>
    public Task<VolumeDto> SetVolumeCacheAsync(string name, string mode, CancellationToken cancellationToken = default) =>
        SendAsync(HttpMethod.Post, VolumePath(name) + "/cache", JsonContent.Create(new SetCacheRequest(mode), Json.SetCacheRequest), Json.VolumeDto, cancellationToken);

    /// <summary>POST /v1/volumes/{name}/release: writes the cache back and lets other servers have the volume.</summary>
    public Task<ReleaseDto> ReleaseVolumeAsync(string name, CancellationToken cancellationToken = default) =>
        SendAsync(HttpMethod.Post, VolumePath(name) + "/release", null, Json.ReleaseDto, cancellationToken);

    /// <summary>POST /v1/volumes/{name}/resize; only grows (a smaller size is refused, 409 shrink_refused).</summary>
    public Task<VolumeDto> ResizeVolumeAsync(string name, long sizeBytes, CancellationToken cancellationToken = default) =>
        ResizeVolumeAsync(name, sizeBytes, allowShrink: false, cancellationToken);

    /// <summary>
    /// POST /v1/volumes/{name}/flatten: the clone stops depending on its origin snapshot. Takes as long as copying the
    /// data it shares with the origin: callers with a short timeout should <see cref="DisableTimeout"/> first.
    /// </summary>
    public Task<FlattenDto> FlattenVolumeAsync(string name, CancellationToken cancellationToken = default) =>
        SendAsync(HttpMethod.Post, VolumePath(name) + "/flatten", null, Json.FlattenDto, cancellationToken);

    /// <summary>POST /v1/volumes/{name}/resize; a smaller size needs <paramref name="allowShrink"/> (else 409 shrink_refused).</summary>
    public Task<VolumeDto> ResizeVolumeAsync(string name, long sizeBytes, bool allowShrink, CancellationToken cancellationToken = default) =>
        SendAsync(HttpMethod.Post, VolumePath(name) + "/resize",
            JsonContent.Create(new ResizeVolumeRequest(sizeBytes, allowShrink ? true : null), Json.ResizeVolumeRequest), Json.VolumeDto, cancellationToken);

    /// <summary>POST /v1/volumes/{name}/rename (POST /v1/volumes/rename?name= for '.' and '..').</summary>
    public Task<VolumeDto> RenameVolumeAsync(string name, string newName, CancellationToken cancellationToken = default) =>
        SendAsync(HttpMethod.Post, IsDotSegment(name) ? "v1/volumes/rename?name=" + Uri.EscapeDataString(name) : VolumePath(name) + "/rename",
            JsonContent.Create(new RenameVolumeRequest(newName), Json.RenameVolumeRequest), Json.VolumeDto, cancellationToken);

    /// <summary>DELETE /v1/volumes/{name}.</summary>
    public Task DeleteVolumeAsync(string name, CancellationToken cancellationToken = default) =>
        DeleteVolumeAsync(name, recursive: false, force: false, cancellationToken);

    /// <summary>DELETE /v1/volumes/{name}?recursive=true|false: with <paramref name="recursive"/> its snapshots go too.</summary>
    public Task DeleteVolumeAsync(string name, bool recursive, CancellationToken cancellationToken = default) =>
        DeleteVolumeAsync(name, recursive, force: false, cancellationToken);

    /// <summary>
    /// DELETE /v1/volumes/{name} (DELETE /v1/volumes?name= for '.' and '..'): with <paramref name="recursive"/> its
    /// snapshots go too; without <paramref name="force"/> a volume with connected NBD clients is refused (409 clients_connected).
    /// </summary>
    public Task DeleteVolumeAsync(string name, bool recursive, bool force, CancellationToken cancellationToken = default)
    {
        var query = (recursive ? "&recursive=true" : "") + (force ? "&force=true" : "");
        var path = IsDotSegment(name) ? "v1/volumes?name=" + Uri.EscapeDataString(name) + query
            : VolumePath(name) + (query.Length > 0 ? "?" + query[1..] : "");
        return SendAsync<ErrorDto>(HttpMethod.Delete, path, null, null, cancellationToken);
    }

    /// <summary>GET /v1/volumes/{name}/status: the NBD clients of the volume and of its snapshots.</summary>
    public Task<VolumeStatusDto> GetVolumeStatusAsync(string name, CancellationToken cancellationToken = default) =>
        SendAsync(HttpMethod.Get, VolumePath(name) + "/status", null, Json.VolumeStatusDto, cancellationToken);

    /// <summary>GET /v1/snapshots: every snapshot of every volume.</summary>
    public async Task<IReadOnlyList<SnapshotDto>> ListSnapshotsAsync(CancellationToken cancellationToken = default) =>
        (await SendAsync(HttpMethod.Get, "v1/snapshots", null, Json.SnapshotListDto, cancellationToken).ConfigureAwait(false)).Snapshots;

    /// <summary>GET /v1/volumes/{volume}/snapshots: the volume's snapshots, oldest first.</summary>
    public async Task<IReadOnlyList<SnapshotDto>> ListSnapshotsAsync(string volume, CancellationToken cancellationToken = default) =>
        (await SendAsync(HttpMethod.Get, VolumePath(volume) + "/snapshots", null, Json.SnapshotListDto, cancellationToken).ConfigureAwait(false)).Snapshots;

    /// <summary>POST /v1/volumes/{volume}/snapshots.</summary>
    public Task<SnapshotDto> CreateSnapshotAsync(string volume, string snapshot, CancellationToken cancellationToken = default) =>
        SendAsync(HttpMethod.Post, VolumePath(volume) + "/snapshots",
            JsonContent.Create(new CreateSnapshotRequest(snapshot), Json.CreateSnapshotRequest), Json.SnapshotDto, cancellationToken);

    /// <summary>GET /v1/volumes/{volume}/snapshots/{snapshot}.</summary>
    public Task<SnapshotDto> GetSnapshotAsync(string volume, string snapshot, CancellationToken cancellationToken = default) =>
        SendAsync(HttpMethod.Get, SnapshotPath(volume, snapshot), null, Json.SnapshotDto, cancellationToken);

    /// <summary>
    /// DELETE /v1/volumes/{volume}/snapshots/{snapshot} (DELETE /v1/snapshots?volume=&amp;name= when a name is '.' or
    /// '..'); refused (409 has_dependents) while clones of it exist, and (409 clients_connected) while NBD clients read it.
    /// </summary>
    public Task DeleteSnapshotAsync(string volume, string snapshot, CancellationToken cancellationToken = default) =>
        DeleteSnapshotAsync(volume, snapshot, force: false, cancellationToken);

    /// <summary>As <see cref="DeleteSnapshotAsync(string, string, CancellationToken)"/>; <paramref name="force"/> deletes it even while NBD clients read it.</summary>
    public Task DeleteSnapshotAsync(string volume, string snapshot, bool force, CancellationToken cancellationToken = default)
    {
        var path = IsDotSegment(volume) || IsDotSegment(snapshot)
            ? "v1/snapshots?volume=" + Uri.EscapeDataString(volume) + "&name=" + Uri.EscapeDataString(snapshot) + (force ? "&force=true" : "")
            : SnapshotPath(volume, snapshot) + (force ? "?force=true" : "");
        return SendAsync<ErrorDto>(HttpMethod.Delete, path, null, null, cancellationToken);
    }

    /// <summary>POST /v1/volumes/{volume}/snapshots/{snapshot}/clone: a new writable volume with the snapshot's content.</summary>
    public Task<VolumeDto> CloneSnapshotAsync(string volume, string snapshot, string newVolume, CancellationToken cancellationToken = default) =>
        SendAsync(HttpMethod.Post, SnapshotPath(volume, snapshot) + "/clone",
            JsonContent.Create(new CloneSnapshotRequest(newVolume), Json.CloneSnapshotRequest), Json.VolumeDto, cancellationToken);

    /// <summary>
    /// POST /v1/volumes/{volume}/snapshots/{snapshot}/rollback: the volume's content and size become the snapshot's.
    /// With <paramref name="recursive"/> newer snapshots are deleted; without, their existence refuses it (409).
    /// </summary>
    public Task<VolumeDto> RollbackAsync(string volume, string snapshot, bool recursive = false, CancellationToken cancellationToken = default) =>
        RollbackAsync(volume, snapshot, recursive, force: false, cancellationToken);

    /// <summary>
    /// As <see cref="RollbackAsync(string, string, bool, CancellationToken)"/>; without <paramref name="force"/> a volume
    /// with connected NBD clients is refused (409 clients_connected).
    /// </summary>
    public Task<VolumeDto> RollbackAsync(string volume, string snapshot, bool recursive, bool force, CancellationToken cancellationToken = default)
    {
        var query = (recursive ? "&recursive=true" : "") + (force ? "&force=true" : "");
        return SendAsync(HttpMethod.Post, SnapshotPath(volume, snapshot) + "/rollback" + (query.Length > 0 ? "?" + query[1..] : ""), null, Json.VolumeDto, cancellationToken);
    }

    /// <summary>GET /v1/volumes/{volume}/diff: ranges changed from snapshot <paramref name="from"/> to <paramref name="to"/> (null: the live volume).</summary>
    public Task<DiffDto> DiffAsync(string volume, string from, string? to = null, CancellationToken cancellationToken = default) =>
        SendAsync(HttpMethod.Get,
            VolumePath(volume) + "/diff?from=" + Uri.EscapeDataString(from) + (to is null ? "" : "&to=" + Uri.EscapeDataString(to)),
            null, Json.DiffDto, cancellationToken);

    /// <summary>GET /v1/space: allocated, unique and shared bytes per volume and snapshot.</summary>
    public async Task<IReadOnlyList<SpaceUsageDto>> GetSpaceUsageAsync(CancellationToken cancellationToken = default) =>
        (await SendAsync(HttpMethod.Get, "v1/space", null, Json.SpaceUsageListDto, cancellationToken).ConfigureAwait(false)).Entries;

    private static string VolumePath(string name) => "v1/volumes/" + Uri.EscapeDataString(name);

    // '.' and '..' cannot be URL path segments: HttpClient and Kestrel both resolve them away (RFC 3986 5.2.4), so
    // "DELETE v1/volumes/vm1/snapshots/.." would reach "DELETE v1/volumes/vm1". Such names go in the query instead.
    private static bool IsDotSegment(string name) => name is "." or "..";

    private static string SnapshotPath(string volume, string snapshot) => VolumePath(volume) + "/snapshots/" + Uri.EscapeDataString(snapshot);

    private async Task<T> SendAsync<T>(HttpMethod method, string path, HttpContent? content, JsonTypeInfo<T>? type, CancellationToken cancellationToken)
    {
        using var request = new HttpRequestMessage(method, path) { Content = content };
        HttpResponseMessage response;
        try
        {
            response = await _http.SendAsync(request, cancellationToken).ConfigureAwait(false);
        }
        catch (HttpRequestException e) when (e.InnerException is SocketException || e.HttpRequestError == HttpRequestError.ConnectionError)
        {
            throw new ServerUnreachableException(Endpoint, e);
        }
        catch (SocketException e)
        {
            throw new ServerUnreachableException(Endpoint, e);
        }
        using (response)
        {
            if (!response.IsSuccessStatusCode) await ThrowErrorAsync(response, cancellationToken).ConfigureAwait(false);
            if (type is null) return default!;
            return await response.Content.ReadFromJsonAsync(type, cancellationToken).ConfigureAwait(false)
                ?? throw new PlatterApiException((int)response.StatusCode, "bad_response", "the server sent an empty answer");
        }
    }

    private static async Task ThrowErrorAsync(HttpResponseMessage response, CancellationToken cancellationToken)
    {
        ErrorDto? error = null;
        try
        {
            error = await response.Content.ReadFromJsonAsync(Json.ErrorDto, cancellationToken).ConfigureAwait(false);
        }
        catch (JsonException)
        {
        }
        throw new PlatterApiException((int)response.StatusCode,
            error?.Error ?? "http_" + (int)response.StatusCode,
            error?.Message ?? $"the server answered {(int)response.StatusCode} {response.ReasonPhrase}");
    }

    /// <inheritdoc />
    public void Dispose() => _http.Dispose();
}

/// <summary>The server answered with an error.</summary>
public sealed class PlatterApiException(int statusCode, string code, string message) : Exception(message)
{
    /// <summary>HTTP status.</summary>
    public int StatusCode { get; } = statusCode;

    /// <summary>The API's error code, e.g. not_found.</summary>
    public string Code { get; } = code;
}

/// <summary>Nothing answered at the API endpoint: the server is not running there.</summary>
public sealed class ServerUnreachableException(string endpoint, Exception inner)
    : Exception($"cannot reach the Platter server at {endpoint}", inner)
{
    /// <summary>The socket path or URL tried.</summary>
    public string Endpoint { get; } = endpoint;
}
