using Platter.Storage.Internal;
using Platter.Storage.Tests.Support;
using Xunit;

namespace Platter.Storage.Tests;

/// <summary>
/// Open loads and verifies every extent record in one walk of the table (issue 15, target 5) rather than loading each
/// layer and then walking the table again to verify it. The walk applies layers in id order, so it must build exactly
/// the versions that loading chain by chain builds, for every shape a catalog takes: snapshots, a deleted snapshot
/// whose layer passed to the next version, clones (and their snapshots), a rollback, tombstones.
/// </summary>
public sealed class OpenWalkTests : IDisposable
{
    private const long MiB = 1 << 20;
    private const int B = Blocks.Size;
    private readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    private VolumeStore Open() => VolumeStore.Open(_dir.Path, new StoreOptions { DataGrowthBytes = 1 * MiB, JournalRegionBytes = FaultyStore.JournalBytes });

    private static void Write(Volume v, long tag, long first, int count)
    {
        for (long b = first; b < first + count; b++) v.Write(b * B, Blocks.Pattern(tag, b));
    }

    [Fact]
    public void One_walk_builds_the_versions_that_loading_layer_by_layer_builds()
    {
        using (var store = Open())
        {
            store.CreateVolume("base", 8 * MiB);
            using (var v = store.OpenVolume("base"))
            {
                Write(v, 1, 0, 600); // across leaves (256 blocks each)
                store.CreateSnapshot("base", "s1");
                Write(v, 2, 100, 50);
                v.Trim(300 * B, 20 * B); // hides what s1 maps: a tombstone
                store.CreateSnapshot("base", "s2");
                Write(v, 3, 250, 300);
                store.CreateSnapshot("base", "s3");
                Write(v, 4, 10, 5);
            }
            store.DeleteSnapshot("base", "s2"); // s3 takes over s2's layer
            store.CloneSnapshot("base", "s1", "clone");
            using (var c = store.OpenVolume("clone"))
            {
                Write(c, 5, 500, 40);
                store.CreateSnapshot("clone", "c1");
                Write(c, 6, 0, 3);
                c.Trim(520 * B, 4 * B);
            }
            store.CreateVolume("other", 4 * MiB);
            using (var o = store.OpenVolume("other"))
            {
                Write(o, 7, 0, 256);
                store.CreateSnapshot("other", "r1");
                Write(o, 8, 0, 100);
                store.RollbackVolume("other", "r1"); // a fresh layer over r1
                Write(o, 9, 200, 10);
                o.Flush();
            }
            store.WaitForReclaims();
            store.Checkpoint();
        }

        using var metadata = new MetadataStore(_dir.Path, create: false, FaultyStore.JournalBytes);
        using var view = metadata.OpenView();
        var damage = new MetadataDamage();
        var walked = Catalog.LoadInOneWalk(view, long.MaxValue >> EngineLimits.BlockShift, damage);
        Assert.NotNull(walked);
        Assert.False(damage.Any, damage.Any ? damage.Summary() : "");
        var byLayer = Catalog.Load(view);

        Assert.Equal(byLayer.Volumes.Keys.Order(), walked.Volumes.Keys.Order());
        foreach (var d in byLayer.Volumes.Values)
        {
            var w = walked.Volumes[d.Id];
            Assert.Equal((d.Name, d.LayerId, d.SizeBytes, d.Origin?.Id), (w.Name, w.LayerId, w.SizeBytes, w.Origin?.Id));
            AssertSameMap(d.Name, d.Map, w.Map);
            Assert.Equal(d.Snapshots.Select(s => (s.Id, s.LayerId)), w.Snapshots.Select(s => (s.Id, s.LayerId)));
            for (int i = 0; i < d.Snapshots.Count; i++) AssertSameMap(d.Snapshots[i].DisplayName, d.Snapshots[i].Map, w.Snapshots[i].Map);
        }
        Assert.Contains(walked.Volumes.Values, v => v.Origin is not null);
        Assert.True(walked.Volumes.Values.Sum(v => v.Map.MappedBlocks) > 0);
    }

    private static void AssertSameMap(string what, MapTree expected, MapTree actual)
    {
        Assert.Equal(expected.MappedBlocks, actual.MappedBlocks);
        var differing = new List<long>();
        MapTree.Diff(expected, actual, 0, 1L << 40, (block, _, _) => differing.Add(block));
        Assert.True(differing.Count == 0, $"{what}: {differing.Count} blocks differ, first {differing.FirstOrDefault()}");
    }
}
