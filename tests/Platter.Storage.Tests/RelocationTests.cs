using Platter.Storage.Internal;
using Platter.Storage.Tests.Support;
using Xunit;
using Xunit.Abstractions;

namespace Platter.Storage.Tests;

/// <summary>
/// The relocator (decision 0011) moves a volume's scattered chunks into contiguous space: what it moves reads the
/// same, a chunk's blocks end up in at most a few physical runs, blocks a snapshot shares stay where they are, a
/// client write between the copy and the remap wins, a power cut before the relocation's commit loses nothing, a pass
/// gives way as soon as a client writes, and scattered free space of short extents is enough to move into.
/// The store's own relocation thread is off in most of these tests (budget 0); they run passes themselves.
/// </summary>
public sealed class RelocationTests(ITestOutputHelper output) : IDisposable
{
    private const int B = Blocks.Size;
    private const int VolumeBlocks = 1024; // four chunks of 1 MiB
    private readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    private VolumeStore Open(long rate = 0, long growthBytes = 256L << 20) => VolumeStore.Open(_dir.Path, new StoreOptions
    {
        JournalRegionBytes = 4 << 20,
        RelocateRateBytesPerSecond = rate,
        DataGrowthBytes = growthBytes,
    });

    private int Seed()
    {
        int seed = Seeds.Fixed ?? Random.Shared.Next();
        output.WriteLine($"seed={seed}");
        return seed;
    }

    // Writes every block, one at a time, in a seeded random order: each chunk's blocks land all over the volume's space.
    private static void WriteScattered(Volume volume, long tag, int seed, int blocks = VolumeBlocks)
    {
        var order = Enumerable.Range(0, blocks).ToArray();
        new Random(seed).Shuffle(order);
        foreach (int b in order) volume.Write((long)b * B, Blocks.Pattern(tag, b));
        volume.Flush();
    }

    private static void AssertContent(Volume volume, Func<int, byte[]?> expected, string context)
    {
        for (int b = 0; b < VolumeBlocks; b++)
        {
            var want = expected(b);
            var got = volume.ReadAll((long)b * B, B);
            if (want is null) Assert.True(Blocks.IsZero(got), $"{context}: block {b} should read as zeros");
            else Assert.True(want.AsSpan().SequenceEqual(got), $"{context}: block {b} differs");
        }
    }

    // Physical runs of the mapped blocks of one chunk, in logical order.
    private static int Runs(VolumeStore store, string name, int chunk)
    {
        var state = store.VolumeStateForTests(name);
        int runs = 0;
        long prev = -2;
        lock (state.Lock)
        {
            for (int i = 0; i < EngineLimits.RelocateChunkBlocks; i++)
            {
                var e = state.Map.Get((long)chunk * EngineLimits.RelocateChunkBlocks + i);
                if (!e.IsMapped) continue;
                if (e.Pba != prev + 1) runs++;
                prev = e.Pba;
            }
        }
        return runs;
    }

    private static long[] Pbas(VolumeStore store, string name)
    {
        var state = store.VolumeStateForTests(name);
        lock (state.Lock) return Enumerable.Range(0, VolumeBlocks).Select(b => state.Map.Get(b).PbaPlusOne).ToArray();
    }

    [Fact]
    public void A_scattered_volume_is_moved_together_reads_the_same_and_stays_so_after_reopening()
    {
        int seed = Seed();
        using (var store = Open())
        {
            store.CreateVolume("v", VolumeBlocks * (long)B);
            using var v = store.OpenVolume("v");
            WriteScattered(v, tag: 1, seed);
            for (int c = 0; c < 4; c++)
                Assert.True(Runs(store, "v", c) > EngineLimits.RelocateRunsMax, $"seed {seed}: chunk {c} is not scattered to begin with");

            var (moved, complete) = store.RelocateForTests();
            Assert.True(complete, "the pass did not finish");
            Assert.Equal(VolumeBlocks, moved);
            for (int c = 0; c < 4; c++) Assert.True(Runs(store, "v", c) <= 2, $"seed {seed}: chunk {c} still has {Runs(store, "v", c)} runs");
            AssertContent(v, b => Blocks.Pattern(1, b), "after relocation");
            Assert.Equal(0, store.RelocateForTests().Moved); // nothing left to move: a second pass is a no-op
            v.Flush();
            StoreChecks.AssertConsistent(store, "after relocation");
        }
        using (var store = Open())
        {
            using var v = store.OpenVolume("v");
            AssertContent(v, b => Blocks.Pattern(1, b), "after reopening");
            for (int c = 0; c < 4; c++) Assert.True(Runs(store, "v", c) <= 2, $"seed {seed}: chunk {c} scattered again after reopening");
            StoreChecks.AssertConsistent(store, "after reopening");
        }
    }

    [Fact]
    public void Blocks_a_snapshot_shares_stay_where_they_are_and_the_snapshot_reads_as_it_was()
    {
        int seed = Seed();
        using var store = Open();
        store.CreateVolume("v", VolumeBlocks * (long)B);
        using var v = store.OpenVolume("v");
        WriteScattered(v, tag: 1, seed);
        store.CreateSnapshot("v", "s");
        var before = Pbas(store, "v");
        Assert.Equal(0, store.RelocateForTests().Moved);
        Assert.Equal(before, Pbas(store, "v"));

        // Blocks the volume rewrites after the snapshot are its own: those move, the snapshot keeps its blocks.
        var snapshotMap = Pbas(store, "v");
        WriteScattered(v, tag: 2, seed + 1, blocks: 512);
        var (moved, _) = store.RelocateForTests();
        Assert.Equal(512, moved);
        for (int c = 0; c < 2; c++) Assert.True(Runs(store, "v", c) <= 2, $"seed {seed}: chunk {c} still scattered");
        var after = Pbas(store, "v");
        for (int b = 512; b < VolumeBlocks; b++) Assert.Equal(snapshotMap[b], after[b]);
        AssertContent(v, b => Blocks.Pattern(b < 512 ? 2 : 1, b), "the volume");
        using (var snap = store.OpenSnapshot("v", "s")) AssertContent(snap, b => Blocks.Pattern(1, b), "the snapshot");
        v.Flush();
        StoreChecks.AssertConsistent(store, "after relocation beside a snapshot");
    }

    [Fact]
    public void A_write_or_trim_between_the_copy_and_the_remap_wins()
    {
        int seed = Seed();
        using (var store = Open())
        {
            store.CreateVolume("v", VolumeBlocks * (long)B);
            using var v = store.OpenVolume("v");
            WriteScattered(v, tag: 1, seed);
            int calls = 0;
            store.BeforeRelocationRemapForTests = (name, firstBlock) =>
            {
                if (firstBlock != 0) return;
                calls++;
                v.Write(5L * B, Blocks.Pattern(3, 5));
                v.Trim(6L * B, B);
            };
            var (moved, _) = store.RelocateForTests();
            store.BeforeRelocationRemapForTests = null;
            Assert.Equal(1, calls);
            Assert.Equal(VolumeBlocks - 2, moved);
            Assert.Equal(1, Runs(store, "v", 1));
            byte[]? Expected(int b) => b == 5 ? Blocks.Pattern(3, 5) : b == 6 ? null : Blocks.Pattern(1, b);
            AssertContent(v, Expected, "after the racing write");
            v.Flush();
            StoreChecks.AssertConsistent(store, "after the racing write");
        }
        using (var store = Open())
        {
            using var v = store.OpenVolume("v");
            AssertContent(v, b => b == 5 ? Blocks.Pattern(3, 5) : b == 6 ? null : Blocks.Pattern(1, b), "after reopening");
            StoreChecks.AssertConsistent(store, "after reopening");
        }
    }

    [Fact]
    public void A_power_cut_after_a_relocation_loses_nothing_whether_or_not_it_was_committed()
    {
        int seed = Seed();
        var rng = new Random(seed);
        foreach (bool committed in new[] { false, true })
        {
            var dir = Path.Combine(_dir.Path, committed ? "committed" : "uncommitted");
            Directory.CreateDirectory(dir);
            var faults = new FaultyStore();
            var store = faults.Open(dir, commitIntervalMax: TimeSpan.FromHours(1));
            store.CreateVolume("v", VolumeBlocks * (long)B);
            var v = store.OpenVolume("v");
            WriteScattered(v, tag: 1, seed);
            faults.Data!.TrackUnsynced = true;
            Assert.Equal(VolumeBlocks, store.RelocateForTests().Moved);
            if (committed) v.Flush();
            var cut = faults.Data.CutPower(rng);
            output.WriteLine($"{(committed ? "committed" : "uncommitted")}: cut kept {cut.Kept}, lost {cut.Lost}, tore {cut.Torn} unsynced writes");
            faults.Crash(store, v);
            using var reopened = faults.Open(dir);
            using var r = reopened.OpenVolume("v");
            AssertContent(r, b => Blocks.Pattern(1, b), committed ? "after a cut past the relocation's commit" : "after a cut before the relocation's commit");
            if (committed) for (int c = 0; c < 4; c++) Assert.True(Runs(reopened, "v", c) <= 2, $"seed {seed}: chunk {c} scattered after the cut");
            StoreChecks.AssertConsistent(reopened, "after the power cut");
        }
    }

    [Fact]
    public void The_store_thread_moves_scattered_data_on_its_own_budget()
    {
        int seed = Seed();
        using var store = Open(rate: EngineLimits.RelocateRateBytesPerSecondDefault);
        store.CreateVolume("v", VolumeBlocks * (long)B);
        using var v = store.OpenVolume("v");
        WriteScattered(v, tag: 1, seed);
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (Enumerable.Range(0, 4).Any(c => Runs(store, "v", c) > 2) && DateTime.UtcNow < deadline) Thread.Sleep(50);
        for (int c = 0; c < 4; c++) Assert.True(Runs(store, "v", c) <= 2, $"seed {seed}: chunk {c} not moved within 60 s");
        AssertContent(v, b => Blocks.Pattern(1, b), "after the thread's relocation");
        v.Flush();
        StoreChecks.AssertConsistent(store, "after the thread's relocation");
    }

    [Fact]
    public void The_store_thread_moves_what_a_deleted_snapshot_shared_without_another_write()
    {
        int seed = Seed();
        using (var store = Open())
        {
            store.CreateVolume("v", VolumeBlocks * (long)B);
            using var v = store.OpenVolume("v");
            WriteScattered(v, tag: 1, seed);
            store.CreateSnapshot("v", "s");
        }
        using (var store = Open(rate: EngineLimits.RelocateRateBytesPerSecondDefault))
        {
            // The thread's first pass (once the store has been quiet for a while) finds every block shared with the
            // snapshot: nothing may move.
            Thread.Sleep(EngineLimits.RelocateQuietTime + TimeSpan.FromSeconds(2));
            Assert.True(Runs(store, "v", 0) > EngineLimits.RelocateRunsMax, $"seed {seed}: blocks shared with a snapshot moved");
            store.DeleteSnapshot("v", "s");
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
            while (Enumerable.Range(0, 4).Any(c => Runs(store, "v", c) > 2) && DateTime.UtcNow < deadline) Thread.Sleep(50);
            for (int c = 0; c < 4; c++) Assert.True(Runs(store, "v", c) <= 2, $"seed {seed}: chunk {c} not moved within 60 s of the snapshot's deletion");
            using var v = store.OpenVolume("v");
            AssertContent(v, b => Blocks.Pattern(1, b), "after the snapshot's deletion");
            v.Flush();
            StoreChecks.AssertConsistent(store, "after the snapshot's deletion");
        }
    }

    [Fact]
    public void A_pass_gives_way_as_soon_as_a_client_writes_and_the_next_quiet_pass_finishes_the_work()
    {
        int seed = Seed();
        using var store = Open();
        store.CreateVolume("v", VolumeBlocks * (long)B);
        using var v = store.OpenVolume("v");
        WriteScattered(v, tag: 1, seed);
        // A client writes while the first chunk's copy is in hand: that chunk still finishes (its remap compares what
        // it read), and the pass stops there instead of moving the other three.
        store.BeforeRelocationRemapForTests = (_, firstBlock) =>
        {
            if (firstBlock == 0) v.Write(600L * B, Blocks.Pattern(2, 600));
        };
        var (moved, complete) = store.RelocateQuietPassForTests();
        store.BeforeRelocationRemapForTests = null;
        Assert.False(complete, "the pass went on after a client wrote");
        Assert.Equal(EngineLimits.RelocateChunkBlocks, moved);
        Assert.True(Runs(store, "v", 0) <= 2, $"seed {seed}: the chunk in hand was not finished");
        for (int c = 1; c < 4; c++) Assert.True(Runs(store, "v", c) > EngineLimits.RelocateRunsMax, $"seed {seed}: chunk {c} moved after the client wrote");

        // Clients quiet again: the next pass moves the rest.
        (moved, complete) = store.RelocateQuietPassForTests();
        Assert.True(complete);
        Assert.Equal(VolumeBlocks - EngineLimits.RelocateChunkBlocks, moved);
        for (int c = 0; c < 4; c++) Assert.True(Runs(store, "v", c) <= EngineLimits.RelocateRunsMax, $"seed {seed}: chunk {c} still scattered");
        AssertContent(v, b => Blocks.Pattern(b == 600 ? 2 : 1, b), "after the passes");
        v.Flush();
        StoreChecks.AssertConsistent(store, "after a pass that gave way");
    }

    [Fact]
    public void Clients_count_as_quiet_only_after_the_quiet_time_without_a_write()
    {
        var gate = new QuietGate(TimeSpan.FromSeconds(2));
        long At(double seconds) => (long)(seconds * System.Diagnostics.Stopwatch.Frequency);
        Assert.False(gate.IsQuiet(writes: 5, At(0)));
        Assert.False(gate.IsQuiet(5, At(1.9)));
        Assert.True(gate.IsQuiet(5, At(2)));
        Assert.False(gate.IsQuiet(6, At(3))); // a write: quiet again only two seconds after it was seen
        Assert.False(gate.IsQuiet(6, At(4.5)));
        Assert.True(gate.IsQuiet(6, At(5)));
        Assert.True(gate.IsQuiet(6, At(60)));
    }

    [Fact]
    public void Free_space_in_short_extents_only_is_enough_to_move_into_and_the_file_does_not_grow()
    {
        int seed = Seed();
        const int Stretch = 128, Freed = 112, PadBlocks = 64 * Stretch; // free extents of 448 KiB: none of a whole chunk
        using (var store = Open(growthBytes: EngineLimits.RegionBlocks * (long)B))
        {
            store.CreateVolume("pad", PadBlocks * (long)B);
            using (var pad = store.OpenVolume("pad"))
            {
                var mib = new byte[EngineLimits.RelocateChunkBlocks * B];
                mib.AsSpan().Fill(0x5a);
                for (long off = 0; off < PadBlocks * (long)B; off += mib.Length) pad.Write(off, mib);
                pad.Flush();
            }
            store.CreateVolume("v", VolumeBlocks * (long)B);
            using var v = store.OpenVolume("v");
            WriteScattered(v, tag: 1, seed);
            using (var pad = store.OpenVolume("pad"))
            {
                for (int s = 0; s < PadBlocks / Stretch; s++) pad.Trim((long)s * Stretch * B, Freed * B);
                pad.Flush();
            }
            // The trimmed runs come back once their commit is durable, readers have left, and they are punched.
            var space = store.Parts.Space;
            var (free, _, _) = space.AccountingSnapshot();
            for (int round = 0; round < 50 && (free.Sum(f => f.Length) < PadBlocks / Stretch * Freed || space.PunchQueuedBlocks > 0); round++)
            {
                store.Flush();
                Thread.Sleep(20);
                (free, _, _) = space.AccountingSnapshot();
            }
            long largest = free.Max(f => f.Length);
            output.WriteLine($"free extents {free.Count}, largest {largest} blocks, data area {space.TotalBlocks} blocks, referenced {space.ReferencedBlocks}");
            Assert.InRange(largest, EngineLimits.RelocateExtentBlocksMin, EngineLimits.RelocateChunkBlocks - 1);
            // Growing the file is not allowed either: it already holds more than the relocator's bound.
            Assert.True(space.TotalBlocks > EngineLimits.RelocateFileReferencedMax * space.ReferencedBlocks, "the setup left the relocator room to grow the file");
            long totalBefore = space.TotalBlocks;

            var (moved, complete) = store.RelocateForTests();
            Assert.True(complete, "the pass ran out of space");
            Assert.Equal(VolumeBlocks, moved);
            Assert.Equal(totalBefore, space.TotalBlocks);
            for (int c = 0; c < 4; c++)
                Assert.True(Runs(store, "v", c) <= EngineLimits.RelocateRunsMax, $"seed {seed}: chunk {c} moved into {Runs(store, "v", c)} runs");
            AssertContent(v, b => Blocks.Pattern(1, b), "after relocation into short extents");
            Assert.Equal(0, store.RelocateForTests().Moved); // what moved is never picked again
            v.Flush();
            StoreChecks.AssertConsistent(store, "after relocation into short extents");
        }
        using (var store = Open())
        {
            using var v = store.OpenVolume("v");
            AssertContent(v, b => Blocks.Pattern(1, b), "after reopening");
            StoreChecks.AssertConsistent(store, "after reopening");
        }
    }

    [Fact]
    public void A_paused_relocator_moves_nothing_until_the_pause_ends()
    {
        // The consistency check pauses it: the check compares the durable maps with memory, on a store whose clients
        // are quiet, which is when the relocator works.
        int seed = Seed();
        using var store = Open();
        store.CreateVolume("v", VolumeBlocks * (long)B);
        using var v = store.OpenVolume("v");
        WriteScattered(v, tag: 1, seed);
        var before = Pbas(store, "v");
        using (store.PauseRelocationForTests())
        {
            Assert.Equal((0L, false), store.RelocateForTests());
            Assert.Equal(before, Pbas(store, "v"));
        }
        Assert.Equal((VolumeBlocks, true), store.RelocateForTests());
        StoreChecks.AssertConsistent(store, "after the pause");
    }
}
