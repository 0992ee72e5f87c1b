using Platter.Storage.Tests.Support;
using Xunit;

namespace Platter.Storage.Tests;

/// <summary>
/// The map cache (decisions 0013, 0018, 0019) with a budget far smaller than the store's map: the leaves loaded at open
/// (whole, or the CRCs of full runs) are dropped and rebuilt from the metadata store, and reads, block status, writes,
/// snapshot deletion and reopen still give what was written (a wrongly rebuilt leaf would read another block's data,
/// zeros, or fail its CRC) and damage is still detected. That paging happened is asserted by the pager's counters, not
/// inferred from memory or timing.
/// </summary>
public sealed class MapPagingTests : IDisposable
{
    private const int B = Blocks.Size;
    private const long MiB = 1 << 20;
    private const int Leaves = 48;
    private readonly TempDirectory _dir = new("platter-crcpage");

    public void Dispose() => _dir.Dispose();

    private VolumeStore Open(long budget) =>
        VolumeStore.Open(_dir.Path, new StoreOptions { JournalRegionBytes = 8 << 20, MapCacheBytes = budget, RelocateRateBytesPerSecond = 0 });

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
            AssertExtents(v, version);
        }
    }

    // A budget the map fits in: nothing dropped, nothing fetched.
    private void AssertNothingPagedWithinABudgetTheMapFits(params string[] versions)
    {
        using var store = Open(long.MaxValue);
        AssertAll(store, versions);
        Assert.Equal(0, store.MapCache.Evictions);
        Assert.Equal(0, store.MapCache.Fetches);
    }

    // Block status (the map's next mapped and unmapped block) says allocated exactly where something was written.
    private void AssertExtents(Volume v, string version)
    {
        var mapped = new SortedSet<long>(_expected[version].Keys);
        var extents = new VolumeExtent[4096];
        long at = 0, end = 64 * MiB;
        while (at < end)
        {
            int n = v.GetExtents(at, end - at, extents);
            Assert.True(n > 0, $"{version}: no extents from {at}");
            foreach (var e in extents.AsSpan(0, n))
            {
                for (long b = e.Offset / B; b < (e.Offset + e.Length) / B; b++)
                    Assert.True(e.Allocated == mapped.Contains(b), $"{version} block {b}: block status says allocated={e.Allocated}");
                at = e.Offset + e.Length;
            }
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
            var pager = store.MapCache;
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
            StoreChecks.AssertConsistent(store, "under a tiny map cache");
        }
        using (var store = Open(budget: 1))
        {
            AssertAll(store, "vm", "vm@s1", "clone");
            Assert.True(store.MapCache.Fetches > 0, "reads after the merge fetched nothing");
        }
        AssertNothingPagedWithinABudgetTheMapFits("vm", "vm@s1", "clone");
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
                long fetches = store.MapCache.Fetches;
                AssertAll(store, round == 0 ? ["vm", "vm@s1"] : ["vm", "vm@s1", "clone"]);
                Assert.True(store.MapCache.Fetches - fetches >= Written, $"reads fetched {store.MapCache.Fetches - fetches} leaves' CRCs");
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
                StoreChecks.AssertConsistent(store, "full-run leaves under a tiny map cache");
            }
    }

    // 16 scattered blocks (one every 64 KiB: bench/maps.sh's sparse layout) in each of `leaves` leaves from `first`.
    private void WriteScattered(Volume v, string version, int first, int leaves, int tag)
    {
        for (int l = first; l < first + leaves; l++)
            for (int i = 0; i < 16; i++) Write(v, version, l * 256L + 16 * i, 1, tag + i % 5);
    }

    [Fact]
    public void Scattered_leaves_are_paged_whole_and_rebuilt_through_writes_clones_snapshot_deletion_and_reopen()
    {
        using (var store = Open(long.MaxValue))
        {
            store.CreateVolume("vm", 64 * MiB);
            using (var v = store.OpenVolume("vm"))
            {
                WriteScattered(v, "vm", 0, 32, 1); // s1's layer: leaves 0..31, paged from it
                WriteScattered(v, "vm", 57, 1, 1); // and leaf 57, which s2 trims and the volume writes again
                v.Flush();
                Copy("vm", "vm@s1");
                store.CreateSnapshot("vm", "s1");
                WriteScattered(v, "vm", 32, 16, 10); // s2's layer: leaves 32..47 over nothing, paged from it
                for (int l = 0; l < 32; l += 4) Write(v, "vm", l * 256L + 16 * 3 + 1, 2, 20); // over s1's: ordinary leaves
                v.Trim(57 * MiB, MiB);
                for (long b = 57 * 256L; b < 58 * 256L; b++) _expected["vm"].Remove(b);
                v.Flush();
                Copy("vm", "vm@s2");
                store.CreateSnapshot("vm", "s2");
                WriteScattered(v, "vm", 48, 16, 30); // the volume's layer: leaves 48..63, paged; moved into s2's layer when s2 goes
                for (int l = 1; l < 48; l += 4) Write(v, "vm", l * 256L + 5, 1, 40);
                v.Flush();
            }
            store.CloneSnapshot("vm", "s1", "clone");
            Copy("vm@s1", "clone");
            using (var c = store.OpenVolume("clone"))
            {
                Write(c, "clone", 2 * 256L + 7, 1, 50);
                for (int i = 0; i < 8; i++) Write(c, "clone", 50 * 256L + 32 * i, 1, 51); // over nothing: paged from the clone's layer
                c.Flush();
            }
            store.Checkpoint();
        }
        using (var store = Open(budget: 1))
        {
            var cache = store.MapCache;
            Assert.True(cache.Evictions >= 64, $"open kept the leaves: {cache.Evictions} evictions");
            long fetches = cache.LeafFetches;
            AssertAll(store, "vm", "vm@s1", "vm@s2", "clone");
            Assert.True(cache.LeafFetches - fetches >= 64, $"reads rebuilt {cache.LeafFetches - fetches} leaves");

            // Writes into dropped leaves: the volume's copy becomes its own, the snapshots keep the paged one.
            using (var v = store.OpenVolume("vm"))
            {
                for (int l = 2; l < 64; l += 3) Write(v, "vm", l * 256L + 16 * 7 + 3, 1, 60);
                v.Trim((33 * 256L) * B, 256 * B); // a whole dropped leaf trimmed
                for (long b = 33 * 256L; b < 34 * 256L; b++) _expected["vm"].Remove(b);
                v.Flush();
            }
            AssertAll(store, "vm", "vm@s1", "vm@s2", "clone");

            // Deleting s2 merges the volume's layer into s2's (in LMDB at the checkpoint): the leaves paged from the
            // volume's layer are rebuilt from s2's layer afterwards. Leaf 57 has other records in s1's layer, which
            // comes first: the digest tells them apart.
            store.DeleteSnapshot("vm", "s2");
            _expected.Remove("vm@s2");
            AssertAll(store, "vm", "vm@s1", "clone");
            store.Checkpoint();
            fetches = cache.LeafFetches;
            AssertAll(store, "vm", "vm@s1", "clone");
            Assert.True(cache.LeafFetches - fetches >= 48, $"reads after the merge rebuilt {cache.LeafFetches - fetches} leaves");
            Assert.Equal(0, cache.RebuildFailures);
            StoreChecks.AssertConsistent(store, "under a tiny map cache");
        }
        using (var store = Open(budget: 1))
        {
            AssertAll(store, "vm", "vm@s1", "clone");
            Assert.True(store.MapCache.LeafFetches > 0, "reads after reopening rebuilt nothing");
            Assert.Equal(0, store.MapCache.RebuildFailures);
        }
        AssertNothingPagedWithinABudgetTheMapFits("vm", "vm@s1", "clone");
    }

    [Fact]
    public void Deleting_snapshots_rolling_back_and_deleting_volumes_reclaim_space_held_by_dropped_leaves()
    {
        using (var store = Open(long.MaxValue))
        {
            store.CreateVolume("vm", 64 * MiB);
            using var v = store.OpenVolume("vm");
            WriteScattered(v, "vm", 0, 32, 1);
            v.Flush();
            Copy("vm", "vm@s1");
            store.CreateSnapshot("vm", "s1");
            WriteScattered(v, "vm", 0, 16, 10); // s1 alone holds what these replace
            WriteScattered(v, "vm", 32, 16, 20);
            v.Flush();
            Copy("vm", "vm@s2");
            store.CreateSnapshot("vm", "s2");
            WriteScattered(v, "vm", 40, 16, 30);
            v.Flush();
            store.Checkpoint();
        }
        using (var store = Open(budget: 1))
        {
            // Every leaf is dropped at open: each reclaim below rebuilds the dropped versions' leaves it compares.
            long fetches = store.MapCache.LeafFetches;
            store.DeleteSnapshot("vm", "s1");
            _expected.Remove("vm@s1");
            Assert.True(store.MapCache.LeafFetches > fetches, "the snapshot's reclaim rebuilt no leaf: the test proves nothing");
            store.WaitForReclaims();
            AssertAll(store, "vm", "vm@s2");
            StoreChecks.AssertConsistent(store, "after deleting a snapshot whose leaves were dropped");
            store.Checkpoint();
            store.RollbackVolume("vm", "s2", recursive: false);
            _expected["vm"] = new Dictionary<long, int>(_expected["vm@s2"]);
            store.WaitForReclaims();
            AssertAll(store, "vm", "vm@s2");
            StoreChecks.AssertConsistent(store, "after a rollback over dropped leaves");
            store.Checkpoint();
            store.DeleteVolume("vm", recursive: true);
            store.WaitForReclaims();
            StoreChecks.AssertConsistent(store, "after deleting the volume");
            Assert.Equal(0, store.MapCache.RebuildFailures);
        }
        using (var store = Open(budget: 1))
            Assert.Equal(0, store.GetUsage().UsedBytes);
    }

    [Fact]
    public void A_damaged_record_under_a_dropped_leaf_fails_the_reads_of_that_leaf_naming_its_blocks()
    {
        using (var store = Open(long.MaxValue))
        {
            store.CreateVolume("vm", 64 * MiB);
            using var v = store.OpenVolume("vm");
            WriteScattered(v, "vm", 0, Leaves, 1);
            v.Flush();
            store.Checkpoint();
        }
        using (var store = Open(budget: 1))
        {
            using var v = store.OpenVolume("vm");
            Assert.Equal(Blocks.Pattern(1, 29 * 256L), v.ReadAll(29 * 256L * B, B)); // leaf 30 is dropped now, 29 resident
            // Flip one bit of the CRC of block 30*256+48 in its extent record.
            long victim = 30 * 256L + 48;
            FlipInMetadata(Crc32C.Compute(Blocks.Pattern(1 + 3 % 5, victim)));

            // Any block of the leaf: an I/O error naming the leaf's blocks, never zeros, another block's data or a guess.
            foreach (long block in new[] { victim, 30 * 256L + 16 })
            {
                var e = Assert.Throws<StorageException>(() => v.ReadAll(block * B, B));
                Assert.Equal(StorageError.IoError, e.Error);
                Assert.Contains($"{30 * 256L}..{30 * 256L + 255}", e.Message);
            }
            Assert.True(store.MapCache.RebuildFailures >= 2, "the reads did not fail where the leaf was rebuilt");
            // A write into the leaf fails the same way before changing anything: the leaf still reads as it did.
            var write = Assert.Throws<StorageException>(() => v.Write((30 * 256L + 100) * B, Blocks.Pattern(70, 30 * 256L + 100)));
            Assert.Equal(StorageError.IoError, write.Error);
            Assert.Equal(StorageError.IoError, Assert.Throws<StorageException>(() => v.ReadAll((30 * 256L + 100) * B, B)).Error);
            // The other leaves still read (rebuilt from their intact records).
            Assert.Equal(Blocks.Pattern(1 + 3 % 5, 31 * 256L + 48), v.ReadAll((31 * 256L + 48) * B, B));
        }
    }

    [Fact]
    public void A_damaged_record_under_a_snapshots_dropped_leaf_fails_overwrites_and_trims_before_anything_changes()
    {
        long victim = 30 * 256L + 48;
        using (var store = Open(long.MaxValue))
        {
            store.CreateVolume("vm", 64 * MiB);
            using var v = store.OpenVolume("vm");
            WriteScattered(v, "vm", 0, Leaves, 1); // the snapshot's layer: its leaves open paged
            store.CreateSnapshot("vm", "s1");
            Write(v, "vm", 30 * 256L + 1, 1, 60); // the volume's leaf 30 opens as an ordinary leaf over the snapshot's
            v.Flush();
            store.Checkpoint();
        }
        using (var store = Open(budget: 1))
        {
            using var v = store.OpenVolume("vm");
            Assert.Equal(Blocks.Pattern(60, 30 * 256L + 1), v.ReadAll((30 * 256L + 1) * B, B));
            // Open read the snapshot's leaf 30 last (to copy it for the volume's own): reading the other leaves twice
            // round makes the clock drop it.
            for (int round = 0; round < 2; round++)
                for (long l = 0; l < Leaves; l++)
                    if (l != 30) Assert.Equal(Blocks.Pattern(1, l * 256), v.ReadAll(l * 256 * B, B));
            // One bit of the snapshot's record for `victim` (its CRC), flipped under the running store.
            FlipInMetadata(Crc32C.Compute(Blocks.Pattern(1 + 3 % 5, victim)));

            // The volume maps `victim` to the snapshot's block, so an overwrite must ask the snapshot's leaf whether
            // that block stays referenced: the leaf cannot be rebuilt, and the write fails before the map changed.
            var write = Assert.Throws<StorageException>(() => v.Write(victim * B, Blocks.Pattern(70, victim)));
            Assert.Equal(StorageError.IoError, write.Error);
            Assert.Contains($"{30 * 256L}..{30 * 256L + 255}", write.Message);
            Assert.Equal(Blocks.Pattern(1 + 3 % 5, victim), v.ReadAll(victim * B, B)); // still the old data
            // A trim over the leaf fails the same way; nothing of it was unmapped.
            var trim = Assert.Throws<StorageException>(() => v.Trim(30 * MiB, MiB));
            Assert.Equal(StorageError.IoError, trim.Error);
            Assert.Equal(Blocks.Pattern(60, 30 * 256L + 1), v.ReadAll((30 * 256L + 1) * B, B));
            // The store did not fail: other leaves are written, flushed and read.
            v.Write((31 * 256L + 5) * B, Blocks.Pattern(71, 31 * 256L + 5));
            v.Flush();
            Assert.Equal(Blocks.Pattern(71, 31 * 256L + 5), v.ReadAll((31 * 256L + 5) * B, B));
        }
    }

    // Flips one bit of every copy of a block's CRC in the metadata file under the running store (LMDB maps the file:
    // its next read transaction sees the change).
    private void FlipInMetadata(uint crcValue)
    {
        var crc = new byte[4];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(crc, crcValue);
        string mdb = Directory.GetFiles(_dir.Path, "data.mdb", SearchOption.AllDirectories).Single();
        var file = File.ReadAllBytes(mdb);
        int flipped = 0;
        using (var fs = new FileStream(mdb, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite))
            for (int at = file.AsSpan().IndexOf(crc); at >= 0; at = NextIndexOf(file, crc, at + 1))
            {
                fs.Position = at;
                fs.WriteByte((byte)(file[at] ^ 0x01));
                flipped++;
            }
        Assert.True(flipped > 0, "the block's CRC is not in the metadata file");
    }

    private static int NextIndexOf(byte[] file, byte[] what, int from)
    {
        int i = file.AsSpan(from).IndexOf(what);
        return i < 0 ? -1 : from + i;
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
            long fetches = store.MapCache.Fetches;
            StorageAssert.Throws(() => v.ReadAll((30 * 256L + 7) * B, B), StorageError.ChecksumMismatch);
            Assert.True(store.MapCache.Fetches > fetches, "the read did not fetch the leaf's CRCs: the test proves nothing");
            Assert.Equal(Blocks.Pattern(1, 30 * 256L + 6), v.ReadAll((30 * 256L + 6) * B, B));
            Assert.Equal(Blocks.Pattern(1, 29 * 256L + 7), v.ReadAll((29 * 256L + 7) * B, B));
            Assert.False(store.Check(verifyChecksums: true).Ok, "the checksum scan must find the flipped bit");
        }
    }
}
