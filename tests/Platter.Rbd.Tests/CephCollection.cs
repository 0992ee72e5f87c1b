using Platter.Testing;
using Xunit;

namespace Platter.Rbd.Tests;

/// <summary>The test classes that share this assembly's one-host cluster (xunit needs the definition in the test assembly).</summary>
[CollectionDefinition(Name)]
public sealed class CephCollection : ICollectionFixture<CephCluster>
{
    /// <summary>The collection's name, for <c>[Collection(CephCollection.Name)]</c>.</summary>
    public const string Name = "ceph";
}
