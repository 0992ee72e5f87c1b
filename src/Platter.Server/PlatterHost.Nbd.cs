using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Platter.Nbd;

namespace Platter.Server;

public sealed partial class PlatterHost
{
    private NbdServer? _nbd;

    private async Task StartNbdAsync(INbdExportProvider exports, CancellationToken cancellationToken)
    {
        var activated = _options.ActivatedSockets.Where(a => !IsApiSocket(a)).ToList();
        if (_options.NbdTcpEndPoint is null && _options.NbdSocketPath is null && activated.Count == 0) return;
        var nbdOptions = new NbdServerOptions
        {
            TlsCertificate = _options.TlsCertificate,
            TlsRequired = _options.TlsRequired,
            TlsClientCertificateAuthority = _options.TlsClientCertificateAuthority,
            MaxConnections = _options.MaxConnections,
            MaxConnectionsPerPeer = _options.MaxConnectionsPerPeer,
            HandshakeTimeout = _options.HandshakeTimeout,
        };
        // qemu:dirty-bitmap:SNAP (what changed since a snapshot) and qemu:allocation-depth, next to base:allocation.
        nbdOptions.MetaContextProviders.Add(QemuMetaContextProvider.Instance);
        _nbd = new NbdServer(exports, nbdOptions, _loggerFactory.CreateLogger<NbdServer>());
        foreach (var socket in activated)
        {
            _nbd.Listen(socket.Socket);
            _log.LogInformation("NBD on {Address} (passed in by the service manager as '{Name}')",
                socket.UnixPath is { } p ? "unix:" + p : socket.TcpEndPoint, socket.Name);
        }
        var tcpActivated = activated.Select(a => a.TcpEndPoint).FirstOrDefault(e => e is not null);
        if (_options.NbdTcpEndPoint is not null && !activated.Any(a => a.TcpEndPoint is { } e && SameEndPoint(e, _options.NbdTcpEndPoint)))
        {
            _nbd.Listen(_options.NbdTcpEndPoint);
            // Port 0 asks the kernel for a free port; health and `platter attach` must report the real one.
            NbdTcpEndPoint = _nbd.LocalEndPoints.OfType<IPEndPoint>().FirstOrDefault(e => tcpActivated is null || !SameEndPoint(e, tcpActivated))
                             ?? _options.NbdTcpEndPoint;
        }
        else
        {
            NbdTcpEndPoint = tcpActivated;
        }
        bool socketActivated = _options.NbdSocketPath is not null && ActivatedAt(_options.NbdSocketPath) is not null;
        if (_options.NbdSocketPath is not null && !socketActivated)
        {
            _nbd.Listen(new UnixDomainSocketEndPoint(Path.GetFullPath(_options.NbdSocketPath)));
            // A socket the service manager made keeps the permissions its unit gives it; ours get --socket-mode/--socket-group.
            SetSocketAccess(Path.GetFullPath(_options.NbdSocketPath));
        }
        await _nbd.StartAsync().ConfigureAwait(false);
        var tls = _options.TlsCertificate is null ? "no TLS"
            : _options.TlsRequired || _options.TlsClientCertificateAuthority is not null ? "TLS required" : "TLS offered";
        if (_options.TlsClientCertificateAuthority is not null) tls += " with client certificates";
        if (_options.ReadOnly) tls += ", read-only";
        if (NbdTcpEndPoint is not null && NbdTcpEndPoint != tcpActivated) _log.LogInformation("NBD on {EndPoint} ({Tls})", NbdTcpEndPoint, tls);
        if (NbdTcpEndPoint is not null && _options.TlsClientCertificateAuthority is null)
        {
            // NBD has no login: without client certificates the TCP port is as open as the address it listens on.
            _log.LogWarning("NBD on TCP {EndPoint} has no client authentication: {Who} can read and write every volume (use --tls-client-ca)",
                NbdTcpEndPoint, IPAddress.IsLoopback(NbdTcpEndPoint.Address) ? "every local user" : "anyone who can reach it");
        }
        if (_options.NbdSocketPath is not null && !socketActivated) _log.LogInformation("NBD on unix:{Path} ({Tls})", Path.GetFullPath(_options.NbdSocketPath), tls);
    }

    // 0.0.0.0 in a unit and 0.0.0.0 on the command line are the same address; so are [::] and 0.0.0.0 with dual mode.
    private static bool SameEndPoint(IPEndPoint a, IPEndPoint b) =>
        a.Port == b.Port && (a.Address.Equals(b.Address) || a.Address.MapToIPv6().Equals(b.Address.MapToIPv6()));

    private async Task StopNbdAsync(CancellationToken cancellationToken)
    {
        if (_nbd is null) return;
        var nbd = _nbd;
        _nbd = null;
        await nbd.StopAsync(cancellationToken).ConfigureAwait(false);
        await nbd.DisposeAsync().ConfigureAwait(false);
    }
}
