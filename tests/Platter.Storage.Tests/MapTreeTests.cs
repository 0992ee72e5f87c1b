using Platter.Storage.Internal;
using Platter.Storage.Tests.Support;
using Xunit;
using Xunit.Abstractions;

namespace Platter.Storage.Tests;

/// <summary>
/// The block map's leaf forms (dense and packed, decision 0010; full runs kept above the leaf level, decision 0018)
/// against a plain dictionary: random sets, unmaps, whole-leaf loads, packing, snapshots and clones, with every read
/// operation and the diff checked after each step.
/// Each run prints its seed; PLATTER_TEST_SEED=N replays one.
/// </summary>
// Not in parallel with the other class that counts packed leaves: MapTree.LeavesPacked is process-wide.
[Collection(MapTreeTests.PackingCounter)]
public sealed class MapTreeTests(ITestOutputHelper output)
{
    public const string PackingCounter = "MapTree.LeavesPacked";
    private const int Leaf = 256;
    // A few leaves near 0 (physical block 0 included, the edge of a packed run) and a few far away.
    private static readonly long[] LeafBases = [0, Leaf, 2 * Leaf, 3 * Leaf, 1L << 30, (1L << 40) + 7 * Leaf];

    [SkippableTheory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void Random_changes_read_back_like_a_dictionary_in_both_leaf_forms(int slot)
    {
        int seed = Seeds.ForSlot(slot, output, nameof(Random_changes_read_back_like_a_dictionary_in_both_leaf_forms));
        var rng = new Random(seed);
        long packedBefore = MapTree.LeavesPacked, runsPackedBefore = MapTree.LeavesPackedAsRuns;
        long mostRunLeaves = 0;
        var runs = new MapTree.LeafRuns();
        var map = new MapTree();
        var model = new Dictionary<long, BlockEntry>();
        var frozen = new List<(MapTree Map, Dictionary<long, BlockEntry> Model)>();
        long nextPba = 0;

        for (int step = 0; step < 200; step++)
        {
            long leafBase = LeafBases[rng.Next(LeafBases.Length)];
            switch (rng.Next(9))
            {
                case 0: // a sequential write: one run of consecutive physical blocks
                case 1:
                {
                    int first = rng.Next(Leaf), count = rng.Next(1, 300);
                    long pba = rng.Next(4) == 0 ? 0 : nextPba; // physical block 0 now and then
                    for (int i = 0; i < count; i++)
                        Set(map, model, leafBase + first + i, BlockEntry.Mapped(pba + i, (uint)rng.Next()));
                    nextPba = Math.Max(nextPba, pba + count) + rng.Next(3);
                    break;
                }
                case 2: // scattered single blocks
                    for (int i = 0; i < 20; i++)
                        Set(map, model, leafBase + rng.Next(Leaf), BlockEntry.Mapped(rng.NextInt64(1L << 40), (uint)rng.Next()));
                    break;
                case 3: // unmap a range
                {
                    long from = leafBase + rng.Next(Leaf), end = from + rng.Next(1, 400);
                    map.UnmapRange(from, end);
                    foreach (var b in model.Keys.Where(b => b >= from && b < end).ToList()) model.Remove(b);
                    break;
                }
                case 4: // a whole leaf at once, as open loads it
                {
                    var entries = new BlockEntry[Leaf];
                    int kind = rng.Next(3);
                    long pba = nextPba;
                    for (int i = 0; i < Leaf; i++)
                    {
                        if (kind == 0 && i % 16 != 0) continue; // scattered
                        if (kind == 2 && rng.Next(2) == 0) continue; // random half, too many runs to pack
                        entries[i] = BlockEntry.Mapped(kind == 1 ? pba + i : rng.NextInt64(1L << 40), (uint)rng.Next());
                    }
                    nextPba += Leaf;
                    map.SetLeaf(leafBase, entries);
                    for (int i = 0; i < Leaf; i++)
                    {
                        if (entries[i].IsMapped) model[leafBase + i] = entries[i];
                        else model.Remove(leafBase + i);
                    }
                    break;
                }
                case 5:
                    map.PackAll();
                    break;
                case 6: // freeze a version, or continue in a clone of the current one
                    if (rng.Next(2) == 0) frozen.Add((map.Snapshot(), new Dictionary<long, BlockEntry>(model)));
                    else map = map.CloneMutable();
                    break;
                case 7: // a whole leaf written sequentially: one full run once packed
                    for (int i = 0; i < Leaf; i++)
                        Set(map, model, leafBase + i, BlockEntry.Mapped(nextPba + i, (uint)rng.Next()));
                    nextPba += Leaf + rng.Next(3);
                    if (rng.Next(2) == 0) map.PackAll(); // at once, while this tree owns the leaf's parent
                    break;
                case 8: // a whole leaf as open loads a full run into a leaf the map does not hold yet
                {
                    if (map.HasLeaf(leafBase)) break;
                    var crcs = new byte[4 * Leaf];
                    rng.NextBytes(crcs);
                    runs.Clear();
                    Assert.True(runs.TryAdd(0, 100, nextPba, crcs) && runs.TryAdd(100, Leaf - 100, nextPba + 100, crcs.AsSpan(400)));
                    Assert.True(map.TrySetNewLeaf(leafBase, runs), $"seed {seed}, step {step}: a full run was not stored");
                    for (int i = 0; i < Leaf; i++)
                        model[leafBase + i] = BlockEntry.Mapped(nextPba + i, BitConverter.ToUInt32(crcs, 4 * i));
                    nextPba += Leaf;
                    break;
                }
            }
            mostRunLeaves = Math.Max(mostRunLeaves, map.CountLeafForms().FullRuns);
            Verify(map, model, $"seed {seed}, step {step}, current map");
            if (frozen.Count > 0)
            {
                var (oldMap, oldModel) = frozen[rng.Next(frozen.Count)];
                Verify(oldMap, oldModel, $"seed {seed}, step {step}, a frozen version");
                VerifyDiff(oldMap, oldModel, map, model, $"seed {seed}, step {step}");
            }
        }
        map.PackAll();
        Verify(map, model, $"seed {seed}, after packing all");
        foreach (var (oldMap, oldModel) in frozen) Verify(oldMap, oldModel, $"seed {seed}, frozen version at the end");
        Assert.True(MapTree.LeavesPacked > packedBefore, "no leaf was ever packed: the packed form went untested");
        Assert.True(MapTree.LeavesPackedAsRuns > runsPackedBefore, "no leaf was ever packed into a full run: that form went untested");
        Assert.True(mostRunLeaves >= 1, "no full-run leaf was ever held: that form went untested");
    }

    [Fact]
    public void Full_run_leaves_share_one_region_through_snapshots_overwrites_trims_and_clones()
    {
        // Every leaf of two regions loaded as full runs (open's form), a snapshot, then a block overwritten inside one,
        // a range trimmed across two, a clone of the snapshot changed elsewhere: each version reads as its model.
        var map = new MapTree();
        var model = new Dictionary<long, BlockEntry>();
        var runs = new MapTree.LeafRuns();
        var crcs = new byte[4 * Leaf];
        long loadedBefore = MapTree.RunLeavesLoaded;
        for (long leafBase = 0; leafBase < 2 * Leaf * Leaf; leafBase += Leaf)
        {
            for (int i = 0; i < Leaf; i++) BitConverter.TryWriteBytes(crcs.AsSpan(4 * i), (uint)(leafBase + i) * 2654435761u);
            runs.Clear();
            long pba = 1000 + leafBase * 2; // a gap between leaves: runs are one leaf long
            Assert.True(runs.TryAdd(0, Leaf, pba, crcs));
            Assert.True(map.TrySetNewLeaf(leafBase, runs));
            for (int i = 0; i < Leaf; i++) model[leafBase + i] = BlockEntry.Mapped(pba + i, (uint)(leafBase + i) * 2654435761u);
        }
        Assert.True(MapTree.RunLeavesLoaded - loadedBefore >= 2 * Leaf, $"{MapTree.RunLeavesLoaded - loadedBefore} full runs loaded");
        Assert.Equal((0L, 2L * Leaf), map.CountLeafForms());
        Assert.Equal(2L * Leaf * Leaf, map.MappedBlocks);

        var snapModel = new Dictionary<long, BlockEntry>(model);
        var snap = map.Snapshot();
        Set(map, model, 5 * Leaf + 17, BlockEntry.Mapped(1L << 30, 7));
        map.UnmapRange(9 * Leaf + 200, 10 * Leaf + 30);
        for (long b = 9 * Leaf + 200; b < 10 * Leaf + 30; b++) model.Remove(b);
        var clone = snap.CloneMutable();
        var cloneModel = new Dictionary<long, BlockEntry>(snapModel);
        Set(clone, cloneModel, Leaf * Leaf + 3, default);
        cloneModel.Remove(Leaf * Leaf + 3);

        // Only the leaves written became ordinary leaves; the rest still share the snapshot's run leaves.
        Assert.Equal((3L, 2L * Leaf - 3), map.CountLeafForms());
        Assert.Equal((0L, 2L * Leaf), snap.CountLeafForms());
        Assert.Equal((1L, 2L * Leaf - 1), clone.CountLeafForms());
        VerifyAll(map, model, "the volume");
        VerifyAll(snap, snapModel, "the snapshot");
        VerifyAll(clone, cloneModel, "the clone");
        VerifyDiff(snap, snapModel, map, model, "snapshot to volume");
        VerifyDiff(snap, snapModel, clone, cloneModel, "snapshot to clone");
        VerifyDiff(map, model, clone, cloneModel, "volume to clone");

        // Writing the changed leaves back to full runs and packing them returns them to the run form, in the volume only.
        long packedBefore = MapTree.LeavesPackedAsRuns;
        foreach (long leafBase in new long[] { 5 * Leaf, 9 * Leaf, 10 * Leaf })
            for (int i = 0; i < Leaf; i++)
                Set(map, model, leafBase + i, BlockEntry.Mapped((1L << 32) + leafBase + i, (uint)i));
        map.PackAll();
        Assert.True(MapTree.LeavesPackedAsRuns - packedBefore >= 3, "the rewritten leaves were not packed as full runs");
        Assert.Equal((0L, 2L * Leaf), map.CountLeafForms());
        VerifyAll(map, model, "the volume after packing");
        VerifyAll(snap, snapModel, "the snapshot after the volume packed");
        VerifyDiff(snap, snapModel, map, model, "snapshot to volume after packing");
    }

    // Every block of the model's range, read one at a time and in ranges, and the scans.
    private static void VerifyAll(MapTree map, Dictionary<long, BlockEntry> model, string where)
    {
        Assert.True(model.Count == map.MappedBlocks, $"{where}: {map.MappedBlocks} mapped, the model has {model.Count}");
        const int End = 2 * Leaf * Leaf + Leaf;
        var entries = new BlockEntry[777]; // straddles leaves at every offset
        for (long from = 0; from < End; from += entries.Length)
        {
            map.Get(from, entries);
            for (int i = 0; i < entries.Length; i++)
            {
                var expected = model.GetValueOrDefault(from + i);
                Assert.True(expected.Equals(entries[i]), $"{where}: block {from + i} reads {Show(entries[i])} in a range, expected {Show(expected)}");
                Assert.True(expected.Equals(map.Get(from + i)), $"{where}: block {from + i} reads {Show(map.Get(from + i))}, expected {Show(expected)}");
            }
        }
        var mapped = new List<long>();
        for (long b = map.NextMapped(0, End); b >= 0; )
        {
            long end = map.NextUnmapped(b, End);
            while (b < end) mapped.Add(b++);
            b = map.NextMapped(end, End);
        }
        Assert.True(model.Keys.Order().SequenceEqual(mapped), $"{where}: the scans find {mapped.Count} mapped blocks, the model has {model.Count}");
    }

    [Fact]
    public void A_map_keeps_a_bounded_number_of_dense_leaves_and_packs_the_rest()
    {
        var map = new MapTree();
        long packedBefore = MapTree.LeavesPacked;
        int leaves = EngineLimits.DenseLeavesPerMapMax + 100;
        for (int l = 0; l < leaves; l++)
            for (int i = 0; i < 4; i++)
                map.Set((long)l * Leaf + i, BlockEntry.Mapped((long)l * Leaf + i, (uint)(l * 4 + i)));
        // Every leaf beyond the bound was packed again (another test may pack too: at least, never fewer).
        Assert.True(MapTree.LeavesPacked - packedBefore >= 100, $"{MapTree.LeavesPacked - packedBefore} leaves packed");
        for (int l = 0; l < leaves; l++)
            for (int i = 0; i < 5; i++)
            {
                var e = map.Get((long)l * Leaf + i);
                if (i == 4) Assert.False(e.IsMapped);
                else Assert.Equal(((long)l * Leaf + i, (uint)(l * 4 + i)), (e.Pba, e.Crc));
            }
        Assert.Equal(leaves * 4L, map.MappedBlocks);
    }

    private static void Set(MapTree map, Dictionary<long, BlockEntry> model, long block, BlockEntry entry)
    {
        var old = map.Set(block, entry);
        Assert.Equal(model.GetValueOrDefault(block), old);
        model[block] = entry;
    }

    private static void Verify(MapTree map, Dictionary<long, BlockEntry> model, string where)
    {
        Assert.True(model.Count == map.MappedBlocks, $"{where}: {map.MappedBlocks} mapped, the model has {model.Count}");
        var entries = new BlockEntry[Leaf + 40];
        foreach (long leafBase in LeafBases)
        {
            // A range that straddles the leaf's start and end, read in one call and block by block.
            long from = Math.Max(0, leafBase - 20);
            map.Get(from, entries);
            for (int i = 0; i < entries.Length; i++)
            {
                var expected = model.GetValueOrDefault(from + i);
                Assert.True(expected.Equals(entries[i]), $"{where}: block {from + i} reads {Show(entries[i])} in a range, expected {Show(expected)}");
                Assert.True(expected.Equals(map.Get(from + i)), $"{where}: block {from + i} reads {Show(map.Get(from + i))}, expected {Show(expected)}");
            }
            // The expected answers for every start in the range, computed backwards in one pass.
            long end = leafBase + Leaf + 20;
            long nextMapped = -1, nextUnmapped = end;
            for (long b = end - 1; b >= from; b--)
            {
                if (model.ContainsKey(b)) nextMapped = b;
                else nextUnmapped = b;
                Assert.True(nextMapped == map.NextMapped(b, end), $"{where}: NextMapped({b}) = {map.NextMapped(b, end)}, expected {nextMapped}");
                Assert.True(nextUnmapped == map.NextUnmapped(b, end), $"{where}: NextUnmapped({b}) = {map.NextUnmapped(b, end)}, expected {nextUnmapped}");
            }
        }
        long first = model.Count == 0 ? -1 : model.Keys.Min();
        Assert.Equal(first, map.NextMapped(0, long.MaxValue));
    }

    private static void VerifyDiff(MapTree older, Dictionary<long, BlockEntry> olderModel, MapTree newer, Dictionary<long, BlockEntry> newerModel, string where)
    {
        var expected = olderModel.Keys.Union(newerModel.Keys)
            .Where(b => olderModel.GetValueOrDefault(b).PbaPlusOne != newerModel.GetValueOrDefault(b).PbaPlusOne)
            .Order().ToList();
        var seen = new List<long>();
        MapTree.Diff(older, newer, 0, long.MaxValue, (block, a, b) =>
        {
            Assert.True(olderModel.GetValueOrDefault(block).Equals(a) && newerModel.GetValueOrDefault(block).Equals(b), $"{where}: diff at {block} reports the wrong entries");
            seen.Add(block);
        });
        Assert.True(expected.SequenceEqual(seen), $"{where}: diff reports [{string.Join(",", seen.Take(10))}...] ({seen.Count}), expected [{string.Join(",", expected.Take(10))}...] ({expected.Count})");
        // The run form lists exactly the differing blocks the newer map maps, each run physically consecutive.
        var added = new List<(long Block, long Pba)>();
        MapTree.AddedRuns(older, newer, (block, pba, count) =>
        {
            Assert.True(count is > 0 and <= 256, $"{where}: a run of {count}");
            for (int i = 0; i < count; i++) added.Add((block + i, pba + i));
        });
        var expectedAdded = expected.Where(newerModel.ContainsKey).Select(b => (b, newerModel[b].Pba)).ToList();
        Assert.True(expectedAdded.SequenceEqual(added), $"{where}: AddedRuns lists {added.Count} blocks, expected {expectedAdded.Count}");
    }

    private static string Show(BlockEntry e) => e.IsMapped ? $"pba {e.Pba} crc {e.Crc:x8}" : "unmapped";
}
