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
        if (_options.NbdTcpEndPoint is null && _options.NbdSocketPath is null) return;
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
        if (_options.NbdTcpEndPoint is not null)
        {
            _nbd.Listen(_options.NbdTcpEndPoint);
            // Port 0 asks the kernel for a free port; health and `platter attach` must report the real one.
            NbdTcpEndPoint = _nbd.LocalEndPoints.OfType<IPEndPoint>().FirstOrDefault() ?? _options.NbdTcpEndPoint;
        }
        if (_options.NbdSocketPath is not null)
        {
            _nbd.Listen(new UnixDomainSocketEndPoint(Path.GetFullPath(_options.NbdSocketPath)));
            SetSocketAccess(Path.GetFullPath(_options.NbdSocketPath));
        }
        await _nbd.StartAsync().ConfigureAwait(false);
        var tls = _options.TlsCertificate is null ? "no TLS"
            : _options.TlsRequired || _options.TlsClientCertificateAuthority is not null ? "TLS required" : "TLS offered";
        if (_options.TlsClientCertificateAuthority is not null) tls += " with client certificates";
        if (_options.ReadOnly) tls += ", read-only";
        if (NbdTcpEndPoint is not null) _log.LogInformation("NBD on {EndPoint} ({Tls})", NbdTcpEndPoint, tls);
        if (NbdTcpEndPoint is not null && _options.TlsClientCertificateAuthority is null)
        {
            // NBD has no login: without client certificates the TCP port is as open as the address it listens on.
            _log.LogWarning("NBD on TCP {EndPoint} has no client authentication: {Who} can read and write every volume (use --tls-client-ca)",
                NbdTcpEndPoint, IPAddress.IsLoopback(NbdTcpEndPoint.Address) ? "every local user" : "anyone who can reach it");
        }
        if (_options.NbdSocketPath is not null) _log.LogInformation("NBD on unix:{Path} ({Tls})", Path.GetFullPath(_options.NbdSocketPath), tls);
    }

    private async Task StopNbdAsync(CancellationToken cancellationToken)
    {
        if (_nbd is null) return;
        var nbd = _nbd;
        _nbd = null;
        await nbd.StopAsync(cancellationToken).ConfigureAwait(false);
        await nbd.DisposeAsync().ConfigureAwait(false);
    }
}
