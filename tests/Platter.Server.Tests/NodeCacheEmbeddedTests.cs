using Platter.Cache;
using Platter.Server.Api;
using Platter.Testing;
using Xunit;

namespace Platter.Server.Tests;

/// <summary>
/// The embedded store and the node cache: a cache directory and any cache mode but none are refused with the reason
/// (its volumes are on this machine's disk already). The cache itself is tested on a real cluster (Rbd.Tests).
/// </summary>
public class NodeCacheEmbeddedTests
{
    [Fact]
    public void A_cache_directory_on_the_embedded_store_is_refused_before_anything_opens()
    {
        using var dir = new TempDirectory("pncache");
        var options = new PlatterHostOptions
        {
            StoreDirectory = dir.Combine("store"),
            ApiSocketPath = dir.Combine("api.sock"),
            NodeCache = new NodeCacheOptions { Directory = dir.Combine("cache") },
        };
        Assert.Contains("--cache-dir is for cluster stores (--store rbd:POOL)", options.Validate());
        Assert.False(Directory.Exists(dir.Combine("store")));
    }

    [Fact]
    public async Task Cache_modes_other_than_none_are_refused_with_the_reason_and_none_is_accepted()
    {
        await using var server = await RunningHost.StartAsync();
        using var client = server.Client();
        var refused = await Assert.ThrowsAsync<PlatterApiException>(() => client.CreateVolumeAsync("vm1", 1L << 20, "writeback"));
        Assert.Equal(400, refused.StatusCode);
        Assert.Contains("node caches (writethrough, writeback) are for cluster stores", refused.Message);
        Assert.Empty(await client.ListVolumesAsync()); // refused before anything was created

        var created = await client.CreateVolumeAsync("vm1", 1L << 20, "none");
        Assert.Null(created.Cache);
        var bad = await Assert.ThrowsAsync<PlatterApiException>(() => client.SetVolumeCacheAsync("vm1", "sometimes"));
        Assert.Contains("cache mode must be none, writethrough or writeback", bad.Message);
        await Assert.ThrowsAsync<PlatterApiException>(() => client.SetVolumeCacheAsync("vm1", "writethrough"));
        Assert.Equal("vm1", (await client.ReleaseVolumeAsync("vm1")).Name); // nothing cached: nothing to write back
    }
}
