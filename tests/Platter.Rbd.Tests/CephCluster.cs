using Platter.Ceph;
using Platter.Testing;
using Xunit;

namespace Platter.Rbd.Tests;

/// <summary>
/// The shared one-host cluster (<see cref="CephTestCluster"/>), started once for every test class of the collection
/// and stopped after the last, with what the backend's tests add: connections through the binding and backends with
/// short timeouts.
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

[CollectionDefinition(Name)]
public sealed class CephCollection : ICollectionFixture<CephCluster>
{
    public const string Name = "ceph";
}
