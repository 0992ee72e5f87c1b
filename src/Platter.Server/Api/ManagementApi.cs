using System.Net;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Metadata;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.Logging;
using Platter.Cache;
using Platter.Nbd;
using Platter.Server.Metrics;
using Platter.Storage;
using Prometheus;

// Route handlers are cast to this typed delegate so that they bind to MapGet(string, Delegate), not to the
// RequestDelegate overload: only the former reach the OpenAPI generator (ASP.NET Core's API explorer skips
// RequestDelegate endpoints). The cast keeps each handler a lambda the request delegate generator sees at compile
// time, so it writes the endpoint code then and nothing is built by reflection at run time (Native AOT).
using Handler = System.Func<Microsoft.AspNetCore.Http.HttpContext, System.Threading.Tasks.Task>;

namespace Platter.Server.Api;

/// <summary>Where the management API listens.</summary>
public sealed class ManagementApiOptions
{
    /// <summary>Unix socket path (the default transport, guarded by file permissions), or null.</summary>
    public string? SocketPath { get; init; }

    /// <summary>Optional TCP endpoint; every request on it must carry <c>Authorization: Bearer TOKEN</c>.</summary>
    public IPEndPoint? TcpEndPoint { get; init; }

    /// <summary>Listening sockets passed by the service manager, given as descriptors Kestrel takes over (one it may close).</summary>
    public IReadOnlyList<int> ListenDescriptors { get; init; } = [];

    /// <summary>The bearer token for the TCP listener. Required when <see cref="TcpEndPoint"/> is set.</summary>
    public string? Token { get; init; }
}

/// <summary>
/// What the API shows besides the store: metrics (null when off), the NBD server (null when off) and the registry of
/// volume users (null: nobody keeps count, so nothing is refused for users).
/// </summary>
internal sealed record ApiServices(PlatterMetrics? Metrics, Func<NbdServer?> Nbd, VolumeUsers? Users = null)
{
    public static readonly ApiServices None = new(null, () => null);
}

/// <summary>
/// The HTTP+JSON management API on Kestrel. Handlers call the store directly; the store is thread-safe and its
/// catalog operations are short, so they run on the request thread.
/// </summary>
internal static class ManagementApi
{
    // A create/resize/rename request is a few dozen bytes; anything much larger is not a client of this API.
    private const long RequestBodyBytesMax = 64 * 1024;

    /// <summary>Where the OpenAPI description of this API is served (a stable path: tools and the README point at it).</summary>
    public const string OpenApiPath = "/openapi/v1.json";

    public static WebApplication Build(IVolumeBackend store, ManagementApiOptions options, ILoggerFactory loggerFactory, Func<HealthDto> health,
        ApiServices? services = null)
    {
        services ??= ApiServices.None;
        if (options.SocketPath is null && options.TcpEndPoint is null && options.ListenDescriptors.Count == 0)
            throw new ArgumentException("the management API needs a socket path or a TCP endpoint");
        if (options.TcpEndPoint is not null && string.IsNullOrEmpty(options.Token))
            throw new ArgumentException("the management API on TCP needs a token");

        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions
        {
            Args = [],
            ApplicationName = "Platter.Server",
            ContentRootPath = AppContext.BaseDirectory,
        });
        builder.Services.Replace(ServiceDescriptor.Singleton(loggerFactory));
        // PlatterHost owns signals and shutdown order; the default console lifetime would stop the API on its own.
        builder.Services.Replace(ServiceDescriptor.Singleton<IHostLifetime, PassiveLifetime>());
        // The source-generated serializers also describe the types to the OpenAPI generator.
        builder.Services.ConfigureHttpJsonOptions(json =>
        {
            json.SerializerOptions.TypeInfoResolverChain.Insert(0, PlatterJsonContext.Default);
            json.SerializerOptions.TypeInfoResolverChain.Insert(1, TransferJsonContext.Default);
        });
        builder.Services.AddOpenApi("v1", openApi => openApi.AddDocumentTransformer((document, _, _) =>
        {
            document.Info.Title = "Platter management API";
            document.Info.Version = PlatterHost.Version;
            document.Info.Description = "Volumes, snapshots, space and health of a Platter server. Errors are {\"error\": CODE, \"message\": TEXT}. " +
                "On the unix socket no token is needed; on TCP, requests that change anything need 'Authorization: Bearer TOKEN', reads do not.";
            return Task.CompletedTask;
        }).AddOperationTransformer(EndpointDescriptions.AddParameters));
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.AddServerHeader = false;
            kestrel.Limits.MaxRequestBodySize = RequestBodyBytesMax;
            if (options.SocketPath is not null) kestrel.ListenUnixSocket(options.SocketPath);
            foreach (var fd in options.ListenDescriptors) kestrel.ListenHandle((ulong)fd);
            if (options.TcpEndPoint is not null) kestrel.Listen(options.TcpEndPoint);
        });

        var app = builder.Build();
        var log = loggerFactory.CreateLogger("Platter.Api");
        var tokenBytes = options.Token is null ? null : Encoding.UTF8.GetBytes(options.Token);

        app.Use(async (http, next) =>
        {
            // Requests from the unix socket have no IP address; file permissions guard that socket. On TCP, reading
            // (GET, HEAD: the dashboard, /metrics, lists) needs no token, so a read-only dashboard or a Prometheus
            // works without one; everything that changes state does.
            if (http.Connection.LocalIpAddress is not null && !IsRead(http.Request.Method) && !HasToken(http, tokenBytes))
            {
                await WriteError(http, 401, ApiErrorCodes.Unauthorized, "missing or wrong bearer token");
                return;
            }
            try
            {
                await next(http);
            }
            catch (StorageException e)
            {
                var status = ApiErrorCodes.HttpStatus(e.Error);
                if (status >= 500) log.LogError(e, "{Method} {Path} failed: {Message}", http.Request.Method, http.Request.Path, e.Message);
                await WriteError(http, status, ApiErrorCodes.From(e.Error), e.Message);
            }
            catch (BadRequestException e)
            {
                await WriteError(http, 400, ApiErrorCodes.BadRequest, e.Message);
            }
            catch (Microsoft.AspNetCore.Http.BadHttpRequestException e)
            {
                await WriteError(http, e.StatusCode, ApiErrorCodes.BadRequest, e.Message);
            }
            catch (Exception e) when (!http.RequestAborted.IsCancellationRequested)
            {
                log.LogError(e, "{Method} {Path} failed", http.Request.Method, http.Request.Path);
                await WriteError(http, 500, ApiErrorCodes.Internal, "internal error: " + e.Message);
            }
        });

        var json = PlatterJsonContext.Default;

        app.MapGet("/v1/health", (Handler)((HttpContext http) => Write(http, 200, health(), json.HealthDto)))
            .Describe<HealthDto, IEndpointConventionBuilder>("Server version, store and NBD endpoints (what `platter attach` uses)");

        app.MapGet("/v1/usage", (Handler)((HttpContext http) => Write(http, 200, UsageDto.From(store.GetUsage()), json.UsageDto)))
            .Describe<UsageDto, IEndpointConventionBuilder>("Store space: data file size, used, free, provisioned");

        app.MapGet("/v1/stats", (Handler)((HttpContext http) => Write(http, 200, Stats(services), json.StatsDto)))
            .Describe<StatsDto, IEndpointConventionBuilder>("Live I/O totals per export and the NBD connections (the dashboard computes rates from two readings)");

        app.MapGet("/v1/volumes", (Handler)((HttpContext http) =>
        {
            var volumes = store.ListVolumes();
            var list = new VolumeDto[volumes.Count];
            for (int i = 0; i < list.Length; i++) list[i] = VolumeDto.From(volumes[i], store);
            return Write(http, 200, new VolumeListDto(list), json.VolumeListDto);
        })).Describe<VolumeListDto, IEndpointConventionBuilder>("List volumes");

        app.MapPost("/v1/volumes", (Handler)(async (HttpContext http) =>
        {
            var request = await ReadBody(http, json.CreateVolumeRequest);
            var name = request.Name ?? throw new BadRequestException("missing 'name'");
            VolumeNames.ThrowIfInvalid(name);
            var size = ValidSize(request.SizeBytes);
            var mode = ParseCacheMode(request.Cache, store);
            var info = store.CreateVolume(name, size);
            if (mode is { } m && store is CachedBackend cached)
            {
                try
                {
                    cached.SetMode(name, m);
                }
                catch
                {
                    // A volume is created with the mode asked for, or not at all.
                    store.DeleteVolume(name, recursive: false);
                    throw;
                }
            }
            log.LogInformation("created volume '{Name}' ({Size})", info.Name, SizeText.Format(info.SizeBytes));
            http.Response.Headers.Location = "/v1/volumes/" + Uri.EscapeDataString(info.Name);
            await Write(http, 201, Describe(store, info), json.VolumeDto);
        })).Describe<VolumeDto, IEndpointConventionBuilder>("Create a volume", 201, typeof(CreateVolumeRequest));

        // Allocated bytes only with ?usage=true on stores where counting them walks the image (RBD): a lookup stays cheap.
        app.MapGet("/v1/volumes/{name}", (Handler)((HttpContext http) =>
            Write(http, 200, Describe(store, store.GetVolumeInfo(RouteName(http), withAllocation: QueryFlag(http, "usage"))), json.VolumeDto)))
            .Describe<VolumeDto, IEndpointConventionBuilder>("One volume, with its node cache (mode, hits, dirty bytes, write-back lag) on cluster stores; allocatedBytes is null unless counted (?usage=true counts it on RBD stores)");

        app.MapPost("/v1/volumes/{name}/cache", (Handler)(async (HttpContext http) =>
        {
            var name = RouteName(http);
            var request = await ReadBody(http, json.SetCacheRequest);
            var mode = ParseCacheMode(request.Mode ?? throw new BadRequestException("missing 'mode'"), store) ?? CacheMode.None;
            if (store is not CachedBackend cached)
            {
                store.GetVolumeInfo(name); // NotFound first
                await Write(http, 200, Describe(store, store.GetVolumeInfo(name)), json.VolumeDto); // mode none on a store without node caches
                return;
            }
            cached.SetMode(name, mode);
            await Write(http, 200, Describe(store, store.GetVolumeInfo(name)), json.VolumeDto);
        })).Describe<VolumeDto, IEndpointConventionBuilder>("Set a volume's cache mode (none, writethrough, writeback); it applies from the volume's next open", 200, typeof(SetCacheRequest));

        // Drains the volume's write-back cache, removes its dirty marker and closes it here, so another server may
        // serve it (migration). Refused while NBD clients are connected to it.
        app.MapPost("/v1/volumes/{name}/release", (Handler)((HttpContext http) =>
        {
            var name = RouteName(http);
            long written = 0;
            if (store is CachedBackend cached) written = cached.Release(name, http.RequestAborted);
            else store.GetVolumeInfo(name);
            log.LogInformation("released volume '{Name}' ({Bytes} dirty bytes written back first)", name, written);
            return Write(http, 200, new ReleaseDto(name, written), json.ReleaseDto);
        })).Describe<ReleaseDto, IEndpointConventionBuilder>("Write the volume's cache back and close it here, so another server may serve it");

        // Takes a volume over from another server that holds it (a shared cluster store only): breaks its lock and
        // fences that server, so it can never write to the volume again. Only ever on request.
        app.MapPost("/v1/volumes/{name}/takeover", (Handler)((HttpContext http) =>
        {
            var name = RouteName(http);
            if (store is not IVolumeTakeover takeover)
                throw new BadRequestException($"the {store.Kind} store has a single server: there is nothing to take over");
            bool acceptLoss = QueryFlag(http, "acceptCacheLoss");
            var previous = store is CachedBackend cached ? cached.TakeOverVolume(name, acceptLoss) : takeover.TakeOverVolume(name);
            log.LogWarning("took volume '{Name}' over from {Holder}", name, previous ?? "nobody");
            return Write(http, 200, new TakeoverDto(name, previous), json.TakeoverDto);
        })).Describe<TakeoverDto, IEndpointConventionBuilder>("Take a volume over from the server that holds it (cluster stores: breaks its lock, fences it)")
            .Query("acceptCacheLoss", "true: also when that server's write-back cache may hold writes the image lacks (serves the older, consistent image)");

        // Online scrub (embedded store): reads every block while serving and verifies its checksum. A Ceph store is
        // scrubbed by Ceph itself (BlueStore checksums, deep scrub of placement groups): those calls say so.
        app.MapPost("/v1/scrub/start", (Handler)(async (HttpContext http) =>
        {
            var request = await ReadBody(http, json.ScrubStartRequest);
            var status = Scrubbing(store).StartScrub(request.Targets ?? [], request.RateBytesPerSecond, request.Restart);
            await Write(http, 200, ScrubStatusDto.From(status), json.ScrubStatusDto);
        })).Describe<ScrubStatusDto, IEndpointConventionBuilder>("Start (or resume) an online scrub of the store or of named volumes and snapshots", 200, typeof(ScrubStartRequest));

        app.MapPost("/v1/scrub/stop", (Handler)((HttpContext http) =>
            Write(http, 200, ScrubStatusDto.From(Scrubbing(store).StopScrub()), json.ScrubStatusDto)))
            .Describe<ScrubStatusDto, IEndpointConventionBuilder>("Pause the running scrub, keeping its progress");

        app.MapGet("/v1/scrub", (Handler)((HttpContext http) =>
            Write(http, 200, ScrubStatusDto.From(Scrubbing(store).GetScrubStatus()), json.ScrubStatusDto)))
            .Describe<ScrubStatusDto, IEndpointConventionBuilder>("Scrub progress, rate, ETA and the bad blocks found, with every volume/snapshot and offset referencing each");

        app.MapPost("/v1/volumes/{name}/resize", (Handler)(async (HttpContext http) =>
        {
            var name = RouteName(http);
            var request = await ReadBody(http, json.ResizeVolumeRequest);
            var size = ValidSize(request.SizeBytes);
            var before = store.GetVolumeInfo(name).SizeBytes;
            bool allowShrink = request.AllowShrink ?? false;
            if (size < before && !allowShrink)
            {
                // Checked here for a precise error code; the engine refuses it too (and decides under its lock).
                await WriteError(http, 409, ApiErrorCodes.ShrinkRefused,
                    $"shrinking volume '{name}' from {SizeText.Format(before)} to {SizeText.Format(size)} discards the data past {SizeText.Format(size)}; " +
                    "send \"allowShrink\": true (platter volume resize --allow-shrink) to do it anyway");
                return;
            }
            store.ResizeVolume(name, size, allowShrink);
            log.LogInformation("resized volume '{Name}' from {Before} to {After}", name, SizeText.Format(before), SizeText.Format(size));
            await Write(http, 200, VolumeDto.From(store.GetVolumeInfo(name), store), json.VolumeDto);
        })).Describe<VolumeDto, IEndpointConventionBuilder>("Resize a volume", 200, typeof(ResizeVolumeRequest));

        // POST /v1/volumes/rename?name=OLD: the same for a name that cannot travel in a URL path ('.' and '..', which
        // HTTP clients and servers normalise away). Only stores from before the naming rules tightened hold those.
        app.MapPost("/v1/volumes/rename", (Handler)((HttpContext http) => Rename(http, QueryName(http, "name"))))
            .Describe<VolumeDto, IEndpointConventionBuilder>("Rename a volume named '.' or '..' (?name=OLD)", 200, typeof(RenameVolumeRequest));
        app.MapPost("/v1/volumes/{name}/rename", (Handler)((HttpContext http) => Rename(http, RouteName(http))))
            .Describe<VolumeDto, IEndpointConventionBuilder>("Rename a volume", 200, typeof(RenameVolumeRequest));
        async Task Rename(HttpContext http, string name)
        {
            var request = await ReadBody(http, json.RenameVolumeRequest);
            var newName = request.NewName ?? throw new BadRequestException("missing 'newName'");
            VolumeNames.ThrowIfInvalid(newName);
            store.RenameVolume(name, newName);
            log.LogInformation("renamed volume '{Name}' to '{NewName}'", name, newName);
            services.Metrics?.Forget(name);
            await Write(http, 200, VolumeDto.From(store.GetVolumeInfo(newName), store), json.VolumeDto);
        }

        // DELETE /v1/volumes?name=NAME: the same for a name that cannot travel in a URL path (see rename).
        app.MapDelete("/v1/volumes", (Handler)((HttpContext http) => Delete(http, QueryName(http, "name"))))
            .DescribeNoContent("Delete a volume named '.' or '..' (?name=NAME)");
        app.MapDelete("/v1/volumes/{name}", (Handler)((HttpContext http) => Delete(http, RouteName(http))))
            .DescribeNoContent("Delete a volume (?recursive=true also deletes its snapshots; ?force=true even with NBD clients connected)")
            .Query("recursive", "true: also delete the volume's snapshots (refused while any has clones)")
            .Query("force", "true: delete even while NBD clients are connected (they get I/O errors)");
        Task Delete(HttpContext http, string name)
        {
            bool recursive = QueryFlag(http, "recursive");
            bool force = QueryFlag(http, "force");
            // Clients of the volume and of its snapshots (a recursive delete takes those too) lose their disk.
            if (!force && ConnectedClients(store.GetVolumeInfo(name).Name, snapshotsToo: true) is { Count: > 0 } connected)
                return RefuseInUse(http, name, connected, "deleting it");
            store.DeleteVolume(name, recursive);
            log.LogInformation("deleted volume '{Name}'{Recursive}{Force}", name, recursive ? " and its snapshots" : "", force ? " (forced)" : "");
            services.Metrics?.Forget(name);
            http.Response.StatusCode = 204;
            return Task.CompletedTask;
        }

        app.MapGet("/v1/volumes/{name}/status", (Handler)((HttpContext http) =>
        {
            var info = store.GetVolumeInfo(RouteName(http));
            return Write(http, 200, new VolumeStatusDto(info.Name, ConnectedClients(info.Name, snapshotsToo: true)), json.VolumeStatusDto);
        })).Describe<VolumeStatusDto, IEndpointConventionBuilder>("The NBD clients connected to a volume and its snapshots");

        app.MapGet("/v1/snapshots", (Handler)((HttpContext http) =>
            Write(http, 200, SnapshotList(store.ListSnapshots()), json.SnapshotListDto)))
            .Describe<SnapshotListDto, IEndpointConventionBuilder>("List every snapshot");

        app.MapGet("/v1/volumes/{name}/snapshots", (Handler)((HttpContext http) =>
            Write(http, 200, SnapshotList(store.ListSnapshots(RouteName(http))), json.SnapshotListDto)))
            .Describe<SnapshotListDto, IEndpointConventionBuilder>("List a volume's snapshots");

        app.MapPost("/v1/volumes/{name}/snapshots", (Handler)(async (HttpContext http) =>
        {
            var volume = RouteName(http);
            var request = await ReadBody(http, json.CreateSnapshotRequest);
            var snapshot = request.Name ?? throw new BadRequestException("missing 'name'");
            ThrowIfInvalidSnapshotName(snapshot);
            var info = store.CreateSnapshot(volume, snapshot);
            log.LogInformation("created snapshot '{Snapshot}'", info.FullName);
            http.Response.Headers.Location = SnapshotLocation(info.Volume, info.Name);
            await Write(http, 201, SnapshotDto.From(info), json.SnapshotDto);
        })).Describe<SnapshotDto, IEndpointConventionBuilder>("Take a snapshot", 201, typeof(CreateSnapshotRequest));

        app.MapGet("/v1/volumes/{name}/snapshots/{snapshot}", (Handler)((HttpContext http) =>
            Write(http, 200, SnapshotDto.From(store.GetSnapshotInfo(RouteName(http), RouteSnapshot(http))), json.SnapshotDto)))
            .Describe<SnapshotDto, IEndpointConventionBuilder>("One snapshot");

        // DELETE /v1/snapshots?volume=VOL&name=SNAP: the same for names that cannot travel in a URL path (see rename).
        app.MapDelete("/v1/snapshots", (Handler)((HttpContext http) => DeleteSnapshot(http, QueryName(http, "volume"), QueryName(http, "name"))))
            .DescribeNoContent("Delete a snapshot whose names cannot travel in a URL path (?volume=VOL&name=SNAP)");
        app.MapDelete("/v1/volumes/{name}/snapshots/{snapshot}", (Handler)((HttpContext http) => DeleteSnapshot(http, RouteName(http), RouteSnapshot(http))))
            .DescribeNoContent("Delete a snapshot (?force=true even with NBD clients connected to it)")
            .Query("force", "true: delete even while NBD clients are connected to the snapshot");
        Task DeleteSnapshot(HttpContext http, string volume, string snapshot)
        {
            if (!QueryFlag(http, "force") && ConnectedClients(volume, snapshotsToo: true)
                    .Where(c => c.Export == volume + "@" + snapshot).ToList() is { Count: > 0 } connected)
                return RefuseInUse(http, volume + "@" + snapshot, connected, "deleting it");
            store.DeleteSnapshot(volume, snapshot);
            log.LogInformation("deleted snapshot '{Volume}@{Snapshot}'", volume, snapshot);
            services.Metrics?.Forget(volume + "@" + snapshot);
            http.Response.StatusCode = 204;
            return Task.CompletedTask;
        }

        app.MapPost("/v1/volumes/{name}/snapshots/{snapshot}/clone", (Handler)(async (HttpContext http) =>
        {
            var volume = RouteName(http);
            var snapshot = RouteSnapshot(http);
            var request = await ReadBody(http, json.CloneSnapshotRequest);
            var newName = request.NewName ?? throw new BadRequestException("missing 'newName'");
            VolumeNames.ThrowIfInvalid(newName);
            var info = store.CloneSnapshot(volume, snapshot, newName);
            log.LogInformation("cloned '{Volume}@{Snapshot}' to volume '{Clone}'", volume, snapshot, info.Name);
            http.Response.Headers.Location = "/v1/volumes/" + Uri.EscapeDataString(info.Name);
            await Write(http, 201, VolumeDto.From(info, store), json.VolumeDto);
        })).Describe<VolumeDto, IEndpointConventionBuilder>("Clone a snapshot into a new volume", 201, typeof(CloneSnapshotRequest));

        // No body. Synchronous for the copy's whole duration (a request thread waits, as for every catalog call); the
        // copy is not cancelled when the client goes away: it either finishes or leaves the clone as it was.
        app.MapPost("/v1/volumes/{name}/flatten", (Handler)((HttpContext http) =>
        {
            var name = RouteName(http);
            var started = System.Diagnostics.Stopwatch.GetTimestamp();
            var result = store.FlattenVolume(name);
            var seconds = System.Diagnostics.Stopwatch.GetElapsedTime(started).TotalSeconds;
            log.LogInformation("flattened volume '{Name}' (no longer depends on '{Origin}') in {Seconds:0.00} s", name, result.Origin, seconds);
            return Write(http, 200, new FlattenDto(result.Volume, result.Origin, result.CopiedBytes, seconds,
                VolumeDto.From(store.GetVolumeInfo(name), store)), json.FlattenDto);
        })).Describe<FlattenDto, IEndpointConventionBuilder>("Make a clone independent of its origin snapshot (copies the data it shares with it)");

        // No body: everything is in the path and ?recursive=true (deletes the snapshots newer than this one).
        app.MapPost("/v1/volumes/{name}/snapshots/{snapshot}/rollback", (Handler)((HttpContext http) =>
        {
            var volume = RouteName(http);
            var snapshot = RouteSnapshot(http);
            bool recursive = QueryFlag(http, "recursive");
            // Clients of the volume would see its content change under them; snapshot clients only matter when the
            // rollback deletes newer snapshots (recursive), and then only conservatively all of them are counted.
            if (!QueryFlag(http, "force") && ConnectedClients(volume, snapshotsToo: recursive) is { Count: > 0 } connected)
                return RefuseInUse(http, volume, connected, "rolling it back");
            store.RollbackVolume(volume, snapshot, recursive);
            log.LogInformation("rolled volume '{Volume}' back to '{Snapshot}'{Recursive}", volume, snapshot,
                recursive ? ", deleting newer snapshots" : "");
            return Write(http, 200, VolumeDto.From(store.GetVolumeInfo(volume), store), json.VolumeDto);
        })).Describe<VolumeDto, IEndpointConventionBuilder>("Roll a volume back to a snapshot (?recursive=true deletes newer snapshots)")
            .Query("recursive", "true: delete the snapshots newer than this one (refused without it when there are any)");

        app.MapGet("/v1/volumes/{name}/diff", (Handler)((HttpContext http) =>
        {
            var volume = RouteName(http);
            var from = QueryString(http, "from") ?? throw new BadRequestException("missing query parameter 'from' (the older snapshot)");
            var to = QueryString(http, "to");
            var extents = store.Diff(volume, from, to);
            var list = new ChangedExtentDto[extents.Count];
            long changed = 0;
            for (int i = 0; i < list.Length; i++)
            {
                list[i] = new ChangedExtentDto(extents[i].Offset, extents[i].Length, extents[i].Allocated);
                changed += extents[i].Length;
            }
            return Write(http, 200, new DiffDto(volume, from, to, changed, list), json.DiffDto);
        })).Describe<DiffDto, IEndpointConventionBuilder>("Byte ranges changed between snapshot ?from= and ?to= (or the live volume)")
            .Query("from", "The older snapshot (required)")
            .Query("to", "The newer snapshot; omitted: the volume's current content");

        app.MapGet("/v1/space", (Handler)((HttpContext http) =>
        {
            var usage = store.GetSpaceUsage();
            var list = new SpaceUsageDto[usage.Count];
            for (int i = 0; i < list.Length; i++) list[i] = SpaceUsageDto.From(usage[i]);
            return Write(http, 200, new SpaceUsageListDto(list), json.SpaceUsageListDto);
        })).Describe<SpaceUsageListDto, IEndpointConventionBuilder>("Space per volume and snapshot: allocated, unique, shared");

        if (services.Metrics is not null)
        {
            app.MapMetrics("/metrics", services.Metrics.Registry)
                .WithSummary("Prometheus metrics (text exposition format)")
                .WithMetadata(new ProducesResponseTypeMetadata(200, typeof(string), ["text/plain"]));
        }

        app.MapOpenApi(OpenApiPath);
        Dashboard.Map(app);

        List<NbdClientDto> ConnectedClients(string volume, bool snapshotsToo)
        {
            var result = new List<NbdClientDto>();
            // The one registry of users, NBD and vhost-user alike; names follow renames (they are the handles' names).
            if (services.Users is not { } users) return result;
            foreach (var u in users.UsersOf(volume, snapshotsToo))
                result.Add(new NbdClientDto(u.Peer.Length > 0 ? u.Peer : u.Door, u.Name, u.SinceUtc, u.ReadOnly, u.Tls, u.Door));
            return result;
        }

        Task RefuseInUse(HttpContext http, string name, List<NbdClientDto> connected, string what)
        {
            var who = string.Join(", ", connected.Take(3).Select(c => $"{c.Peer} on '{c.Export}'")) + (connected.Count > 3 ? ", ..." : "");
            var doors = connected.Select(c => c.Door).Distinct().ToList();
            var kind = doors.Count == 1 ? doors[0] : string.Join(" and ", doors);
            return WriteError(http, 409, ApiErrorCodes.ClientsConnected,
                $"'{name}' has {connected.Count} connected {kind} client{(connected.Count == 1 ? "" : "s")} ({who}); stop {(connected.Count == 1 ? "it" : "them")} " +
                $"before {what}, or force it (?force=true, platter ... --force): the clients then get I/O errors or see the content change");
        }

        app.MapFallback((HttpContext http) =>
            WriteError(http, 404, ApiErrorCodes.NoSuchEndpoint, $"no endpoint {http.Request.Method} {http.Request.Path}"));

        return app;
    }

    /// <summary>A second, metrics-only listener (<c>--metrics-listen</c>): <c>/metrics</c> and nothing else, no token.</summary>
    public static WebApplication BuildMetricsOnly(IPEndPoint endPoint, PlatterMetrics metrics, ILoggerFactory loggerFactory)
    {
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions
        {
            Args = [],
            ApplicationName = "Platter.Server",
            ContentRootPath = AppContext.BaseDirectory,
        });
        builder.Services.Replace(ServiceDescriptor.Singleton(loggerFactory));
        builder.Services.Replace(ServiceDescriptor.Singleton<IHostLifetime, PassiveLifetime>());
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.AddServerHeader = false;
            kestrel.Limits.MaxRequestBodySize = 0;
            kestrel.Listen(endPoint);
        });
        var app = builder.Build();
        app.MapMetrics("/metrics", metrics.Registry);
        app.MapFallback((HttpContext http) =>
            WriteError(http, 404, ApiErrorCodes.NoSuchEndpoint, $"this listener serves only GET /metrics, not {http.Request.Method} {http.Request.Path}"));
        return app;
    }

    /// <summary>The TCP address a started application listens on (the real port after port 0).</summary>
    public static IPEndPoint? BoundEndPoint(WebApplication app)
    {
        var addresses = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()?.Addresses;
        foreach (var address in addresses ?? [])
        {
            if (Uri.TryCreate(address, UriKind.Absolute, out var uri) && IPAddress.TryParse(uri.Host.Trim('[', ']'), out var ip))
                return new IPEndPoint(ip, uri.Port);
        }
        return null;
    }

    private static StatsDto Stats(ApiServices services)
    {
        var volumes = new List<VolumeStatsDto>();
        if (services.Metrics is { } metrics)
        {
            foreach (var v in metrics.Volumes)
            {
                var t = v.Totals();
                volumes.Add(new VolumeStatsDto(v.Name, t.Reads, t.Writes, t.Flushes, t.ReadBytes, t.WrittenBytes, t.ReadSeconds, t.WriteSeconds,
                    t.Errors, t.ChecksumFailures));
            }
            volumes.Sort((a, b) => string.CompareOrdinal(a.Name, b.Name));
        }
        var nbd = services.Nbd();
        var connections = new List<ConnectionDto>();
        if (nbd is not null)
        {
            foreach (var c in nbd.Connections) connections.Add(new ConnectionDto(c.Peer, c.Export, c.ConnectedUtc));
        }
        return new StatsDto(services.Metrics is not null, DateTimeOffset.UtcNow, nbd?.ConnectionsAccepted ?? 0, nbd?.HandshakesRefused ?? 0,
            connections, volumes);
    }

    private static IVolumeScrub Scrubbing(IVolumeBackend store)
    {
        if (store is IVolumeScrub scrub) return scrub;
        string pool = store.Location.StartsWith("rbd:", StringComparison.Ordinal) ? store.Location[4..] : store.Location;
        throw new BadRequestException(
            $"the {store.Kind} store {store.Location} is scrubbed by Ceph, not by Platter (BlueStore checksums every read; Ceph deep-scrubs on its own schedule): " +
            $"run `ceph osd pool deep-scrub {pool}` (or `ceph pg deep-scrub PGID`) and read the results with `ceph health detail`");
    }

    private static bool IsRead(string method) => HttpMethods.IsGet(method) || HttpMethods.IsHead(method);

    private static string RouteName(HttpContext http) =>
        http.Request.RouteValues["name"] as string ?? throw new BadRequestException("missing volume name");

    private static string QueryName(HttpContext http, string key) =>
        QueryString(http, key) ?? throw new BadRequestException($"missing query parameter '{key}'");

    private static string RouteSnapshot(HttpContext http) =>
        http.Request.RouteValues["snapshot"] as string ?? throw new BadRequestException("missing snapshot name");

    private static string SnapshotLocation(string volume, string snapshot) =>
        "/v1/volumes/" + Uri.EscapeDataString(volume) + "/snapshots/" + Uri.EscapeDataString(snapshot);

    private static SnapshotListDto SnapshotList(IReadOnlyList<SnapshotInfo> snapshots)
    {
        var list = new SnapshotDto[snapshots.Count];
        for (int i = 0; i < list.Length; i++) list[i] = SnapshotDto.From(snapshots[i]);
        return new SnapshotListDto(list);
    }

    private static void ThrowIfInvalidSnapshotName(string name)
    {
        // Same rules as volume names (the engine checks them too); worded for snapshots so the user sees which name.
        var reason = VolumeNames.Validate(name);
        if (reason is not null) throw new StorageException(StorageError.InvalidName, $"invalid snapshot name '{name}': {reason}");
    }

    private static string? QueryString(HttpContext http, string key)
    {
        var values = http.Request.Query[key];
        if (values.Count > 1) throw new BadRequestException($"query parameter '{key}' given more than once");
        var value = values.Count == 1 ? values[0] : null;
        return string.IsNullOrEmpty(value) ? null : value;
    }

    // A volume with its node cache status when the store has node caches.
    private static VolumeDto Describe(IVolumeBackend store, VolumeInfo info)
    {
        var dto = VolumeDto.From(info, store);
        if (store is not CachedBackend cached) return dto;
        var c = cached.GetStatus(info.Name);
        return dto with { Cache = new VolumeCacheDto(c.Mode, c.Active, c.Hits, c.Misses, c.DirtyBytes, c.LogUsedBytes, c.LogCapacityBytes, c.LagRecords, c.Failure, c.DirtyMarker) };
    }

    // Null for "not given"; a mode other than none on a store without node caches is refused with the reason.
    private static CacheMode? ParseCacheMode(string? text, IVolumeBackend store)
    {
        if (text is null) return null;
        if (!CacheModes.TryParse(text, out var mode))
            throw new BadRequestException($"cache mode must be none, writethrough or writeback, not '{text}'");
        if (mode != CacheMode.None && store is not CachedBackend)
            throw new BadRequestException($"the {store.Kind} store keeps volumes on this machine's disk already: node caches (writethrough, writeback) are for cluster stores (platter serve --store rbd:POOL --cache-dir DIR)");
        return mode;
    }

    private static bool QueryFlag(HttpContext http, string key) => QueryString(http, key) switch
    {
        null or "false" or "0" => false,
        "true" or "1" => true,
        var other => throw new BadRequestException($"query parameter '{key}' must be true or false, not '{other}'"),
    };

    private static long ValidSize(long? sizeBytes)
    {
        if (sizeBytes is not { } size) throw new BadRequestException("missing 'sizeBytes'");
        // QEMU and guests address disks in 512-byte sectors; a size that is not a whole number of them
        // loses its tail in every client.
        if (size <= 0 || size % 512 != 0)
            throw new StorageException(StorageError.InvalidArgument, $"size must be a positive multiple of 512 bytes, not {size}");
        return size;
    }

    private static bool HasToken(HttpContext http, byte[]? expected)
    {
        if (expected is null) return false;
        // RFC 9110 11.1: the auth scheme is case-insensitive ("bearer", "BEARER"); the token itself is not.
        const string Scheme = "Bearer ";
        var header = http.Request.Headers.Authorization.ToString();
        if (!header.StartsWith(Scheme, StringComparison.OrdinalIgnoreCase)) return false;
        var actual = Encoding.UTF8.GetBytes(header.AsSpan(Scheme.Length).TrimStart(' ').ToString());
        return CryptographicOperations.FixedTimeEquals(actual, expected);
    }

    private static async Task<T> ReadBody<T>(HttpContext http, JsonTypeInfo<T> type) where T : class
    {
        if (!http.Request.HasJsonContentType())
            throw new BadRequestException("the request body must be JSON (Content-Type: application/json)");
        try
        {
            return await http.Request.ReadFromJsonAsync(type, http.RequestAborted) ?? throw new BadRequestException("empty request body");
        }
        catch (JsonException e)
        {
            throw new BadRequestException("malformed JSON: " + e.Message);
        }
    }

    private static Task Write<T>(HttpContext http, int status, T value, JsonTypeInfo<T> type)
    {
        http.Response.StatusCode = status;
        return http.Response.WriteAsJsonAsync(value, type, contentType: null, http.RequestAborted);
    }

    private static Task WriteError(HttpContext http, int status, string code, string message)
    {
        if (http.Response.HasStarted) return Task.CompletedTask;
        http.Response.Clear();
        return Write(http, status, new ErrorDto(code, message), PlatterJsonContext.Default.ErrorDto);
    }

    private sealed class BadRequestException(string message) : Exception(message);

    private sealed class PassiveLifetime : IHostLifetime
    {
        public Task WaitForStartAsync(CancellationToken cancellationToken) => Task.CompletedTask;
        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}
