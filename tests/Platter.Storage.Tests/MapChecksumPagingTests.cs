using Platter.Storage.Tests.Support;
using Xunit;

namespace Platter.Storage.Tests;

/// <summary>
/// The map checksum cache (decision 0013) with a budget far smaller than the store's map: the CRCs of leaves loaded at
/// open are dropped and fetched again from the metadata store, and reads still return the data written (so every
/// fetched CRC is right: a wrong one fails the read) and still detect damage. That paging happened is asserted by the
/// pager's counters, not inferred from memory or timing.
/// </summary>
public sealed class MapChecksumPagingTests : IDisposable
{
    private const int B = Blocks.Size;
    private const long MiB = 1 << 20;
    private const int Leaves = 48;
    private readonly TempDirectory _dir = new("platter-crcpage");

    public void Dispose() => _dir.Dispose();

    private VolumeStore Open(long budget) =>
        VolumeStore.Open(_dir.Path, new StoreOptions { JournalRegionBytes = 8 << 20, MapChecksumCacheBytes = budget, RelocateRateBytesPerSecond = 0 });

    // What each version should read, block by block (tag of Blocks.Pattern, 0 = zeros).
    private readonly Dictionary<string, Dictionary<long, int>> _expected = new();

    private void Write(Volume v, string version, long block, int count, int tag)
    {
        var data = new byte[count * B];
        for (int i = 0; i < count; i++) Blocks.FillPattern(data.AsSpan(i * B, B), tag, block + i);
        v.Write(block * B, data);
        var map = _expected.TryGetValue(version, out var m) ? m : _expected[version] = new();
        for (int i = 0; i < count; i++) map[block + i] = tag;
    }

    private void Copy(string from, string to) => _expected[to] = new Dictionary<long, int>(_expected[from]);

    private void AssertReads(Volume v, string version)
    {
        var expected = _expected[version];
        var leaf = new byte[MiB];
        for (long l = 0; l < 64; l++)
        {
            v.Read(l * MiB, leaf);
            for (int i = 0; i < 256; i++)
            {
                long block = l * 256 + i;
                var got = leaf.AsSpan(i * B, B);
                if (expected.TryGetValue(block, out int tag))
                    Assert.True(got.SequenceEqual(Blocks.Pattern(tag, block)), $"{version} block {block}: {Blocks.Describe(got)}, expected tag {tag}");
                else
                    Assert.True(Blocks.IsZero(got), $"{version} block {block}: {Blocks.Describe(got)}, expected zeros");
            }
        }
    }

    private void AssertAll(VolumeStore store, params string[] versions)
    {
        foreach (var version in versions)
        {
            var parts = version.Split('@');
            using var v = parts.Length == 2 ? store.OpenSnapshot(parts[0], parts[1]) : store.OpenVolume(version);
            AssertReads(v, version);
        }
    }

    // Clones vm@s1 as "clone" and writes `count` blocks into it.
    private void CloneAndWrite(VolumeStore store, long block, int count, int tag)
    {
        store.CloneSnapshot("vm", "s1", "clone");
        Copy("vm@s1", "clone");
        using var c = store.OpenVolume("clone");
        Write(c, "clone", block, count, tag);
        c.Flush();
    }

    // A volume with runs in 48 leaves (80 blocks each: enough for a leaf to page its CRCs), two snapshots over it and a
    // clone of the first: every kind of leaf open builds.
    private void Build()
    {
        using var store = Open(long.MaxValue);
        store.CreateVolume("vm", 64 * MiB);
        using (var v = store.OpenVolume("vm"))
        {
            for (int l = 0; l < Leaves; l++) Write(v, "vm", l * 256L, 80, 1);
            v.Flush();
            Copy("vm", "vm@s1");
            store.CreateSnapshot("vm", "s1");
            for (int l = 0; l < Leaves; l += 2) Write(v, "vm", l * 256L + 4, 4, 2);
            v.Flush();
            Copy("vm", "vm@s2");
            store.CreateSnapshot("vm", "s2");
            for (int l = 50; l < 56; l++) Write(v, "vm", l * 256L + 100, 30, 3);
            v.Flush();
        }
        CloneAndWrite(store, 3 * 256L + 8, 2, 4);
        store.Checkpoint();
    }

    [Fact]
    public void Reads_under_a_tiny_budget_return_what_was_written_through_writes_snapshot_deletion_and_checkpoints()
    {
        Build();
        using (var store = Open(budget: 1))
        {
            var pager = store.MapChecksums;
            Assert.True(pager.Evictions >= Leaves, $"open kept the CRCs of the leaves: {pager.Evictions} evictions");
            long fetches = pager.Fetches;
            AssertAll(store, "vm", "vm@s1", "vm@s2", "clone");
            Assert.True(pager.Fetches - fetches >= Leaves, $"reads fetched {pager.Fetches - fetches} leaves' CRCs");

            // Writes into paged leaves (partial leaves: the rest of each leaf keeps its CRCs from the fetch).
            using (var v = store.OpenVolume("vm"))
            {
                for (int l = 1; l < Leaves; l += 3) Write(v, "vm", l * 256L + 20, 3, 5);
                v.Flush();
            }
            AssertAll(store, "vm", "vm@s1", "clone");

            // Deleting s2 merges the volume's layer into s2's in memory now and in LMDB at the checkpoint: leaves loaded
            // from the volume's old layer find their records in another layer afterwards.
            store.DeleteSnapshot("vm", "s2");
            _expected.Remove("vm@s2");
            AssertAll(store, "vm", "vm@s1", "clone");
            store.Checkpoint();
            AssertAll(store, "vm", "vm@s1", "clone");
            StoreChecks.AssertConsistent(store, "under a tiny map checksum budget");
        }
        using (var store = Open(budget: 1))
        {
            AssertAll(store, "vm", "vm@s1", "clone");
            Assert.True(store.MapChecksums.Fetches > 0, "reads after the merge fetched nothing");
        }
        // A budget the map fits in: nothing dropped, nothing fetched.
        using (var store = Open(long.MaxValue))
        {
            AssertAll(store, "vm", "vm@s1", "clone");
            Assert.Equal(0, store.MapChecksums.Evictions);
            Assert.Equal(0, store.MapChecksums.Fetches);
        }
    }

    [Fact]
    public void Sequentially_written_leaves_open_as_full_runs_and_read_back_through_overwrites_trims_snapshots_and_clones()
    {
        const int Written = 40;
        using (var store = Open(long.MaxValue))
        {
            store.CreateVolume("vm", 64 * MiB);
            using (var v = store.OpenVolume("vm"))
            {
                for (int l = 0; l < Written; l++) Write(v, "vm", l * 256L, 256, 1 + l % 3); // 1 MiB writes: one run per leaf
                v.Flush();
            }
            Copy("vm", "vm@s1");
            store.CreateSnapshot("vm", "s1");
            store.Checkpoint();
        }
        for (int round = 0; round < 2; round++)
            using (var store = Open(budget: 1))
            {
                // Open keeps every full leaf above the leaf level (decision 0018), its CRCs paged out (0013).
                var forms = store.VolumeStateForTests("vm").Map.CountLeafForms();
                Assert.Equal(round == 0 ? (0L, Written) : (16L, Written - 16L), forms);
                long fetches = store.MapChecksums.Fetches;
                AssertAll(store, round == 0 ? ["vm", "vm@s1"] : ["vm", "vm@s1", "clone"]);
                Assert.True(store.MapChecksums.Fetches - fetches >= Written, $"reads fetched {store.MapChecksums.Fetches - fetches} leaves' CRCs");
                if (round > 0) break;

                // One block overwritten inside every third leaf, a range trimmed across two leaves, a clone of the
                // snapshot written elsewhere: the full runs the writes touch become ordinary leaves of the writer only.
                using (var v = store.OpenVolume("vm"))
                {
                    for (int l = 0; l < Written; l += 3) Write(v, "vm", l * 256L + 77, 1, 9);
                    v.Trim((10 * 256L + 200) * B, 100 * B);
                    for (long b = 10 * 256L + 200; b < 10 * 256L + 300; b++) _expected["vm"].Remove(b);
                    v.Flush();
                }
                CloneAndWrite(store, 20 * 256L + 5, 300, 4);
                // 14 leaves overwritten (every third of 40), 2 trimmed.
                Assert.Equal((16L, Written - 16L), store.VolumeStateForTests("vm").Map.CountLeafForms());
                AssertAll(store, "vm", "vm@s1", "clone");
                store.Checkpoint();
                StoreChecks.AssertConsistent(store, "full-run leaves under a tiny map checksum budget");
            }
    }

    [Fact]
    public void Leaves_with_a_few_scattered_blocks_keep_their_checksums_in_the_leaf()
    {
        // Paging a leaf's CRCs costs more than the CRCs of 16 blocks: such leaves keep them, whatever the budget.
        using (var store = Open(long.MaxValue))
        {
            store.CreateVolume("vm", 64 * MiB);
            using var v = store.OpenVolume("vm");
            for (int l = 0; l < Leaves; l++)
                for (int i = 0; i < 16; i++) Write(v, "vm", l * 256L + 16 * i, 1, 1 + i % 5);
            v.Flush();
            store.Checkpoint();
        }
        using (var store = Open(budget: 1))
        {
            Assert.Equal(0, store.MapChecksums.Evictions);
            AssertAll(store, "vm");
            Assert.Equal(0, store.MapChecksums.Fetches);
            Assert.Equal(0, store.MapChecksums.ResidentBytes);
        }
    }

    [Fact]
    public void Damage_is_detected_with_fetched_checksums()
    {
        using (var store = Open(long.MaxValue))
        {
            store.CreateVolume("vm", 64 * MiB);
            using var v = store.OpenVolume("vm");
            for (int l = 0; l < Leaves; l++) Write(v, "vm", l * 256L, 80, 1);
            v.Flush();
            store.Checkpoint();
        }
        // Flip one bit of block 7 of leaf 30 where the data file holds it.
        var victim = Blocks.Pattern(1, 30 * 256L + 7);
        var file = File.ReadAllBytes(Path.Combine(_dir.Path, "data"));
        int at = file.AsSpan().IndexOf(victim);
        Assert.True(at >= 0, "the block's content is not in the data file");
        using (var fs = new FileStream(Path.Combine(_dir.Path, "data"), FileMode.Open, FileAccess.ReadWrite))
        {
            fs.Position = at + 100;
            int old = fs.ReadByte();
            fs.Position = at + 100;
            fs.WriteByte((byte)(old ^ 0x01));
        }

        using (var store = Open(budget: 1))
        {
            using var v = store.OpenVolume("vm");
            long fetches = store.MapChecksums.Fetches;
            StorageAssert.Throws(() => v.ReadAll((30 * 256L + 7) * B, B), StorageError.ChecksumMismatch);
            Assert.True(store.MapChecksums.Fetches > fetches, "the read did not fetch the leaf's CRCs: the test proves nothing");
            Assert.Equal(Blocks.Pattern(1, 30 * 256L + 6), v.ReadAll((30 * 256L + 6) * B, B));
            Assert.Equal(Blocks.Pattern(1, 29 * 256L + 7), v.ReadAll((29 * 256L + 7) * B, B));
            Assert.False(store.Check(verifyChecksums: true).Ok, "the checksum scan must find the flipped bit");
        }
    }
}
