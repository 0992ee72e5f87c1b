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

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(3)]
    public void One_walk_builds_the_versions_that_loading_layer_by_layer_builds(int walkers)
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
        var walked = Catalog.LoadInOneWalk(view, long.MaxValue >> EngineLimits.BlockShift, damage, walkers: walkers);
        Assert.NotNull(walked);
        Assert.False(damage.Any, damage.Any ? damage.Summary() : "");
        Assert.Equal(walkers, walked.Walkers); // the walk in slices found nothing wrong: it did not walk again on one thread
        var byLayer = Catalog.Load(view);
        AssertSameCatalog(byLayer, walked);
        Assert.Contains(walked.Volumes.Values, v => v.Origin is not null);
        Assert.True(walked.Volumes.Values.Sum(v => v.Map.MappedBlocks) > 0);
    }

    // Decision 0020: the walk hands its records to a second thread that builds the versions, in chunks of up to 4,096
    // records. A store of many layers whose records cross chunk boundaries (and whose snapshots, clones, deleted
    // snapshot, rollback and tombstones fall in the middle of chunks) is built alike with and without the hand-off, and
    // alike to loading layer by layer: every map with its CRCs, the layers' record counts, and the space referenced.
    [Fact]
    public void Handing_the_walk_to_a_builder_thread_builds_what_one_thread_builds()
    {
        using (var store = Open())
        {
            for (int n = 0; n < 3; n++)
            {
                string name = $"vol{n}";
                store.CreateVolume(name, 64 * MiB);
                using var v = store.OpenVolume(name);
                // Every other block: one record each, 3,000 per layer, so layers start and end inside chunks.
                for (long b = 0; b < 6000; b += 2) v.Write(b * B, Blocks.Pattern(10 + n, b));
                store.CreateSnapshot(name, "a");
                for (long b = 1 + n; b < 5000; b += 4) v.Write(b * B, Blocks.Pattern(20 + n, b));
                v.Trim(1000 * B, 300 * B);
                store.CreateSnapshot(name, "b");
                for (long b = 3000; b < 9000; b += 3) v.Write(b * B, Blocks.Pattern(30 + n, b));
                store.CreateSnapshot(name, "c");
                for (long b = 0; b < 700; b += 5) v.Write(b * B, Blocks.Pattern(40 + n, b));
                v.Flush();
            }
            store.DeleteSnapshot("vol0", "b");
            store.CloneSnapshot("vol1", "a", "clone");
            using (var c = store.OpenVolume("clone"))
            {
                for (long b = 1; b < 4000; b += 2) c.Write(b * B, Blocks.Pattern(50, b));
                c.Flush();
            }
            store.RollbackVolume("vol2", "b", recursive: true);
            using (var r = store.OpenVolume("vol2"))
            {
                for (long b = 100; b < 2200; b += 7) r.Write(b * B, Blocks.Pattern(60, b));
                r.Flush();
            }
            store.WaitForReclaims();
            store.Checkpoint();
        }

        using var metadata = new MetadataStore(_dir.Path, create: false, FaultyStore.JournalBytes);
        using var view = metadata.OpenView();
        Assert.True(view.CountEntries().Extents > 4 * 4096, $"only {view.CountEntries().Extents} records: too few chunks");
        var one = AssertSlicedWalkBuildsWhatOneThreadBuilds(view, walkers: 2);
        AssertSameCatalog(Catalog.Load(view), one);
        AssertSlicedWalkBuildsWhatOneThreadBuilds(view, walkers: 3, Starved);
    }

    // Chunks of 7 records, 4 of them for 3 walkers, 8 slices each: walkers ahead of the slice being applied wait for
    // chunks nearly all the time, and the walker of that slice takes the last ones (the rule that keeps it from waiting
    // for a builder that waits for it).
    private static readonly Catalog.WalkLimits Starved = new(SlicesPerWalker: 8, Chunks: 4, ChunkRecords: 7);

    // Walks the store on one thread and in slices by `walkers` threads: both find it intact and build the same versions
    // (maps with their CRCs), count the same records per layer and reference the same physical blocks. Returns the
    // catalog of the walk on one thread.
    private static Catalog AssertSlicedWalkBuildsWhatOneThreadBuilds(MetadataStore.View view, int walkers, Catalog.WalkLimits? limits = null)
    {
        long dataBlocks = long.MaxValue >> EngineLimits.BlockShift;
        var damageOne = new MetadataDamage();
        var one = Catalog.LoadInOneWalk(view, dataBlocks, damageOne, walkers: 0)!;
        var damageSliced = new MetadataDamage();
        var sliced = Catalog.LoadInOneWalk(view, dataBlocks, damageSliced, walkers: walkers, limits: limits)!;
        Assert.False(damageOne.Any || damageSliced.Any, damageSliced.Any ? damageSliced.Summary() : "");
        Assert.Equal(walkers, sliced.Walkers); // walked in slices, not again on one thread
        AssertSameCatalog(one, sliced);
        Assert.Equal(damageOne.RecordsLoaded.OrderBy(p => p.Key), damageSliced.RecordsLoaded.OrderBy(p => p.Key));
        var usedOne = MetadataVerifier.VerifyVersions(one.Volumes.Values, dataBlocks, new MetadataDamage(), Versions.ReferencedBlocks);
        var usedSliced = MetadataVerifier.VerifyVersions(sliced.Volumes.Values, dataBlocks, new MetadataDamage(), Versions.ReferencedBlocks);
        Assert.Equal(usedOne.Blocks, usedSliced.Blocks);
        Assert.Equal(usedOne.Runs, usedSliced.Runs);
        return one;
    }

    // One layer only: the slices cut the walk by block, so their seams fall inside leaves (and inside runs of records a
    // leaf gathers), and between a record and the tombstone after it.
    [Theory]
    [InlineData(1, false)]
    [InlineData(2, false)]
    [InlineData(4, false)]
    [InlineData(2, true)]
    [InlineData(3, true)]
    public void Slices_cut_inside_one_layer_build_what_one_walk_builds(int walkers, bool starved)
    {
        using (var store = Open())
        {
            store.CreateVolume("one", 64 * MiB);
            using var v = store.OpenVolume("one");
            for (long b = 0; b < 15000; b += 3) v.Write(b * B, Blocks.Pattern(1, b));
            for (long b = 4000; b < 4600; b += 1) v.Write(b * B, Blocks.Pattern(2, b)); // runs of records side by side
            v.Trim(7000 * B, 900 * B);
            v.Flush();
            store.WaitForReclaims();
            store.Checkpoint();
        }
        using var metadata = new MetadataStore(_dir.Path, create: false, FaultyStore.JournalBytes);
        using var view = metadata.OpenView();
        var one = AssertSlicedWalkBuildsWhatOneThreadBuilds(view, walkers, starved ? Starved : null);
        Assert.Equal(5000 + 400 - 300, one.Volumes.Values.Single().Map.MappedBlocks);
    }

    // Damage found by the walk in slices is reported by a walk on one thread: the same problems, layers and counts
    // whatever the number of walkers, for records garbled in several places (several slices).
    [Theory]
    [InlineData(1)]
    [InlineData(7)]
    public void Damage_is_reported_the_same_with_and_without_slices(int seed)
    {
        using (var store = Open())
        {
            for (int n = 0; n < 4; n++)
            {
                store.CreateVolume($"v{n}", 16 * MiB);
                using var v = store.OpenVolume($"v{n}");
                for (long b = 0; b < 2000; b += 2) v.Write(b * B, Blocks.Pattern(n, b));
                v.Flush();
            }
            store.Checkpoint();
        }
        string path = Path.Combine(_dir.Path, "data.mdb");
        var bytes = File.ReadAllBytes(path);
        var random = new Random(seed);
        int garbled = 0;
        // Garble the value header (physical block, count) of one record of each volume's layer, in every copy of its
        // leaf page. A leaf node is its data size (24: a one-block record), flags, key size (16), then the key (layer,
        // then block, big-endian) and the value.
        foreach (long layer in new long[] { 2, 4, 6, 8 })
        {
            var pattern = new byte[24];
            System.Buffers.Binary.BinaryPrimitives.WriteUInt16LittleEndian(pattern, 24);
            System.Buffers.Binary.BinaryPrimitives.WriteUInt16LittleEndian(pattern.AsSpan(6), 16);
            System.Buffers.Binary.BinaryPrimitives.WriteInt64BigEndian(pattern.AsSpan(8), layer);
            System.Buffers.Binary.BinaryPrimitives.WriteInt64BigEndian(pattern.AsSpan(16), 2 * random.Next(100, 900));
            for (int at = bytes.AsSpan(8192).IndexOf(pattern); at >= 0;)
            {
                random.NextBytes(bytes.AsSpan(8192 + at + 24, 12)); // the value's header
                garbled++;
                int next = bytes.AsSpan(8192 + at + 1).IndexOf(pattern);
                at = next < 0 ? -1 : at + 1 + next;
            }
        }
        Assert.True(garbled >= 4, $"garbled {garbled} records");
        File.WriteAllBytes(path, bytes);

        using var metadata = new MetadataStore(_dir.Path, create: false, FaultyStore.JournalBytes);
        using var view = metadata.OpenView();
        long dataBlocks = 1L << 20;
        var one = new MetadataDamage();
        Assert.NotNull(Catalog.LoadInOneWalk(view, dataBlocks, one, walkers: 0));
        Assert.True(one.Any);
        foreach (int walkers in new[] { 1, 2, 4 })
        {
            var sliced = new MetadataDamage();
            var catalog = Catalog.LoadInOneWalk(view, dataBlocks, sliced, walkers: walkers);
            Assert.Equal(0, catalog!.Walkers); // walked again on one thread, for the report
            Assert.Equal(one.Problems, sliced.Problems);
            Assert.Equal(one.Count, sliced.Count);
            Assert.Equal(one.Layers.Order(), sliced.Layers.Order());
            Assert.Equal(one.Unattributed, sliced.Unattributed);
            Assert.Equal(one.RecordsLoaded.OrderBy(p => p.Key), sliced.RecordsLoaded.OrderBy(p => p.Key));
        }
    }

    private static void AssertSameCatalog(Catalog expected, Catalog walked)
    {
        var byLayer = expected;

        Assert.Equal(byLayer.Volumes.Keys.Order(), walked.Volumes.Keys.Order());
        foreach (var d in byLayer.Volumes.Values)
        {
            var w = walked.Volumes[d.Id];
            Assert.Equal((d.Name, d.LayerId, d.SizeBytes, d.Origin?.Id), (w.Name, w.LayerId, w.SizeBytes, w.Origin?.Id));
            AssertSameMap(d.Name, d.Map, w.Map);
            Assert.Equal(d.Snapshots.Select(s => (s.Id, s.LayerId)), w.Snapshots.Select(s => (s.Id, s.LayerId)));
            for (int i = 0; i < d.Snapshots.Count; i++) AssertSameMap(d.Snapshots[i].DisplayName, d.Snapshots[i].Map, w.Snapshots[i].Map);
        }
    }

    private static void AssertSameMap(string what, MapTree expected, MapTree actual)
    {
        Assert.Equal(expected.MappedBlocks, actual.MappedBlocks);
        var differing = new List<long>();
        MapTree.Diff(expected, actual, 0, 1L << 40, (block, _, _) => differing.Add(block));
        Assert.True(differing.Count == 0, $"{what}: {differing.Count} blocks differ, first {differing.FirstOrDefault()}");
        // The diff compares physical blocks only: the CRCs too, block by block.
        for (long b = actual.NextMapped(0, long.MaxValue); b >= 0; b = actual.NextMapped(b + 1, long.MaxValue))
        {
            BlockEntry e = expected.Get(b), a = actual.Get(b);
            Assert.True((e.Pba, e.Crc) == (a.Pba, a.Crc), $"{what}: block {b} maps ({e.Pba}, crc {e.Crc:x8}) and ({a.Pba}, crc {a.Crc:x8})");
        }
    }
}
