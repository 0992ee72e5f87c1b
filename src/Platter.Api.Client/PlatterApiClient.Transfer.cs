using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Net.Sockets;

namespace Platter.Server.Api;

public sealed partial class PlatterApiClient
{
    // The stream is copied in pieces this big: large enough that a pipe or a socket moves at full speed, small
    // enough that progress moves often.
    private const int CopyBufferBytes = 1024 * 1024;

    /// <summary>
    /// Lifts the per-request timeout (60 s by default) for a client about to stream a whole volume. Call it before
    /// the first request: HttpClient fixes its timeout then.
    /// </summary>
    public void DisableTimeout() => _http.Timeout = Timeout.InfiniteTimeSpan;

    /// <summary>
    /// GET /v1/volumes/{volume}/snapshots/{snapshot}/send[?from=...]: copies the send stream of
    /// <c>volume@snapshot</c> (only the changes since <paramref name="fromSnapshot"/> when given) to
    /// <paramref name="destination"/>; <paramref name="progress"/> gets the bytes copied so far.
    /// Returns the number of bytes. A stream the server had to cut ends in an <see cref="IOException"/>.
    /// </summary>
    public async Task<long> SendAsync(string volume, string snapshot, string? fromSnapshot, Stream destination,
        Action<long>? progress = null, CancellationToken cancellationToken = default)
    {
        var path = SnapshotPath(volume, snapshot) + "/send" + (fromSnapshot is null ? "" : "?from=" + Uri.EscapeDataString(fromSnapshot));
        using var request = new HttpRequestMessage(HttpMethod.Get, path);
        using var response = await SendRawAsync(request, HttpCompletionOption.ResponseHeadersRead, cancellationToken).ConfigureAwait(false);
        if (!response.IsSuccessStatusCode) await ThrowErrorAsync(response, cancellationToken).ConfigureAwait(false);
        await using var body = await response.Content.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false);
        return await CopyAsync(body, destination, progress, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// POST /v1/volumes/{volume}/receive: uploads the send stream read from <paramref name="source"/> until its end;
    /// the server verifies and applies it all or nothing. <paramref name="progress"/> gets the bytes uploaded so far.
    /// </summary>
    public async Task<ReceiveSummary> ReceiveAsync(string volume, Stream source, Action<long>? progress = null, CancellationToken cancellationToken = default)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, VolumePath(volume) + "/receive")
        {
            Content = new ProgressContent(source, progress),
        };
        request.Content.Headers.ContentType = new MediaTypeHeaderValue(TransferMediaTypes.SendStream);
        using var response = await SendRawAsync(request, HttpCompletionOption.ResponseContentRead, cancellationToken).ConfigureAwait(false);
        if (!response.IsSuccessStatusCode) await ThrowErrorAsync(response, cancellationToken).ConfigureAwait(false);
        return await response.Content.ReadFromJsonAsync(TransferJsonContext.Default.ReceiveSummary, cancellationToken).ConfigureAwait(false)
            ?? throw new PlatterApiException((int)response.StatusCode, "bad_response", "the server sent an empty answer");
    }

    private async Task<HttpResponseMessage> SendRawAsync(HttpRequestMessage request, HttpCompletionOption completion, CancellationToken cancellationToken)
    {
        try
        {
            return await _http.SendAsync(request, completion, cancellationToken).ConfigureAwait(false);
        }
        catch (HttpRequestException e) when (e.InnerException is SocketException || e.HttpRequestError == HttpRequestError.ConnectionError)
        {
            throw new ServerUnreachableException(Endpoint, e);
        }
        catch (SocketException e)
        {
            throw new ServerUnreachableException(Endpoint, e);
        }
    }

    private static async Task<long> CopyAsync(Stream source, Stream destination, Action<long>? progress, CancellationToken cancellationToken)
    {
        var buffer = new byte[CopyBufferBytes];
        long total = 0;
        while (true)
        {
            int n = await source.ReadAsync(buffer, cancellationToken).ConfigureAwait(false);
            if (n == 0) break;
            await destination.WriteAsync(buffer.AsMemory(0, n), cancellationToken).ConfigureAwait(false);
            total += n;
            progress?.Invoke(total);
        }
        await destination.FlushAsync(cancellationToken).ConfigureAwait(false);
        return total;
    }

    /// <summary>A request body read from a stream to its end (chunked: the length is not known up front), reporting progress.</summary>
    private sealed class ProgressContent(Stream source, Action<long>? progress) : HttpContent
    {
        protected override Task SerializeToStreamAsync(Stream stream, System.Net.TransportContext? context) =>
            SerializeToStreamAsync(stream, context, CancellationToken.None);

        protected override async Task SerializeToStreamAsync(Stream stream, System.Net.TransportContext? context, CancellationToken cancellationToken) =>
            await CopyAsync(source, stream, progress, cancellationToken).ConfigureAwait(false);

        protected override bool TryComputeLength(out long length)
        {
            length = 0;
            return false;
        }
    }
}
