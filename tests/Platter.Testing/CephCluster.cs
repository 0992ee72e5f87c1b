using Platter.Ceph;
using Platter.Rbd;

namespace Platter.Testing;

/// <summary>
/// The one-host cluster (<see cref="CephTestCluster"/>: scripts/ceph-cluster.sh, one monitor, three bluestore OSDs,
/// pool "rbd" of size 3 / min_size 2) with what the backend's tests add: connections through the binding and backends
/// with short timeouts. Started once for every test class of a collection and stopped after the last. Each test
/// project that uses it declares its own xunit collection with this class as the collection fixture (xunit looks for
/// collection definitions only in the test assembly itself); Platter.Rbd.Tests and Platter.Contract.Tests each start
/// one cluster, on a port block of its own.
/// </summary>
public sealed class CephCluster : CephTestCluster
{
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

    /// <summary>An RBD backend on the pool, with short timeouts so a broken cluster fails the test instead of hanging it.</summary>
    public RbdBackend OpenBackend() => RbdBackend.Open(new RbdBackendOptions
    {
        Pool = Pool,
        ConfFile = ConfFile,
        ConnectTimeout = TimeSpan.FromSeconds(20),
        OperationTimeout = TimeSpan.FromSeconds(60),
    });
}
