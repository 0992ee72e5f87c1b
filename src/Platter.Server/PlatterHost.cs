using System.Net;
using System.Net.Sockets;
using System.Reflection;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Platter.Server.Api;
using Platter.Server.Transfer;
using Platter.Server.Metrics;
using Platter.Storage;

namespace Platter.Server;

/// <summary>
/// One Platter server: the store, NBD on TCP and a unix socket, and the management API. Start once, stop once;
/// <see cref="StopAsync(CancellationToken)"/> shuts down in the order that keeps every acknowledged write: stop taking management
/// calls, stop accepting NBD connections and finish in-flight requests, flush the store, close it (which releases its lock).
/// </summary>
public sealed partial class PlatterHost : IAsyncDisposable
{
    private readonly PlatterHostOptions _options;
    private readonly ILoggerFactory _loggerFactory;
    private readonly ILogger _log;
    private readonly SemaphoreSlim _stateLock = new(1, 1);
    private readonly List<string> _ownedSockets = [];
    private IVolumeBackend? _store;
    private WebApplication? _api;
    private WebApplication? _metricsApi;
    private bool _started;
    private bool _stopped;

    /// <summary>Creates a host; nothing is opened until <see cref="StartAsync"/>.</summary>
    public PlatterHost(PlatterHostOptions options, ILoggerFactory? loggerFactory = null)
    {
        var problem = options.Validate();
        if (problem is not null) throw new ArgumentException(problem, nameof(options));
        _options = options;
        _loggerFactory = loggerFactory ?? NullLoggerFactory.Instance;
        _log = _loggerFactory.CreateLogger("Platter.Server");
    }

    /// <summary>The server's version (the assembly's informational version).</summary>
    public static string Version { get; } =
        typeof(PlatterHost).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion.Split('+')[0] ?? "0.0.0";

    /// <summary>The open store, once started: the backend every front door (NBD, the management API) uses.</summary>
    public IVolumeBackend Store => _store ?? throw new InvalidOperationException("the host is not started");

    /// <summary>The bound NBD TCP address (the real port when the options asked for port 0), or null.</summary>
    public IPEndPoint? NbdTcpEndPoint { get; private set; }

    /// <summary>The bound address of the management API on TCP (the real port when the options asked for port 0), or null.</summary>
    public IPEndPoint? ApiTcpEndPoint { get; private set; }

    /// <summary>The bound address of the metrics-only listener (the real port when the options asked for port 0), or null.</summary>
    public IPEndPoint? MetricsTcpEndPoint { get; private set; }

    /// <summary>The metrics, or null when they are off.</summary>
    internal PlatterMetrics? Metrics { get; private set; }

    /// <summary>The NBD server, or null when NBD is off (for connection counts).</summary>
    internal Platter.Nbd.NbdServer? Nbd => _nbd;

    /// <summary>The options the host runs with.</summary>
    public PlatterHostOptions Options => _options;

    /// <summary>
    /// Opens (or creates) the store, which locks it against other processes, and starts the NBD and API listeners.
    /// On failure everything opened so far is closed again and the exception propagates: a
    /// <see cref="StorageException"/> with <see cref="StorageError.InUse"/> when another process holds the store.
    /// </summary>
    public async Task StartAsync(CancellationToken cancellationToken = default)
    {
        await _stateLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (_started) throw new InvalidOperationException("the host was already started");
            _started = true;
            try
            {
                var directory = Path.GetFullPath(_options.StoreDirectory);
                if (!Directory.Exists(directory))
                {
                    // The store holds every VM's disk: private to its owner unless the admin loosens it.
                    Directory.CreateDirectory(directory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
                }
                _store = _options.OpenBackend is { } open
                    ? open(_loggerFactory)
                    : VolumeStore.Open(directory, _options.StoreOptions
                        ?? new StoreOptions { LoggerFactory = _loggerFactory, Salvage = _options.Salvage, CreateIfMissing = !_options.Salvage, DirectWrites = _options.DirectWrites,
                            MapCacheBytes = _options.MapCacheBytes });
                if (_store is IVolumeMetadata)
                {
                    // The node cache wraps the backend's volume handles here, where volumes are opened; the engine and
                    // the backend know nothing of it.
                    var cacheOptions = _options.NodeCache ?? new Platter.Cache.NodeCacheOptions();
                    _store = new Platter.Cache.CachedBackend(_store, new Platter.Cache.NodeCacheOptions
                    {
                        Directory = cacheOptions.Directory is { } d ? Path.GetFullPath(d) : null,
                        SizeBytes = cacheOptions.SizeBytes,
                        AtomicUnitBytes = cacheOptions.AtomicUnitBytes,
                        LoggerFactory = _loggerFactory,
                    });
                    if (cacheOptions.Directory is not null)
                        _log.LogInformation("node cache in {Directory}, {Size} per cached volume", Path.GetFullPath(cacheOptions.Directory), SizeText.Format(cacheOptions.SizeBytes));
                }
                else if (_options.NodeCache?.Directory is not null)
                {
                    throw new InvalidOperationException($"--cache-dir is for cluster stores (--store rbd:POOL): the {_store.Kind} store keeps its volumes on this machine's disk already");
                }
                var usage = _store.GetUsage();
                _log.LogInformation("store {Location} ({Kind}) open: {Volumes} volume(s), {Used} used", _store.Location, _store.Kind, usage.VolumeCount, SizeText.Format(usage.UsedBytes));
                bool salvage = _store is VolumeStore { IsSalvage: true };
                if (salvage)
                    _log.LogWarning("salvage mode: {Volumes} intact volume(s) served read-only, {Problems} problem(s) found; copy the volumes out (qemu-img convert), nothing is written to the store",
                        usage.VolumeCount, ((VolumeStore)_store).Damage.Count);
                // Send/receive state lives beside the store; a receive a crash interrupted is finished or undone
                // before anything is served (docs/decisions/0007).
                var identities = SnapshotIdentities.Open(directory, _store);
                var receiver = new VolumeReceiver(_store, identities, directory, _loggerFactory.CreateLogger("Platter.Receive"));
                // A salvage open changes nothing in the store: an interrupted receive is finished or undone once the
                // store opens normally again.
                if (!salvage) receiver.Recover();

                // A socket file the service manager listens on is its own: never delete or replace it.
                if (_options.NbdSocketPath is not null && ActivatedAt(_options.NbdSocketPath) is null) PrepareSocket(_options.NbdSocketPath);
                if (_options.ApiSocketPath is not null && ActivatedAt(_options.ApiSocketPath) is null) PrepareSocket(_options.ApiSocketPath);

                if (_options.Metrics) Metrics = new PlatterMetrics { Store = _store, Engine = _store as VolumeStore };
                await StartNbdAsync(new VolumeExportProvider(_store, _options.ReadOnly || salvage) { Metrics = Metrics, Users = _users }, cancellationToken).ConfigureAwait(false);
                if (Metrics is not null) Metrics.Nbd = _nbd;
                StartVhostUser(_options.ReadOnly || salvage);

                var activatedApi = _options.ActivatedSockets.Where(IsApiSocket).ToList();
                if (activatedApi.Any(a => a.TcpEndPoint is not null) && string.IsNullOrEmpty(_options.ApiToken))
                    throw new InvalidOperationException("a management API socket on TCP was passed in: it needs a token (--api-token-file or PLATTER_API_TOKEN)");
                // Kestrel takes its own descriptor of each passed socket and closes it on stop; ours stay open (and
                // listening, with the service manager's) until the host is disposed.
                var descriptors = activatedApi.Select(a => UnixFile.Duplicate((int)a.Socket.Handle)).ToList();
                _api = ManagementApi.Build(_store, new ManagementApiOptions
                {
                    SocketPath = _options.ApiSocketPath is { } apiPath && ActivatedAt(apiPath) is null ? apiPath : null,
                    TcpEndPoint = _options.ApiTcpEndPoint,
                    ListenDescriptors = descriptors,
                    Token = _options.ApiToken,
                }, _loggerFactory, Health, new ApiServices(Metrics, () => _nbd, _users));
                // Mapped after the fallback is fine: routing tries the fallback only when no endpoint matches.
                TransferApi.Map(_api, _store, identities, receiver, _loggerFactory.CreateLogger("Platter.Api"));
                await _api.StartAsync(cancellationToken).ConfigureAwait(false);
                foreach (var a in activatedApi)
                    _log.LogInformation("management API on {Address} (passed in by the service manager as '{Name}')", a.UnixPath is { } p ? "unix:" + p : a.TcpEndPoint, a.Name);
                if (_options.MetricsTcpEndPoint is not null && Metrics is not null)
                {
                    _metricsApi = ManagementApi.BuildMetricsOnly(_options.MetricsTcpEndPoint, Metrics, _loggerFactory);
                    await _metricsApi.StartAsync(cancellationToken).ConfigureAwait(false);
                    MetricsTcpEndPoint = ManagementApi.BoundEndPoint(_metricsApi) ?? _options.MetricsTcpEndPoint;
                    _log.LogInformation("metrics on http://{EndPoint}/metrics", MetricsTcpEndPoint);
                }
                if (_options.ApiSocketPath is not null && ActivatedAt(_options.ApiSocketPath) is null)
                {
                    // No authentication on the unix socket: its permissions decide who may manage volumes.
                    SetSocketAccess(_options.ApiSocketPath);
                    _log.LogInformation("management API on unix:{Path}", _options.ApiSocketPath);
                }
                if (_options.ApiTcpEndPoint is not null)
                {
                    ApiTcpEndPoint = ManagementApi.BoundEndPoint(_api) ?? _options.ApiTcpEndPoint;
                    _log.LogInformation("management API and dashboard on http://{EndPoint}/ (reading needs no token; changes need the bearer token)", ApiTcpEndPoint);
                }
            }
            catch
            {
                await ShutdownAsync(CancellationToken.None, failed: true).ConfigureAwait(false);
                throw;
            }
        }
        finally
        {
            _stateLock.Release();
        }
    }

    /// <summary>
    /// Stops the listeners, lets in-flight NBD requests finish (until <paramref name="cancellationToken"/> fires,
    /// after which connections are cut), flushes and closes the store. Safe to call twice.
    /// </summary>
    public Task StopAsync(CancellationToken cancellationToken = default) => StopAsync(cancellationToken, cancellationToken);

    /// <summary>
    /// Same as <see cref="StopAsync(CancellationToken)"/>, but the write-back of node caches (which may take much
    /// longer than in-flight requests: the log's dirty data at the backend's pace) waits until
    /// <paramref name="drainCancellation"/> fires instead. A drain cut short keeps the rest in the log.
    /// </summary>
    public async Task StopAsync(CancellationToken cancellationToken, CancellationToken drainCancellation)
    {
        await _stateLock.WaitAsync(CancellationToken.None).ConfigureAwait(false);
        try
        {
            if (!_started || _stopped) return;
            await ShutdownAsync(cancellationToken, failed: false, drainCancellation).ConfigureAwait(false);
        }
        finally
        {
            _stateLock.Release();
        }
    }

    private async Task ShutdownAsync(CancellationToken cancellationToken, bool failed, CancellationToken drainCancellation = default)
    {
        _stopped = true;
        List<Exception>? errors = null;
        if (_metricsApi is not null)
        {
            try
            {
                await _metricsApi.StopAsync(cancellationToken).ConfigureAwait(false);
                await _metricsApi.DisposeAsync().ConfigureAwait(false);
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                (errors ??= []).Add(e);
            }
            _metricsApi = null;
        }
        if (_api is not null)
        {
            try
            {
                await _api.StopAsync(cancellationToken).ConfigureAwait(false);
                await _api.DisposeAsync().ConfigureAwait(false);
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                (errors ??= []).Add(e);
            }
            _api = null;
        }
        try
        {
            await StopNbdAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            (errors ??= []).Add(e);
        }
        try
        {
            await StopVhostUserAsync().ConfigureAwait(false);
        }
        catch (Exception e)
        {
            (errors ??= []).Add(e);
        }
        if (Metrics is not null)
        {
            Metrics.Store = null;
            Metrics.Engine = null;
            Metrics.Nbd = null;
        }
        if (_store is Platter.Cache.CachedBackend cached && !failed)
        {
            // Clients are gone: write every write-back cache back, so another server may serve its volumes.
            await Task.Run(() => cached.Close(drainCancellation), CancellationToken.None).ConfigureAwait(false);
        }
        if (_store is not null)
        {
            try
            {
                await _store.FlushAsync(CancellationToken.None).ConfigureAwait(false);
            }
            catch (Exception e)
            {
                _log.LogError(e, "final flush failed: {Message}", e.Message);
                (errors ??= []).Add(e);
            }
            try
            {
                _store.Dispose();
                if (!failed) _log.LogInformation("store {Directory} closed", _store.Location);
            }
            catch (Exception e)
            {
                (errors ??= []).Add(e);
            }
            _store = null;
        }
        foreach (var path in _ownedSockets)
        {
            try
            {
                File.Delete(path);
            }
            catch (IOException)
            {
                // A leftover socket file is harmless: the next start removes it.
            }
        }
        _ownedSockets.Clear();
        if (errors is not null && !failed) throw new AggregateException("the server did not shut down cleanly", errors);
    }

    /// <summary>The passed-in socket listening at unix path <paramref name="path"/>, or null.</summary>
    private ActivatedSocket? ActivatedAt(string path)
    {
        var full = Path.GetFullPath(path);
        return _options.ActivatedSockets.FirstOrDefault(a => a.UnixPath is { } p && Path.GetFullPath(p) == full);
    }

    private bool IsApiSocket(ActivatedSocket socket) =>
        socket.Name == "api" || (_options.ApiSocketPath is not null && socket == ActivatedAt(_options.ApiSocketPath));

    // One server serves one store: when it fails, the whole server answers writes with errors, so health says so.
    private HealthDto Health() => new(
        StoreFailure is null ? "ok" : "failed",
        Version,
        Path.GetFullPath(_options.StoreDirectory),
        _options.NbdSocketPath is not null ? Path.GetFullPath(_options.NbdSocketPath)
            : _options.ActivatedSockets.Where(a => !IsApiSocket(a)).Select(a => a.UnixPath).FirstOrDefault(p => p is not null),
        NbdTcpEndPoint?.ToString(),
        _options.TlsCertificate is not null,
        _options.TlsRequired,
        _options.ReadOnly,
        StoreFailure,
        _vhostUser?.Directory);

    private string? StoreFailure => (_store as VolumeStore)?.Failure;

    /// <summary>
    /// Removes a stale socket file left by a server that died, but refuses to take over one that still answers.
    /// The store's lock already proves no server of this store is running; this guards paths outside the store.
    /// </summary>
    private void PrepareSocket(string path)
    {
        path = Path.GetFullPath(path);
        var parent = Path.GetDirectoryName(path);
        if (parent is not null) Directory.CreateDirectory(parent);
        if (File.Exists(path) || Directory.Exists(path))
        {
            if (!UnixFile.IsSocket(path))
                throw new IOException($"cannot listen on {path}: something that is not a socket is in the way");
            using (var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
            {
                bool answered;
                try
                {
                    probe.Connect(new UnixDomainSocketEndPoint(path));
                    answered = true;
                }
                catch (SocketException)
                {
                    answered = false;
                }
                if (answered) throw new IOException($"cannot listen on {path}: another server is listening there");
            }
            File.Delete(path);
        }
        _ownedSockets.Add(path);
    }

    /// <summary>
    /// Applies <c>--socket-mode</c> (default 0600: owner only) and <c>--socket-group</c> to a socket just bound. Whoever
    /// can connect to the NBD socket can read and write every volume, and to the API socket manage them, so the
    /// default leaves the owner alone; the group option lets e.g. libvirt's QEMU user in without opening it to all.
    /// </summary>
    private void SetSocketAccess(string path)
    {
        if (_options.SocketGroup is { } group) UnixFile.SetGroup(path, UnixFile.GroupId(group) ?? throw new IOException($"no group named '{group}'"));
        File.SetUnixFileMode(path, _options.SocketMode);
    }

    /// <summary>Same as <see cref="StopAsync(CancellationToken)"/> with no deadline.</summary>
    public async ValueTask DisposeAsync()
    {
        await StopAsync(CancellationToken.None).ConfigureAwait(false);
        // Our descriptors of passed-in sockets; the service manager's stay open and listening.
        foreach (var a in _options.ActivatedSockets) a.Socket.Dispose();
        _stateLock.Dispose();
    }
}
