using Platter.Rbd;
using Xunit;

namespace Platter.Contract.Tests;

/// <summary>
/// The contract on RBD: a pool of this class's own on a real one-host Ceph cluster (the run's shared one, or one this
/// assembly starts when run alone), shared by every test of the class (names are unique per test), a backend on the
/// pool per test. Allocation is per RADOS object: 4 MiB, the object size of the images the backend
/// creates (librbd's default order 22).
/// </summary>
[Collection(CephCollection.Name)]
public sealed class RbdBackendTests(CephCluster ceph) : BackendContractTests, IDisposable
{
    private RbdBackend _backend = ceph.OpenBackend();

    protected override IVolumeBackend Backend => _backend;

    protected override long AllocationUnit => 4L << 20;

    protected override string ExpectedKind => "rbd";

    protected override void Reopen()
    {
        _backend.Dispose();
        _backend = ceph.OpenBackend();
    }

    public void Dispose() => _backend.Dispose();
}

/// <summary>The test classes that share this assembly's one-host cluster (xunit needs the definition in the test assembly).</summary>
[CollectionDefinition(Name)]
public sealed class CephCollection : ICollectionFixture<CephCluster>
{
    /// <summary>The collection's name, for <c>[Collection(CephCollection.Name)]</c>.</summary>
    public const string Name = "ceph";
}
