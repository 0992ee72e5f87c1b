using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Platter.VhostUser.Internal;
using Platter.Volumes;

namespace Platter.VhostUser;

/// <summary>How a <see cref="VhostUserBlkServer"/> serves.</summary>
public sealed class VhostUserBlkOptions
{
    /// <summary>Where the sockets live: one <c>NAME.sock</c> per volume and <c>VOLUME@SNAPSHOT.sock</c> per snapshot.</summary>
    public required string Directory { get; init; }

    /// <summary>Serve every volume read-only (the device reports VIRTIO_BLK_F_RO); snapshots always are.</summary>
    public bool ReadOnly { get; init; }

    /// <summary>
    /// Called when a front-end connects (to a volume or, read-only, a snapshot): returns a registration held for as long
    /// as the connection lasts, or throws a <see cref="StorageException"/> (InUse) saying who else writes the volume, and
    /// the connection is refused. This is how the host lists a volume's users and keeps one writer per volume across
    /// front doors (NBD and vhost-user); null: no registry, no check.
    /// </summary>
    public Func<VhostUserFrontEnd, IDisposable>? AddUser { get; init; }

    /// <summary>
    /// How often the socket directory is brought in line with the catalog (volumes created, deleted, renamed through
    /// any path). <see cref="VhostUserBlkServer.Refresh"/> does it at once.
    /// </summary>
    public TimeSpan RefreshInterval { get; init; } = TimeSpan.FromSeconds(1);
}

/// <summary>A front-end about to be served, as <see cref="VhostUserBlkOptions.AddUser"/> sees it.</summary>
/// <param name="Volume">The handle it will use (its name follows renames).</param>
/// <param name="ReadOnly">The device is read-only (a snapshot, or a read-only server).</param>
/// <param name="Peer">Who connected: <c>vhost-user pid PID uid UID</c> from the socket's credentials.</param>
public sealed record VhostUserFrontEnd(IVolumeHandle Volume, bool ReadOnly, string Peer);

/// <summary>A front-end connected to a volume's socket.</summary>
public sealed record VhostUserConnectionInfo(string Volume, DateTimeOffset ConnectedUtc);

/// <summary>
/// Serves every volume and snapshot of a backend as a vhost-user-blk device: a unix socket per volume in
/// <see cref="VhostUserBlkOptions.Directory"/> that QEMU connects to with
/// <c>-chardev socket,path=DIR/NAME.sock -device vhost-user-blk-pci,chardev=...</c> (guest memory from a shared
/// memory backend). Sockets appear and disappear with the volumes. One front-end per socket at a time.
/// </summary>
public sealed class VhostUserBlkServer : IAsyncDisposable
{
    private readonly IVolumeBackend _backend;
    private readonly VhostUserBlkOptions _options;
    private readonly ILogger _log;
    private readonly Dictionary<string, VolumeSocket> _sockets = new(StringComparer.Ordinal);
    private readonly HashSet<string> _reportedTooLong = new(StringComparer.Ordinal);
    private readonly object _lock = new();
    private readonly CancellationTokenSource _stopping = new();
    private Task? _refreshLoop;
    private bool _stopped;

    /// <summary>Creates a server; nothing listens until <see cref="Start"/>.</summary>
    public VhostUserBlkServer(IVolumeBackend backend, VhostUserBlkOptions options, ILogger? logger = null)
    {
        ArgumentNullException.ThrowIfNull(backend);
        ArgumentNullException.ThrowIfNull(options);
        _backend = backend;
        _options = options;
        _log = logger ?? NullLogger.Instance;
    }

    /// <summary>The socket directory, as an absolute path.</summary>
    public string Directory => Path.GetFullPath(_options.Directory);

    /// <summary>The socket a volume (or <c>volume@snapshot</c>) is served on.</summary>
    public string SocketPath(string name) => Path.Combine(Directory, name + ".sock");

    /// <summary>Front-ends connected now.</summary>
    public IReadOnlyList<VhostUserConnectionInfo> Connections
    {
        get
        {
            lock (_lock) return [.. _sockets.Values.Select(s => s.Connection).OfType<VhostUserConnectionInfo>()];
        }
    }

    /// <summary>True while a front-end is connected to <paramref name="name"/>'s socket.</summary>
    public bool IsConnected(string name)
    {
        lock (_lock) return _sockets.TryGetValue(name, out var s) && s.Connection is not null;
    }

    /// <summary>Creates the directory (owner-only: a socket gives full access to a disk), opens a socket per volume and keeps them in line with the catalog.</summary>
    public void Start()
    {
        System.IO.Directory.CreateDirectory(Directory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        Refresh();
        _refreshLoop = RefreshLoopAsync(_stopping.Token);
    }

    /// <summary>Opens sockets for new volumes and snapshots and closes those of volumes that are gone (their front-ends are disconnected).</summary>
    public void Refresh()
    {
        var wanted = new HashSet<string>(StringComparer.Ordinal);
        foreach (var v in _backend.ListVolumes()) wanted.Add(v.Name);
        foreach (var s in _backend.ListSnapshots()) wanted.Add(s.FullName);
        List<VolumeSocket> gone = [];
        lock (_lock)
        {
            if (_stopped) return;
            foreach (var (name, socket) in _sockets)
            {
                if (wanted.Contains(name)) continue;
                gone.Add(socket);
            }
            foreach (var socket in gone) _sockets.Remove(socket.Name);
            foreach (var name in wanted)
            {
                if (_sockets.ContainsKey(name)) continue;
                var path = SocketPath(name);
                // sun_path holds 107 bytes and a terminator.
                if (System.Text.Encoding.UTF8.GetByteCount(path) > 107)
                {
                    if (_reportedTooLong.Add(name)) _log.LogWarning("vhost-user-blk: no socket for '{Volume}': {Path} is longer than a unix socket path may be", name, path);
                    continue;
                }
                try
                {
                    _sockets[name] = new VolumeSocket(this, name, path);
                    _log.LogInformation("vhost-user-blk: serving '{Volume}' on {Path}", name, path);
                }
                catch (Exception e) when (e is SocketException or IOException)
                {
                    _log.LogError("vhost-user-blk: cannot listen on {Path}: {Message}", path, e.Message);
                }
            }
        }
        foreach (var socket in gone)
        {
            _log.LogInformation("vhost-user-blk: '{Volume}' is gone; closing {Path}", socket.Name, socket.Path);
            socket.Dispose();
        }
    }

    private async Task RefreshLoopAsync(CancellationToken ct)
    {
        using var timer = new PeriodicTimer(_options.RefreshInterval);
        try
        {
            while (await timer.WaitForNextTickAsync(ct).ConfigureAwait(false))
            {
                try
                {
                    Refresh();
                }
                catch (Exception e) when (e is StorageException or IOException)
                {
                    _log.LogWarning("vhost-user-blk: refreshing the sockets failed: {Message}", e.Message);
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    /// <summary>Closes every socket and disconnects every front-end (their queues stop after in-flight requests finish). Safe to call twice.</summary>
    public async Task StopAsync()
    {
        List<VolumeSocket> all;
        lock (_lock)
        {
            if (_stopped) return;
            _stopped = true;
            all = [.. _sockets.Values];
            _sockets.Clear();
        }
        await _stopping.CancelAsync().ConfigureAwait(false);
        if (_refreshLoop is not null) await _refreshLoop.ConfigureAwait(false);
        foreach (var s in all) s.Dispose();
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        await StopAsync().ConfigureAwait(false);
        _stopping.Dispose();
    }

    /// <summary>One volume's listening socket and its front-end, if one is connected.</summary>
    private sealed class VolumeSocket : IDisposable
    {
        private readonly VhostUserBlkServer _server;
        private readonly Socket _listener;
        private readonly CancellationTokenSource _closing = new();
        private readonly Task _acceptLoop;
        private readonly object _lock = new();
        private VhostUserConnection? _active;
        private Thread? _thread;
        private VhostUserConnectionInfo? _info;

        public VolumeSocket(VhostUserBlkServer server, string name, string path)
        {
            _server = server;
            Name = name;
            Path = path;
            // A socket file left by a server that died is stale: the store's lock proves no other server of it runs.
            if (File.Exists(path)) File.Delete(path);
            _listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                _listener.Bind(new UnixDomainSocketEndPoint(path));
                File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite);
                // A backlog of a few: one front-end at a time is served, and QEMU reconnects on its own.
                _listener.Listen(4);
            }
            catch
            {
                _listener.Dispose();
                throw;
            }
            _acceptLoop = AcceptLoopAsync(_closing.Token);
        }

        public string Name { get; }

        public string Path { get; }

        public VhostUserConnectionInfo? Connection
        {
            get { lock (_lock) return _info; }
        }

        private async Task AcceptLoopAsync(CancellationToken ct)
        {
            var log = _server._log;
            while (!ct.IsCancellationRequested)
            {
                Socket client;
                try
                {
                    client = await _listener.AcceptAsync(ct).ConfigureAwait(false);
                }
                catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException)
                {
                    return;
                }
                lock (_lock)
                {
                    if (_active is not null)
                    {
                        log.LogWarning("vhost-user-blk {Volume}: refused a second front-end: one is connected already", Name);
                        client.Dispose();
                        continue;
                    }
                }
                try
                {
                    Serve(client);
                }
                catch (Exception e) when (e is StorageException or VhostUserException)
                {
                    log.LogWarning("vhost-user-blk {Volume}: refused a front-end: {Message}", Name, e.Message);
                    client.Dispose();
                }
            }
        }

        private void Serve(Socket client)
        {
            var backend = _server._backend;
            bool isSnapshot = VolumeNames.TrySplitSnapshotName(Name, out var volume, out var snapshot);
            var handle = isSnapshot ? backend.OpenSnapshotHandle(volume, snapshot) : backend.OpenVolumeHandle(Name);
            IDisposable? claim = null;
            try
            {
                bool readOnly = _server._options.ReadOnly || handle.IsReadOnly;
                if (_server._options.AddUser is { } addUser) claim = addUser(new VhostUserFrontEnd(handle, readOnly, PeerOf(client)));
                int fd = (int)client.SafeHandle.DangerousGetHandle();
                // The control thread blocks in recvmsg; .NET may have made the accepted socket non-blocking.
                int fl = Native.fcntl(fd, Native.F_GETFL, 0);
                if (fl < 0 || Native.fcntl(fd, Native.F_SETFL, fl & ~Native.O_NONBLOCK) < 0)
                    throw new VhostUserException($"fcntl on the connection failed: errno {Native.Errno}");
                var connection = new VhostUserConnection(fd, handle, readOnly, _server._log);
                var info = new VhostUserConnectionInfo(Name, DateTimeOffset.UtcNow);
                var thread = new Thread(() => RunConnection(connection, client, handle, claim))
                {
                    IsBackground = true,
                    Name = $"vhost-user-blk {Name}",
                };
                lock (_lock)
                {
                    _active = connection;
                    _info = info;
                    _thread = thread;
                }
                _server._log.LogInformation("vhost-user-blk {Volume}: front-end connected{ReadOnly}", Name, readOnly ? " (read-only)" : "");
                thread.Start();
            }
            catch
            {
                claim?.Dispose();
                handle.Dispose();
                throw;
            }
        }

        // SO_PEERCRED (SOL_SOCKET 1, option 17): pid, uid and gid of the process that connected.
        private static string PeerOf(Socket client)
        {
            Span<byte> credentials = stackalloc byte[12];
            try
            {
                if (client.GetRawSocketOption(1, 17, credentials) == 12)
                    return $"vhost-user pid {BitConverter.ToInt32(credentials)} uid {BitConverter.ToUInt32(credentials[4..])}";
            }
            catch (SocketException)
            {
            }
            return "vhost-user";
        }

        private void RunConnection(VhostUserConnection connection, Socket client, IVolumeHandle handle, IDisposable? claim)
        {
            try
            {
                connection.Run();
            }
            catch (Exception e)
            {
                _server._log.LogError(e, "vhost-user-blk {Volume}: connection failed", Name);
            }
            finally
            {
                connection.Dispose();
                client.Dispose();
                handle.Dispose();
                claim?.Dispose();
                lock (_lock)
                {
                    _active = null;
                    _info = null;
                }
                _server._log.LogInformation("vhost-user-blk {Volume}: front-end disconnected", Name);
            }
        }

        public void Dispose()
        {
            _closing.Cancel();
            _listener.Dispose();
            try
            {
                _acceptLoop.Wait();
            }
            catch (AggregateException)
            {
            }
            Thread? thread;
            lock (_lock)
            {
                _active?.Close();
                thread = _thread;
            }
            thread?.Join();
            try
            {
                File.Delete(Path);
            }
            catch (IOException)
            {
                // A leftover socket file is harmless: the next start replaces it.
            }
            _closing.Dispose();
        }
    }
}
