using Platter.Ceph;
using Platter.Rbd;

namespace Platter.Testing;

/// <summary>
/// A pool on the one-host cluster (<see cref="CephTestCluster"/>: the run's shared cluster, or one of this fixture's
/// own) with what the backend's tests add: connections through the binding and backends with short timeouts. A
/// collection fixture: started once for every test class of a collection and disposed after the last. Each test
/// project that uses it declares its own xunit collection with this class as the collection fixture (xunit looks for
/// collection definitions only in the test assembly itself).
/// </summary>
public class CephCluster : CephTestCluster
{
    /// <summary>A pool on the run's shared cluster when there is one, else on a cluster of this fixture's own.</summary>
    public CephCluster() : this(isolated: false)
    {
    }

    /// <param name="isolated">Always start a cluster of this fixture's own (tests that kill OSDs).</param>
    protected CephCluster(bool isolated) : base(isolated)
    {
    }

    /// <summary>Settings every test connection uses: fail rather than hang when something is wrong.</summary>
    public static readonly KeyValuePair<string, string>[] TestSettings =
    [
        new("client_mount_timeout", "20"),
        new("rados_osd_op_timeout", "60"),
        new("rados_mon_op_timeout", "20"),
        new("rbd_skip_partial_discard", "false"),
    ];

    /// <summary>A new librados connection as client.admin with <see cref="TestSettings"/>.</summary>
    public RadosCluster Connect() => RadosCluster.Connect(ConfFile, "admin", TestSettings);

    /// <summary>
    /// An RBD backend on the pool, with short timeouts so a broken cluster fails the test instead of hanging it; with
    /// <paramref name="zeroCopyWrites"/> librbd writes from the caller's buffers (off, as in `platter serve`).
    /// </summary>
    public RbdBackend OpenBackend(bool zeroCopyWrites = false) => RbdBackend.Open(new RbdBackendOptions
    {
        Pool = Pool,
        ConfFile = ConfFile,
        ConnectTimeout = TimeSpan.FromSeconds(20),
        OperationTimeout = TimeSpan.FromSeconds(60),
        ZeroCopyWrites = zeroCopyWrites,
    });
}

/// <summary>
/// A cluster of this fixture's own, never the run's shared one: for tests that kill OSDs (node loss, a stalled
/// write-back), which would stall every other test on a shared cluster.
/// </summary>
public sealed class IsolatedCephCluster : CephCluster
{
    /// <summary>Starts a cluster for this fixture alone (scripts/ceph-cluster.sh), stopped when disposed.</summary>
    public IsolatedCephCluster() : base(isolated: true)
    {
    }
}
