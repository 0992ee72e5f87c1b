using Platter.Storage.Internal;
using Platter.Storage.Tests.Support;
using Xunit;
using Xunit.Abstractions;

namespace Platter.Storage.Tests;

/// <summary>
/// The relocator (decision 0011) moves a volume's scattered chunks into contiguous space: what it moves reads the
/// same, a chunk's blocks end up in at most a few physical runs, blocks a snapshot shares stay where they are, a
/// client write between the copy and the remap wins, and a power cut before the relocation's commit loses nothing.
/// The store's own relocation thread is off in these tests (budget 0); they run passes themselves.
/// </summary>
public sealed class RelocationTests(ITestOutputHelper output) : IDisposable
{
    private const int B = Blocks.Size;
    private const int VolumeBlocks = 1024; // four chunks of 1 MiB
    private readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    private VolumeStore Open(long rate = 0) => VolumeStore.Open(_dir.Path, new StoreOptions
    {
        JournalRegionBytes = 4 << 20,
        RelocateRateBytesPerSecond = rate,
    });

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
        int seed = Seeds.Fixed ?? Random.Shared.Next();
        output.WriteLine($"seed={seed}");
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
        int seed = Seeds.Fixed ?? Random.Shared.Next();
        output.WriteLine($"seed={seed}");
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
        int seed = Seeds.Fixed ?? Random.Shared.Next();
        output.WriteLine($"seed={seed}");
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
        int seed = Seeds.Fixed ?? Random.Shared.Next();
        output.WriteLine($"seed={seed}");
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
        int seed = Seeds.Fixed ?? Random.Shared.Next();
        output.WriteLine($"seed={seed}");
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
        int seed = Seeds.Fixed ?? Random.Shared.Next();
        output.WriteLine($"seed={seed}");
        using (var store = Open())
        {
            store.CreateVolume("v", VolumeBlocks * (long)B);
            using var v = store.OpenVolume("v");
            WriteScattered(v, tag: 1, seed);
            store.CreateSnapshot("v", "s");
        }
        using (var store = Open(rate: EngineLimits.RelocateRateBytesPerSecondDefault))
        {
            // The thread's first pass finds every block shared with the snapshot: nothing may move.
            Thread.Sleep(TimeSpan.FromSeconds(2));
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
}
