using System.IO.Pipelines;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using Microsoft.Extensions.Logging;

namespace Platter.Nbd.Internal;

/// <summary>Server-wide state a connection needs.</summary>
internal sealed class ServerContext(INbdExportProvider exports, NbdServerOptions options, ILogger logger)
{
    /// <summary>
    /// TLS is required when asked for, and whenever client certificates are: a client that never starts TLS would
    /// otherwise bypass the certificate check altogether.
    /// </summary>
    public bool TlsRequired { get; } = options.TlsRequired || options.TlsClientCertificateAuthority is not null;

    public INbdExportProvider Exports { get; } = exports;
    public NbdServerOptions Options { get; } = options;
    public ILogger Logger { get; } = logger;
    public INbdMetaContextProvider[] MetaProviders { get; } = [.. options.MetaContextProviders];

    // Totals for metrics, updated once per connection (never per request).
    public long ConnectionsAccepted;
    public long ConnectionsRefused;
    public long HandshakesRefused;
}

/// <summary>
/// One client: the handshake (option haggling, TLS upgrade) and then the transmission phase, where one reader
/// loop parses requests and hands each to the thread pool; replies go through one <see cref="ReplyWriter"/>.
/// </summary>
internal sealed partial class NbdConnection
{
    private readonly ServerContext _server;
    private readonly ILogger _log;
    private readonly Stream _transport;
    private readonly string _peer;
    private Stream _stream;
    private SslStream? _ssl;
    private PipeReader _reader;
    private readonly ReplyWriter _writer;

    // Cancelled to stop reading new requests (server stopping); in-flight requests still finish.
    private readonly CancellationToken _stopping;
    // Cancelled to tear the connection down now (transport failure, forced stop).
    private readonly CancellationTokenSource _abort = new();

    // Why the server turned the client away during the handshake (unknown export, TLS required or failed, a
    // protocol violation); null while nothing was refused. Counted and logged once when the connection ends.
    private string? _refusal;
    private long _openedTimestamp;
    // Set once the export is open (transmission), cleared when the connection closes: what Connections reports.
    private volatile NbdConnectionInfo? _info;

    public NbdConnection(ServerContext server, Stream transport, string peer, CancellationToken stopping)
    {
        _server = server;
        _log = server.Logger;
        _transport = transport;
        _stream = transport;
        _peer = peer;
        _stopping = stopping;
        _reader = CreateReader(transport);
        _writer = new ReplyWriter(transport);
    }

    public string Peer => _peer;

    /// <summary>The export in use, null before transmission.</summary>
    public string? ExportName => Volatile.Read(ref _exportName);

    public DateTimeOffset ConnectedUtc { get; } = DateTimeOffset.UtcNow;

    /// <summary>This connection for <see cref="NbdServer.Connections"/>: the full picture once in transmission.</summary>
    public NbdConnectionInfo Info => _info ?? new NbdConnectionInfo(_peer, null, ConnectedUtc);

    /// <summary>Ends the connection at once: pending reads and writes fail, export calls see cancellation.</summary>
    public void Abort()
    {
        try { _abort.Cancel(); } catch (ObjectDisposedException) { }
        try { _stream.Dispose(); } catch { /* already broken */ }
    }

    private static PipeReader CreateReader(Stream stream) =>
        PipeReader.Create(stream, new StreamPipeReaderOptions(
            bufferSize: NbdLimits.ReceiveSegmentBytes, minimumReadSize: NbdLimits.ReceiveSegmentBytes / 4, leaveOpen: true));

    /// <summary>Serves the connection to its end. Never throws: every failure ends only this connection.</summary>
    public async Task RunAsync()
    {
        Interlocked.Increment(ref _server.ConnectionsAccepted);
        bool inTransmission = false;
        try
        {
            bool go;
            try
            {
                go = await HandshakeAsync().ConfigureAwait(false);
            }
            catch (Exception e) when (e is NbdProtocolException or AuthenticationException)
            {
                _refusal ??= e.Message;
                throw;
            }
            if (go)
            {
                inTransmission = true;
                await TransmissionAsync().ConfigureAwait(false);
            }
        }
        catch (Exception e) when (IsConnectionEnd(e))
        {
            _log.LogDebug("NBD {Peer}: connection ended: {Reason}", _peer, e.Message);
        }
        catch (Exception e)
        {
            _log.LogError(e, "NBD {Peer}: connection failed", _peer);
        }
        finally
        {
            if (!inTransmission && _refusal is not null)
            {
                Interlocked.Increment(ref _server.HandshakesRefused);
                _log.LogInformation("NBD {Peer}: handshake refused: {Reason}", _peer, _refusal);
            }
            await CloseAsync().ConfigureAwait(false);
        }
    }

    private static bool IsConnectionEnd(Exception e) =>
        e is IOException or NbdProtocolException or OperationCanceledException or ObjectDisposedException
            or SocketException or AuthenticationException or InvalidOperationException { Source: "System.IO.Pipelines" };

    private async Task CloseAsync()
    {
        try
        {
            // Requests already handed out still reply (or fail on a dead stream) before the export goes away.
            await _gate.WhenIdleAsync().ConfigureAwait(false);
        }
        catch { /* the gate's task never faults */ }

        try { await _reader.CompleteAsync().ConfigureAwait(false); } catch { }
        try
        {
            if (_ssl is not null && !_abort.IsCancellationRequested)
            {
                // Orderly TLS close_notify, as the spec asks before dropping the connection.
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(1));
                await _ssl.ShutdownAsync().WaitAsync(cts.Token).ConfigureAwait(false);
            }
        }
        catch { }
        try { await _stream.DisposeAsync().ConfigureAwait(false); } catch { }
        try { await _transport.DisposeAsync().ConfigureAwait(false); } catch { }
        _writer.Dispose();
        _info = null;
        if (_export is not null)
        {
            _log.LogInformation("NBD {Peer}: closed export '{Export}' after {Seconds:0.0} s", _peer, _exportName,
                System.Diagnostics.Stopwatch.GetElapsedTime(_openedTimestamp).TotalSeconds);
        }
        try { _export?.Dispose(); }
        catch (Exception e) { _log.LogWarning(e, "NBD {Peer}: disposing export failed", _peer); }
        _export = null;
        ReleaseHeldExport(); // a handshake that ended after SET_META_CONTEXT without GO
        _abort.Dispose();
    }
}
