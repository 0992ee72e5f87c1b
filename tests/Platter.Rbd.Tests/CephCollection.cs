using Platter.Testing;
using Xunit;

namespace Platter.Rbd.Tests;

/// <summary>
/// The test classes that share a pool on the run's one-host cluster (scripts/test.sh starts one for every test project;
/// run alone, this assembly starts its own). xunit needs the definition in the test assembly. Runs in parallel with
/// <see cref="IsolatedCephCollection"/>.
/// </summary>
[CollectionDefinition(Name)]
public sealed class CephCollection : ICollectionFixture<CephCluster>
{
    /// <summary>The collection's name, for <c>[Collection(CephCollection.Name)]</c>.</summary>
    public const string Name = "ceph";
}

/// <summary>
/// The test classes that kill OSDs (node loss, write-back held up by a stalled pool): on a cluster of their own, so the
/// other tests of the run never stall with them; one at a time, as their kills would stall each other.
/// </summary>
[CollectionDefinition(Name)]
public sealed class IsolatedCephCollection : ICollectionFixture<IsolatedCephCluster>
{
    /// <summary>The collection's name, for <c>[Collection(IsolatedCephCollection.Name)]</c>.</summary>
    public const string Name = "ceph-isolated";
}
