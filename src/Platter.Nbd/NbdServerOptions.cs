using System.Security.Cryptography.X509Certificates;

namespace Platter.Nbd;

/// <summary>Settings of an <see cref="NbdServer"/>. Read once when the server is constructed.</summary>
public sealed class NbdServerOptions
{
    /// <summary>Server certificate (with private key) for NBD_OPT_STARTTLS; null disables TLS.</summary>
    public X509Certificate2? TlsCertificate { get; set; }

    /// <summary>
    /// FORCEDTLS mode: every option except STARTTLS and ABORT is refused with NBD_REP_ERR_TLS_REQD until TLS is up.
    /// Requires <see cref="TlsCertificate"/>.
    /// </summary>
    public bool TlsRequired { get; set; }

    /// <summary>
    /// When set, clients must present a certificate that chains to this CA (checked with a custom trust store,
    /// not the system one).
    /// </summary>
    public X509Certificate2? TlsClientCertificateAuthority { get; set; }

    /// <summary>Connections served at once; further connections are closed right after accept.</summary>
    public int MaxConnections { get; set; } = NbdLimits.ConnectionsMax;

    /// <summary>
    /// Connections one peer may hold at once (a peer is an IP address on TCP, a process on a unix socket); its
    /// further connections are closed right after accept, so one client cannot lock the others out.
    /// </summary>
    public int MaxConnectionsPerPeer { get; set; } = NbdLimits.ConnectionsPerPeerMax;

    /// <summary>Time a client has to reach transmission (or abort); <see cref="Timeout.InfiniteTimeSpan"/> for none.</summary>
    public TimeSpan HandshakeTimeout { get; set; } = NbdLimits.HandshakeTimeout;

    /// <summary>
    /// Metadata context namespaces offered to clients. <c>base:allocation</c> is registered by default; the host
    /// adds e.g. a <c>qemu</c> provider for <c>qemu:allocation-depth</c> or <c>qemu:dirty-bitmap:NAME</c>.
    /// </summary>
    public IList<INbdMetaContextProvider> MetaContextProviders { get; } = [BaseAllocationContextProvider.Instance];
}
