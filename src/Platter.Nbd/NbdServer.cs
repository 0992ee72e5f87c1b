using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Platter.Nbd.Internal;

namespace Platter.Nbd;

/// <summary>
/// An NBD server: fixed newstyle handshake (TLS, structured replies, extended headers, metadata contexts) and a
/// concurrent transmission phase, serving the exports of an <see cref="INbdExportProvider"/>.
/// </summary>
/// <remarks>
/// Typical host use: construct, <see cref="Listen(EndPoint)"/> on one or more endpoints, <see cref="StartAsync"/>, and
/// <see cref="StopAsync"/> on shutdown. A misbehaving client only ever loses its own connection.
/// </remarks>
public sealed class NbdServer : IAsyncDisposable
{
    private readonly ServerContext _context;
    private readonly ILogger _log;
    private readonly List<Socket> _listeners = [];
    private readonly List<string> _socketFiles = [];
    private readonly List<Task> _acceptLoops = [];
    private readonly ConcurrentDictionary<NbdConnection, Task> _connections = new();
    // Connections per peer (IP address, or process on a unix socket), for MaxConnectionsPerPeer. Only the accept
    // loops add; an entry goes when its count drops to zero, so the map holds at most MaxConnections keys.
    private readonly Dictionary<string, int> _perPeer = new(StringComparer.Ordinal);
    private readonly CancellationTokenSource _stopping = new();
    private readonly object _lock = new();
    private Task? _stopTask;
    private bool _started;
    private int _active;

    /// <param name="exports">Where export names are resolved; called concurrently from connections.</param>
    /// <param name="options">Settings, read once here.</param>
    /// <param name="logger">Connection-level diagnostics; protocol noise is logged at Debug.</param>
    public NbdServer(INbdExportProvider exports, NbdServerOptions options, ILogger<NbdServer>? logger = null)
    {
        ArgumentNullException.ThrowIfNull(exports);
        ArgumentNullException.ThrowIfNull(options);
        if (options.TlsRequired && options.TlsCertificate is null)
            throw new ArgumentException("TlsRequired needs a TlsCertificate.", nameof(options));
        if (options.TlsCertificate is { HasPrivateKey: false })
            throw new ArgumentException("The TLS certificate has no private key.", nameof(options));
        if (options.TlsClientCertificateAuthority is not null && options.TlsCertificate is null)
            throw new ArgumentException("TlsClientCertificateAuthority needs a TlsCertificate.", nameof(options));
        if (options.MaxConnections <= 0) throw new ArgumentOutOfRangeException(nameof(options), "MaxConnections must be positive.");
        if (options.MaxConnectionsPerPeer <= 0) throw new ArgumentOutOfRangeException(nameof(options), "MaxConnectionsPerPeer must be positive.");
        _log = (ILogger?)logger ?? NullLogger.Instance;
        _context = new ServerContext(exports, options, _log);
    }

    /// <summary>Connections currently being served (handshake or transmission).</summary>
    public int ActiveConnections => Volatile.Read(ref _active);

    /// <summary>Connections served since the server started (accepted and under the connection limit).</summary>
    public long ConnectionsAccepted => Interlocked.Read(ref _context.ConnectionsAccepted);

    /// <summary>Connections closed right after accept because <see cref="NbdServerOptions.MaxConnections"/> were being served.</summary>
    public long ConnectionsRefused => Interlocked.Read(ref _context.ConnectionsRefused);

    /// <summary>
    /// Connections the server turned away during the handshake: an unknown export, an option refused because TLS
    /// is required, a failed TLS handshake (e.g. no acceptable client certificate), or a protocol violation.
    /// A client that only lists exports and leaves is not counted.
    /// </summary>
    public long HandshakesRefused => Interlocked.Read(ref _context.HandshakesRefused);

    /// <summary>
    /// A snapshot of the connections being served now: peer, export (null during the handshake), since when,
    /// read-only, TLS. The one connection list: the dashboard shows it, volume status and the in-use refusals of
    /// delete and rollback read it. Connections come and go while it is read.
    /// </summary>
    public IReadOnlyList<NbdConnectionInfo> Connections => [.. _connections.Keys.Select(c => c.Info)];

    /// <summary>Bound addresses (useful after listening on port 0).</summary>
    public IReadOnlyList<EndPoint> LocalEndPoints
    {
        get { lock (_lock) return [.. _listeners.Select(l => l.LocalEndPoint!)]; }
    }

    /// <summary>
    /// Binds and listens on <paramref name="endPoint"/>: an <see cref="IPEndPoint"/> or a
    /// <see cref="UnixDomainSocketEndPoint"/> (a stale socket file at that path is deleted first, and the file
    /// is removed again on stop). Connections are accepted once <see cref="StartAsync"/> runs.
    /// </summary>
    public void Listen(EndPoint endPoint)
    {
        ArgumentNullException.ThrowIfNull(endPoint);
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_stopTask is not null, this);
            Socket socket;
            string? path = null;
            if (endPoint is UnixDomainSocketEndPoint unix)
            {
                path = unix.ToString();
                if (!string.IsNullOrEmpty(path) && path[0] != '\0' && File.Exists(path)) File.Delete(path);
                socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            }
            else
            {
                socket = new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
                if (endPoint.AddressFamily == AddressFamily.InterNetworkV6) socket.DualMode = true;
            }
            try
            {
                socket.Bind(endPoint);
                socket.Listen(512);
            }
            catch
            {
                socket.Dispose();
                throw;
            }
            _listeners.Add(socket);
            if (path is not null) _socketFiles.Add(path);
            if (_started) _acceptLoops.Add(AcceptLoopAsync(socket));
        }
    }

    /// <summary>
    /// Serves an already bound and listening socket (one passed in by a service manager). The server closes its
    /// descriptor on stop but never deletes its socket file or shuts it down: the manager's copy keeps listening, and
    /// clients that connect while the server restarts wait in the accept queue.
    /// </summary>
    public void Listen(Socket listeningSocket)
    {
        ArgumentNullException.ThrowIfNull(listeningSocket);
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_stopTask is not null, this);
            _listeners.Add(listeningSocket);
            if (_started) _acceptLoops.Add(AcceptLoopAsync(listeningSocket));
        }
    }

    /// <summary>Starts accepting on every endpoint given to <see cref="Listen(EndPoint)"/>. Returns once the loops run.</summary>
    public Task StartAsync()
    {
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_stopTask is not null, this);
            if (_started) return Task.CompletedTask;
            _started = true;
            foreach (Socket listener in _listeners) _acceptLoops.Add(AcceptLoopAsync(listener));
        }
        return Task.CompletedTask;
    }

    /// <summary>
    /// Serves one already-connected client over <paramref name="stream"/> until it disconnects, the server stops,
    /// or <paramref name="cancellationToken"/> is cancelled (which ends the connection at once). The stream is
    /// disposed when the connection ends. Completes normally whatever the client sent.
    /// </summary>
    public Task ServeConnectionAsync(Stream stream, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(stream);
        return ServeAsync(stream, "stream", cancellationToken);
    }

    private async Task ServeAsync(Stream stream, string peer, CancellationToken cancellationToken, string? peerKey = null)
    {
        var connection = new NbdConnection(_context, stream, peer, _stopping.Token);
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _connections[connection] = done.Task;
        Interlocked.Increment(ref _active);
        try
        {
            // A connection registered after StopAsync took its snapshot still sees the stop token.
            using var registration = cancellationToken.Register(static c => ((NbdConnection)c!).Abort(), connection);
            await connection.RunAsync().ConfigureAwait(false);
        }
        finally
        {
            Interlocked.Decrement(ref _active);
            if (peerKey is not null) ReleasePeer(peerKey);
            _connections.TryRemove(connection, out _);
            done.TrySetResult();
        }
    }

    private async Task AcceptLoopAsync(Socket listener)
    {
        CancellationToken ct = _stopping.Token;
        while (!ct.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await listener.AcceptAsync(ct).ConfigureAwait(false);
            }
            catch (OperationCanceledException) { return; }
            catch (ObjectDisposedException) { return; }
            catch (SocketException e)
            {
                // Transient accept failures (EMFILE, ECONNABORTED) must not kill the listener.
                _log.LogWarning("NBD: accept failed: {Error}", e.SocketErrorCode);
                try { await Task.Delay(50, ct).ConfigureAwait(false); } catch (OperationCanceledException) { return; }
                continue;
            }

            var (peer, peerKey) = Identify(client);
            if (ActiveConnections >= _context.Options.MaxConnections)
            {
                Interlocked.Increment(ref _context.ConnectionsRefused);
                _log.LogWarning("NBD: connection limit {Max} reached, refusing {Peer}", _context.Options.MaxConnections, peer);
                client.Dispose();
                continue;
            }
            if (!TryAdmitPeer(peerKey))
            {
                _log.LogWarning("NBD: {Peer} already has {Max} connections (the per-client limit), refusing another",
                    peer, _context.Options.MaxConnectionsPerPeer);
                client.Dispose();
                continue;
            }
            try
            {
                if (client.AddressFamily is AddressFamily.InterNetwork or AddressFamily.InterNetworkV6)
                    client.NoDelay = true; // the spec asks both sides to disable Nagle
                client.SendBufferSize = NbdLimits.SocketBufferBytes;
                client.ReceiveBufferSize = NbdLimits.SocketBufferBytes;
            }
            catch (SocketException e)
            {
                _log.LogDebug("NBD: socket options on {Peer} not applied: {Error}", peer, e.SocketErrorCode);
            }
            _ = ServeAsync(new NetworkStream(client, ownsSocket: true), peer, CancellationToken.None, peerKey);
        }
    }

    private bool TryAdmitPeer(string key)
    {
        lock (_perPeer)
        {
            _perPeer.TryGetValue(key, out int count);
            if (count >= _context.Options.MaxConnectionsPerPeer) return false;
            _perPeer[key] = count + 1;
            return true;
        }
    }

    private void ReleasePeer(string key)
    {
        lock (_perPeer)
        {
            int count = _perPeer[key] - 1;
            if (count == 0) _perPeer.Remove(key);
            else _perPeer[key] = count;
        }
    }

    // SOL_SOCKET and SO_PEERCRED on Linux: the credentials (pid, uid, gid) of the process that connected a unix socket.
    private const int SolSocket = 1;
    private const int SoPeerCred = 17;

    /// <summary>
    /// Who connected, for logs and status (<paramref name="client"/>'s address, or on a unix socket the connecting
    /// process), and the key the per-peer limit counts by: the IP address on TCP (every port of one host is one
    /// peer), the process id on a unix socket (every local client has the same empty address).
    /// </summary>
    private static (string Display, string Key) Identify(Socket client)
    {
        try
        {
            if (client.RemoteEndPoint is IPEndPoint ip)
            {
                var address = ip.Address.IsIPv4MappedToIPv6 ? ip.Address.MapToIPv4() : ip.Address;
                return (new IPEndPoint(address, ip.Port).ToString(), address.ToString());
            }
            if (client.AddressFamily == AddressFamily.Unix && OperatingSystem.IsLinux())
            {
                Span<byte> credentials = stackalloc byte[12];
                if (client.GetRawSocketOption(SolSocket, SoPeerCred, credentials) == 12)
                {
                    int pid = BitConverter.ToInt32(credentials);
                    uint uid = BitConverter.ToUInt32(credentials[4..]);
                    return ($"unix pid {pid} uid {uid}", "pid:" + pid.ToString(System.Globalization.CultureInfo.InvariantCulture));
                }
            }
        }
        catch (SocketException)
        {
            // The client is already gone; it fails on its first read.
        }
        return ("unix", "unix");
    }

    /// <summary>
    /// Stops accepting, stops reading new requests, lets requests in flight finish and reply, then closes every
    /// connection. When <paramref name="cancellationToken"/> fires first, remaining connections are cut at once.
    /// Safe to call more than once; later calls wait for the first.
    /// </summary>
    public Task StopAsync(CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            _stopTask ??= StopCoreAsync(cancellationToken);
            return _stopTask;
        }
    }

    private async Task StopCoreAsync(CancellationToken cancellationToken)
    {
        await Task.Yield();
        _stopping.Cancel();
        Socket[] listeners;
        Task[] loops;
        lock (_lock)
        {
            listeners = [.. _listeners];
            loops = [.. _acceptLoops];
        }
        // The accept loops end on the cancellation above; only then are the listeners closed. Closing a socket with
        // an accept in progress makes .NET shut it down to wake the accept, and shutting down a listening socket that
        // a service manager also holds would stop it listening for the next server too.
        await Task.WhenAll(loops).ConfigureAwait(false);
        foreach (Socket listener in listeners) listener.Dispose();
        foreach (string path in _socketFiles)
        {
            try { File.Delete(path); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }

        Task all = Task.WhenAll(_connections.Values);
        try
        {
            await all.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            foreach (NbdConnection connection in _connections.Keys) connection.Abort();
            await all.ConfigureAwait(false);
        }
    }

    /// <summary>Stops the server, giving connections up to five seconds to finish requests in flight.</summary>
    public async ValueTask DisposeAsync()
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(5));
        await StopAsync(cts.Token).ConfigureAwait(false);
    }
}

/// <summary>One connection being served, as <see cref="NbdServer.Connections"/> reports it.</summary>
/// <param name="Peer">Who: <c>ADDR:PORT</c> on TCP, <c>unix pid PID uid UID</c> on a unix socket.</param>
/// <param name="Export">The export name it asked for, or null while it is still in the handshake.</param>
/// <param name="ConnectedUtc">When it connected.</param>
/// <param name="ReadOnly">The client may not write (a read-only export or server); false during the handshake.</param>
/// <param name="Tls">The connection runs over TLS; false during the handshake.</param>
/// <param name="OpenExport">The open export (the host maps it back to its volume, which may have been renamed since); null during the handshake.</param>
public sealed record NbdConnectionInfo(string Peer, string? Export, DateTimeOffset ConnectedUtc, bool ReadOnly = false, bool Tls = false, INbdExport? OpenExport = null);
