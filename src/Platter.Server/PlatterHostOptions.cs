using System.Net;
using System.Security.Cryptography.X509Certificates;
using Platter.Storage;

namespace Platter.Server;

/// <summary>What a <see cref="PlatterHost"/> serves and where.</summary>
public sealed class PlatterHostOptions
{
    /// <summary>The default NBD TCP port (IANA-assigned to NBD).</summary>
    public const int DefaultNbdPort = 10809;

    /// <summary>The store directory; created with the store on first run.</summary>
    public required string StoreDirectory { get; init; }

    /// <summary>NBD over TCP, e.g. 127.0.0.1:10809; null disables it.</summary>
    public IPEndPoint? NbdTcpEndPoint { get; init; }

    /// <summary>NBD over a unix socket; null disables it.</summary>
    public string? NbdSocketPath { get; init; }

    /// <summary>The management API's unix socket; null disables it (then <see cref="ApiTcpEndPoint"/> is needed).</summary>
    public string? ApiSocketPath { get; init; }

    /// <summary>Optional management API over TCP; requires <see cref="ApiToken"/>.</summary>
    public IPEndPoint? ApiTcpEndPoint { get; init; }

    /// <summary>Bearer token for the TCP management API.</summary>
    public string? ApiToken { get; init; }

    /// <summary>Server certificate with its private key; enables NBD STARTTLS.</summary>
    public X509Certificate2? TlsCertificate { get; init; }

    /// <summary>Refuse every NBD option but STARTTLS until TLS is up.</summary>
    public bool TlsRequired { get; init; }

    /// <summary>When set, NBD clients must present a certificate issued by this CA.</summary>
    public X509Certificate2? TlsClientCertificateAuthority { get; init; }

    /// <summary>
    /// Serve every NBD export read-only (like <c>qemu-nbd -r</c>): clients see NBD_FLAG_READ_ONLY and writes, trims
    /// and write-zeroes get EPERM. Only the NBD side is read-only; the management API still creates, resizes,
    /// renames and deletes volumes, because it is the owner's channel and the one way to prepare a read-only store.
    /// </summary>
    public bool ReadOnly { get; init; }

    /// <summary>NBD connections served at once (<c>--max-connections</c>).</summary>
    public int MaxConnections { get; init; } = Nbd.NbdLimits.ConnectionsMax;

    /// <summary>NBD connections one peer may hold at once (<c>--max-connections-per-client</c>).</summary>
    public int MaxConnectionsPerPeer { get; init; } = Nbd.NbdLimits.ConnectionsPerPeerMax;

    /// <summary>Time an NBD client has to finish its handshake (<c>--handshake-timeout</c>).</summary>
    public TimeSpan HandshakeTimeout { get; init; } = Nbd.NbdLimits.HandshakeTimeout;

    /// <summary>
    /// Permission bits of the NBD and API unix sockets (<c>--socket-mode</c>). Connecting needs write permission, so
    /// the default 0600 lets only the owner (and root) in; 0660 with <see cref="SocketGroup"/> lets that group in too.
    /// </summary>
    public UnixFileMode SocketMode { get; init; } = UnixFileMode.UserRead | UnixFileMode.UserWrite;

    /// <summary>Group (name or id) given the NBD and API unix sockets (<c>--socket-group</c>), or null to keep the owner's.</summary>
    public string? SocketGroup { get; init; }
    /// <summary>
    /// Open a damaged store for salvage (<c>platter serve --salvage</c>): the volumes whose metadata verifies are
    /// served read-only, the damage is logged, the catalog cannot change and nothing is written to the store.
    /// </summary>
    public bool Salvage { get; init; }

    /// <summary>
    /// Large writes bypass the page cache (<c>platter serve --direct-writes</c>, <see cref="Platter.Storage.StoreOptions.DirectWrites"/>):
    /// less CPU and time for large writes and imports, but data just written is read back from the disk.
    /// </summary>
    public bool DirectWrites { get; init; }

    /// <summary>
    /// Memory for the maps loaded from the store (<c>platter serve --map-cache</c>,
    /// <see cref="Platter.Storage.StoreOptions.MapCacheBytes"/>; decisions 0013, 0019).
    /// </summary>
    public long MapCacheBytes { get; init; } = Platter.Storage.StoreOptions.MapCacheBytesDefault;

    /// <summary>
    /// Listening sockets passed in by the service manager (systemd socket activation). A socket named "api", or a
    /// unix socket at <see cref="ApiSocketPath"/>, serves the management API; every other one serves NBD. A passed
    /// socket at a configured address replaces binding that address; the others are served in addition.
    /// </summary>
    public IReadOnlyList<ActivatedSocket> ActivatedSockets { get; init; } = [];

    /// <summary>
    /// Count per-volume I/O and serve Prometheus metrics at <c>/metrics</c> on the management API (default on).
    /// Off (<c>platter serve --no-metrics</c>) the request path takes no timestamps; it exists to measure what
    /// metrics cost.
    /// </summary>
    public bool Metrics { get; init; } = true;

    /// <summary>
    /// Optional extra TCP listener serving only <c>/metrics</c>, without a token (metrics change nothing and hold
    /// no data, only names and numbers), for a Prometheus that should not see the management API.
    /// </summary>
    public IPEndPoint? MetricsTcpEndPoint { get; init; }

    /// <summary>
    /// Opens another backend instead of the embedded store in <see cref="StoreDirectory"/> (which then holds only the
    /// default sockets): e.g. RBD images in a Ceph pool. Called once by <see cref="PlatterHost.StartAsync"/>.
    /// </summary>
    public Func<Microsoft.Extensions.Logging.ILoggerFactory, IVolumeBackend>? OpenBackend { get; init; }

    /// <summary>
    /// Serve every volume as a vhost-user-blk device too, one unix socket per volume in this directory
    /// (<c>platter serve --vhost-user-dir DIR</c>); null: no vhost-user.
    /// </summary>
    public string? VhostUserDirectory { get; init; }

    /// <summary>
    /// The node cache of a cluster store (<c>platter serve --cache-dir DIR --cache-size SIZE</c>). A store that keeps
    /// volume metadata (RBD) is always wrapped in a <see cref="Platter.Cache.CachedBackend"/>, with or without a cache
    /// directory, so that dirty markers of other servers' caches are honoured; a cache directory on the embedded
    /// store is refused (its volumes are on local disk already).
    /// </summary>
    public Platter.Cache.NodeCacheOptions? NodeCache { get; init; }

    /// <summary>How the store is opened (tests shrink its limits).</summary>
    public StoreOptions? StoreOptions { get; init; }

    /// <summary>Checks the combination before anything is opened; returns the problem or null.</summary>
    public string? Validate()
    {
        if (string.IsNullOrWhiteSpace(StoreDirectory)) return "no store directory";
        if (ApiSocketPath is null && ApiTcpEndPoint is null) return "the management API needs a unix socket or a TCP address";
        if (ApiTcpEndPoint is not null && string.IsNullOrEmpty(ApiToken)) return "the management API on TCP needs a token (--api-token-file or PLATTER_API_TOKEN)";
        if (MetricsTcpEndPoint is not null && !Metrics) return "--metrics-listen and --no-metrics contradict each other";
        if (NodeCache?.Validate() is { } cacheProblem) return cacheProblem;
        if (NodeCache?.Directory is not null && OpenBackend is null)
            return "--cache-dir is for cluster stores (--store rbd:POOL): the embedded store keeps its volumes on this machine's disk already";
        if (TlsRequired && TlsCertificate is null) return "--tls-required needs --tls-cert and --tls-key";
        if (TlsClientCertificateAuthority is not null && TlsCertificate is null) return "--tls-client-ca needs --tls-cert and --tls-key";
        if (TlsCertificate is not null && !TlsCertificate.HasPrivateKey) return "the TLS certificate has no private key";
        if (MaxConnections <= 0) return "--max-connections must be at least 1";
        if (MaxConnectionsPerPeer <= 0) return "--max-connections-per-client must be at least 1";
        if (MaxConnectionsPerPeer > MaxConnections) return "--max-connections-per-client cannot exceed --max-connections";
        if (HandshakeTimeout <= TimeSpan.Zero) return "--handshake-timeout must be positive";
        if ((SocketMode & ~(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.GroupRead |
                            UnixFileMode.GroupWrite | UnixFileMode.GroupExecute | UnixFileMode.OtherRead | UnixFileMode.OtherWrite | UnixFileMode.OtherExecute)) != 0)
            return "--socket-mode takes permission bits only (e.g. 0660)";
        if ((SocketMode & UnixFileMode.UserWrite) == 0) return "--socket-mode must let the owner connect (u+w, e.g. 0600 or 0660)";
        if (SocketGroup is not null && UnixFile.GroupId(SocketGroup) is null) return $"--socket-group: no group named '{SocketGroup}'";
        foreach (var path in new[] { NbdSocketPath, ApiSocketPath })
        {
            // sun_path holds 108 bytes including the terminator.
            if (path is not null && System.Text.Encoding.UTF8.GetByteCount(Path.GetFullPath(path)) > 107)
                return $"socket path is too long for a unix socket (107 bytes at most): {path}";
        }
        if (NbdSocketPath is not null && ApiSocketPath is not null && Path.GetFullPath(NbdSocketPath) == Path.GetFullPath(ApiSocketPath))
            return "the NBD socket and the API socket must differ";
        return null;
    }
}
