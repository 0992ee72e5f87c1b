using Platter.Storage.Devices;
using Platter.Storage.Internal;
using Platter.Storage.Tests.Support;
using Xunit;

namespace Platter.Storage.Tests;

/// <summary>
/// Freed runs go back to the file system on the punch thread (HolePuncher), never on the commit thread: a flush does
/// not wait for a punch, freed blocks reach the allocator only after their punch has landed (so a punch never zeroes
/// a new write), a writer short of space waits for the space a punch is about to return, and closing the store
/// punches what is queued first. The device below the engine (FaultyDevice) holds punches at a gate, or slows them,
/// and counts writes that land in a range while its punch is in progress.
/// </summary>
public sealed class HolePunchTests : IDisposable
{
    private const long MiB = 1 << 20;
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(60);
    private readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    private static void WriteWhole(VolumeStore store, string name, long bytes, int seed)
    {
        using var volume = store.OpenVolume(name);
        var rng = new Random(seed);
        for (long at = 0; at < bytes; at += MiB) volume.Write(at, Blocks.RandomBytes(rng, (int)MiB));
        volume.Flush();
    }

    private static void AssertWhole(VolumeStore store, string name, long bytes, int seed)
    {
        using var volume = store.OpenVolume(name);
        var rng = new Random(seed);
        for (long at = 0; at < bytes; at += MiB)
            Assert.True(Blocks.RandomBytes(rng, (int)MiB).AsSpan().SequenceEqual(volume.ReadAll(at, (int)MiB)), $"{name} differs at {at}");
    }

    // A flush that does not complete within the bound fails the test instead of hanging it.
    private static void FlushBounded(VolumeStore store, string context) =>
        Assert.True(store.FlushAsync().AsTask().Wait(Bound), $"a flush did not complete within {Bound.TotalSeconds:0} s {context}");

    [Fact]
    public async Task A_flush_never_waits_for_a_punch_and_freed_blocks_are_reused_only_after_it_lands()
    {
        var faulty = new FaultyStore();
        using var store = faulty.Open(_dir.Path);
        store.CreateVolume("a", 16 * MiB);
        WriteWhole(store, "a", 16 * MiB, seed: 1);
        using var gate = new ManualResetEventSlim(false);
        var device = faulty.Data!;
        device.PunchGate = gate;
        Task? writer = null;
        try
        {
            store.DeleteVolume("a");
            // The round that commits the free, then the one that releases it from quarantine: the punch starts and is
            // held at the gate, and every flush still completes (the committer is not the one punching).
            var deadline = DateTime.UtcNow + Bound;
            while (device.PunchesStarted == 0 && DateTime.UtcNow < deadline)
            {
                FlushBounded(store, "while the free was on its way to the puncher");
                Thread.Sleep(10);
            }
            Assert.True(device.PunchesStarted > 0, "the deleted volume's blocks never reached the puncher");
            FlushBounded(store, "while a hole punch was held");

            // A new volume's writes meanwhile: the freed blocks are not the allocator's yet, so nothing may land in them.
            store.CreateVolume("b", 16 * MiB);
            writer = Task.Run(() => WriteWhole(store, "b", 16 * MiB, seed: 2));
            // Room for an engine that handed the blocks out early to write into the held range (then counted below).
            await Task.WhenAny(writer, Task.Delay(TimeSpan.FromSeconds(1)));
        }
        finally
        {
            gate.Set();
        }
        await writer!.WaitAsync(Bound); // a TimeoutException fails the test: the writer did not finish once the punch landed
        Assert.Equal(0, device.WritesIntoPunching);
        Assert.True(device.PunchedBytes >= 15 * MiB, $"only {device.PunchedBytes} bytes punched of a 16 MiB delete");
        AssertWhole(store, "b", 16 * MiB, seed: 2);

        // And the punched space is used again, intact.
        store.CreateVolume("c", 16 * MiB);
        WriteWhole(store, "c", 16 * MiB, seed: 3);
        AssertWhole(store, "b", 16 * MiB, seed: 2);
        AssertWhole(store, "c", 16 * MiB, seed: 3);
        StoreChecks.AssertConsistent(store, "after punching and reuse");
    }

    [Fact]
    public void A_writer_short_of_space_waits_for_the_space_a_slow_punch_returns()
    {
        var faulty = new FaultyStore();
        // Room for one 16 MiB volume and a little more: the second one needs the first one's blocks back.
        using var store = faulty.Open(_dir.Path, dataGrowthBytes: MiB, dataBytesMax: 20 * MiB);
        store.CreateVolume("a", 16 * MiB);
        WriteWhole(store, "a", 16 * MiB, seed: 1);
        faulty.Data!.PunchDelay = TimeSpan.FromMilliseconds(300); // a slow file system: the writer's own retries are shorter
        store.DeleteVolume("a");
        store.CreateVolume("b", 16 * MiB);
        WriteWhole(store, "b", 16 * MiB, seed: 2);
        AssertWhole(store, "b", 16 * MiB, seed: 2);
        Assert.Equal(0, faulty.Data.WritesIntoPunching);
        Assert.True(faulty.Data.PunchesDone > 0, "the delete's runs were never punched");
        StoreChecks.AssertConsistent(store, "after reuse of punched space");
    }

    [Fact]
    public void Closing_the_store_punches_what_is_queued_first()
    {
        var faulty = new FaultyStore();
        long punched;
        using (var store = faulty.Open(_dir.Path))
        {
            store.CreateVolume("a", 16 * MiB);
            WriteWhole(store, "a", 16 * MiB, seed: 1);
            faulty.Data!.PunchDelay = TimeSpan.FromMilliseconds(200);
            store.DeleteVolume("a");
            // Two rounds put the blocks in the puncher's queue (the first commits the free, the second releases it).
            store.Flush();
            store.Flush();
        }
        punched = faulty.Data!.PunchedBytes;
        Assert.True(punched >= 15 * MiB, $"closed with only {punched} bytes of a 16 MiB delete punched");
        Assert.Equal(faulty.Data.PunchesStarted, faulty.Data.PunchesDone);

        // Reopened: the space is free and reused, and nothing else changed.
        using var reopened = faulty.Open(_dir.Path);
        Assert.Empty(reopened.ListVolumes());
        reopened.CreateVolume("b", 16 * MiB);
        WriteWhole(reopened, "b", 16 * MiB, seed: 2);
        AssertWhole(reopened, "b", 16 * MiB, seed: 2);
        StoreChecks.AssertConsistent(reopened, "after reopening");
    }

    [Fact]
    public void An_overwrite_keeps_the_space_it_freed_for_the_next_writes_and_a_delete_still_punches()
    {
        var faulty = new FaultyStore();
        using var store = faulty.Open(_dir.Path);
        store.CreateVolume("a", 16 * MiB);
        WriteWhole(store, "a", 16 * MiB, seed: 1);
        var device = faulty.Data!;
        // Each pass frees the previous pass's 16 MiB in long runs; the rounds that free them wrote as much, so the runs
        // go back to the allocator unpunched and the next passes write into them.
        for (int pass = 2; pass <= 5; pass++)
        {
            WriteWhole(store, "a", 16 * MiB, seed: pass);
            store.Flush();
        }
        Assert.Equal(0, device.PunchesStarted);
        AssertWhole(store, "a", 16 * MiB, seed: 5);
        StoreChecks.AssertConsistent(store, "after overwrites into warm space");

        // A delete writes nothing: what it frees goes back to the file system as before.
        store.DeleteVolume("a");
        var deadline = DateTime.UtcNow + Bound;
        while (device.PunchedBytes < 15 * MiB && DateTime.UtcNow < deadline) FlushBounded(store, "after the delete");
        Assert.True(device.PunchedBytes >= 15 * MiB, $"only {device.PunchedBytes} bytes punched of a 16 MiB delete");
        StoreChecks.AssertConsistent(store, "after the delete's punch");
    }

    [Fact]
    public async Task Large_overwrites_racing_their_commits_reuse_warm_space_keep_the_data_file_bounded_and_reopen_intact()
    {
        // Writers overwrite 1 MiB at a time while commits run back to back. A round's frees stay warm when it wrote at
        // least as much: counted apart from the gathered operations, a write whose operation a round gathered before the
        // write was counted made that round look like it freed more than it wrote, and its space was punched, to be
        // written again as holes with fresh page-cache pages (issue 15's 1 MiB writes, docs/PERFORMANCE.md session 8).
        const int Writers = 8;
        const long Share = 4 * MiB;
        const int Passes = 12;
        var faulty = new FaultyStore();
        using (var store = faulty.Open(_dir.Path))
        {
            var device = faulty.Data!;
            device.TrackFreshFrom = FaultyStore.JournalBytes; // from the first write: a block counts once, or again after a punch
            store.CreateVolume("a", Writers * Share);
            WriteWhole(store, "a", Writers * Share, seed: 1);
            using var stop = new CancellationTokenSource();
            var flusher = Task.Run(() =>
            {
                while (!stop.IsCancellationRequested) store.Flush();
            });
            async Task Overwrite(int pass)
            {
                var tasks = new Task[Writers];
                for (int w = 0; w < Writers; w++)
                {
                    int writer = w;
                    tasks[w] = Task.Run(() =>
                    {
                        using var volume = store.OpenVolume("a");
                        var rng = new Random(pass * 100 + writer);
                        for (long at = writer * Share; at < (writer + 1) * Share; at += MiB) volume.Write(at, Blocks.RandomBytes(rng, (int)MiB));
                    });
                }
                await Task.WhenAll(tasks).WaitAsync(Bound);
            }
            // Two passes first: until the space in flight (written, not yet committed or out of quarantine) is there once,
            // the file grows and new writes go to new space.
            await Overwrite(2);
            await Overwrite(3);
            store.Flush();
            store.Flush();
            long lengthBefore = device.Length;
            long freshBefore = device.FreshBlocks;
            for (int pass = 4; pass < 4 + Passes; pass++) await Overwrite(pass);
            stop.Cancel();
            await flusher.WaitAsync(Bound);
            store.Flush();

            long written = Passes * Writers * Share;
            Assert.Equal(0, device.PunchesStarted);
            // Bounded: the steady state needs no new space (a region per writer at most, as writes race a refill, and as
            // much again while a slow disk holds a commit's sync: CI once saw 40 MiB beside a build). Without reuse the
            // file would grow by all 384 MiB written.
            long grown = device.Length - lengthBefore;
            Assert.True(grown <= Writers * 8 * MiB, $"the data file grew by {grown >> 20} MiB while {written >> 20} MiB overwrote a {(Writers * Share) >> 20} MiB volume");
            // Holes written: the growth, and at most the regions the writers held when measuring began.
            long freshBytes = (device.FreshBlocks - freshBefore) * 4096;
            Assert.True(freshBytes <= grown + Writers * 4 * MiB, $"{freshBytes >> 20} MiB of {written >> 20} MiB of overwrites went into holes of the data file (it grew by {grown >> 20} MiB)");
            StoreChecks.AssertConsistent(store, "after overwrites racing their commits");
        }
        // Space reused while it was warm was never space a durable map still referenced: the last pass reads back after a
        // reopen, and the check finds every block in exactly one place.
        using var reopened = faulty.Open(_dir.Path);
        for (int w = 0; w < Writers; w++)
        {
            using var volume = reopened.OpenVolume("a");
            var rng = new Random((4 + Passes - 1) * 100 + w);
            for (long at = w * Share; at < (w + 1) * Share; at += MiB)
                Assert.True(Blocks.RandomBytes(rng, (int)MiB).AsSpan().SequenceEqual(volume.ReadAll(at, (int)MiB)), $"the volume differs at {at} after a reopen");
        }
        StoreChecks.AssertConsistent(reopened, "after reopening");
    }

    [Fact]
    public void Small_random_overwrites_reuse_space_the_file_system_holds_and_small_sequential_writes_stay_contiguous()
    {
        const int Blocks4K = (int)(16 * MiB / 4096);
        var faulty = new FaultyStore();
        using var store = faulty.Open(_dir.Path);
        store.CreateVolume("a", 16 * MiB);
        var device = faulty.Data!;
        device.TrackFreshFrom = FaultyStore.JournalBytes; // the data blocks; the journal region is written at creation
        WriteWhole(store, "a", 16 * MiB, seed: 1);
        var expected = new byte[16 * MiB];
        var fill = new Random(1); // WriteWhole's data: 1 MiB at a time from one generator
        for (int m = 0; m < 16; m++) Blocks.RandomBytes(fill, (int)MiB).CopyTo(expected, m * MiB);

        // 4 KiB overwrites at random places, each flushed (a database's pattern): after the first one or two, each takes
        // a block an earlier one freed, not a hole, so the flush has no file-system allocation to write.
        using var volume = store.OpenVolume("a");
        var rng = new Random(7);
        long freshBefore = device.FreshBlocks;
        const int Overwrites = 512;
        for (int i = 0; i < Overwrites; i++)
        {
            int block = rng.Next(Blocks4K);
            var data = Blocks.RandomBytes(rng, 4096);
            volume.Write((long)block * 4096, data);
            data.CopyTo(expected, (long)block * 4096);
            volume.Flush();
        }
        long freshRandom = device.FreshBlocks - freshBefore;
        Assert.True(freshRandom <= 8, $"{freshRandom} of {Overwrites} random 4 KiB overwrites went into holes of the data file");

        // 4 KiB writes in sequence, each flushed: they keep to the volume's region (contiguous), even with short freed
        // runs at hand. The first continues no earlier write and may take a short run; then one run, or two where a
        // region ends.
        for (int block = 1024; block < 1024 + 256; block++)
        {
            var data = Blocks.RandomBytes(rng, 4096);
            volume.Write((long)block * 4096, data);
            data.CopyTo(expected, (long)block * 4096);
            volume.Flush();
        }
        var state = store.VolumeStateForTests("a");
        int runs = 0;
        long previous = -2;
        lock (state.Lock)
        {
            for (int block = 1024; block < 1024 + 256; block++)
            {
                long pba = state.Map.Get(block).Pba;
                if (pba != previous + 1) runs++;
                previous = pba;
            }
        }
        Assert.True(runs <= 3, $"256 sequential 4 KiB writes landed in {runs} physical runs");

        Assert.True(expected.AsSpan().SequenceEqual(volume.ReadAll(0, (int)(16 * MiB))), "the volume does not read back what was written");
        StoreChecks.AssertConsistent(store, "after small random and sequential overwrites");
    }

    [Fact]
    public void Small_random_writes_committed_together_land_in_one_contiguous_run_not_scattered_over_freed_blocks()
    {
        const int Blocks4K = (int)(16 * MiB / 4096);
        var faulty = new FaultyStore();
        // No timed commit: the batch below is one commit round however slow the machine.
        using var store = faulty.Open(_dir.Path, commitIntervalMax: TimeSpan.FromHours(1));
        store.CreateVolume("a", 16 * MiB);
        WriteWhole(store, "a", 16 * MiB, seed: 1);
        using var volume = store.OpenVolume("a");
        var rng = new Random(11);
        // Random overwrites leave single freed blocks all over the data file once committed.
        for (int i = 0; i < 512; i++) volume.Write((long)rng.Next(Blocks4K) * 4096, Blocks.RandomBytes(rng, 4096));
        volume.Flush();
        volume.Flush();

        // 128 random 4 KiB writes, then one flush (32 writers flushing every 32 writes look like this to the engine):
        // after the first few, which may still take freed blocks, they go to the volume's region side by side, so the
        // commit's sync writes one run instead of a hundred scattered blocks.
        var targets = new HashSet<int>();
        while (targets.Count < 128) targets.Add(rng.Next(Blocks4K));
        var order = targets.ToArray();
        var written = new Dictionary<int, byte[]>();
        foreach (int block in order)
        {
            var data = Blocks.RandomBytes(rng, 4096);
            volume.Write((long)block * 4096, data);
            written[block] = data;
        }
        var state = store.VolumeStateForTests("a");
        int runs = 0;
        long previous = -2;
        lock (state.Lock)
        {
            foreach (int block in order)
            {
                long pba = state.Map.Get(block).Pba;
                if (pba != previous + 1) runs++;
                previous = pba;
            }
        }
        int shortRunWrites = EngineLimits.ShortRunPendingWritesMax + 1;
        Assert.True(runs <= shortRunWrites + 3, $"128 random 4 KiB writes of one commit round landed in {runs} physical runs");
        volume.Flush();
        foreach (var (block, data) in written)
            Assert.True(data.AsSpan().SequenceEqual(volume.ReadAll((long)block * 4096, 4096)), $"block {block} does not read back");
        StoreChecks.AssertConsistent(store, "after a round of small random writes");
    }

    [Fact]
    public async Task A_full_file_system_gets_the_warm_space_back_before_a_writer_is_refused()
    {
        // A tmpfs with room for the warm bound (1 GiB) and the metadata reserve, so overwrites keep their space warm;
        // then something else fills it. A new volume's writes need new file-system space, which only punching the warm
        // runs gives: without that they fail with NoSpace.
        using var mount = new TempDirectory();
        (await ProcessRunner.RunAsync("mount", ["-t", "tmpfs", "-o", "size=1300m", "tmpfs", mount.Path]))
            .EnsureSuccess("mounting a tmpfs failed (the full-disk tests run as root)");
        try
        {
            var faulty = new FaultyStore();
            string storeDir = Path.Combine(mount.Path, "store");
            using (var store = faulty.Open(storeDir))
            {
                store.CreateVolume("a", 16 * MiB);
                for (int pass = 1; pass <= 3; pass++)
                {
                    WriteWhole(store, "a", 16 * MiB, seed: pass);
                    store.Flush();
                }
                store.Flush();
                Assert.Equal(0, faulty.Data!.PunchesStarted);

                // Fill the file system to 3 MiB past the metadata reserve: too little for a 4 MiB allocation region.
                var (_, available) = FileSystemSpace.Query(mount.Path)!.Value;
                long fill = available - store.Parts.Space.MetadataReserveBytes - 3 * MiB;
                using (var filler = new FileStream(Path.Combine(mount.Path, "filler"), FileMode.CreateNew, FileAccess.Write))
                {
                    var chunk = new byte[4 * MiB];
                    for (long at = 0; at < fill; at += chunk.Length) filler.Write(chunk, 0, (int)Math.Min(chunk.Length, fill - at));
                }
                Assert.False(store.Parts.Space.FileSystem!.Value.AvailableBytes - 4 * MiB >= store.Parts.Space.MetadataReserveBytes,
                    "the file system still has room for a region: the test does not reach the full-disk path");

                store.CreateVolume("b", 8 * MiB);
                WriteWhole(store, "b", 8 * MiB, seed: 7);
                Assert.True(faulty.Data.PunchedBytes >= 8 * MiB, $"only {faulty.Data.PunchedBytes} bytes of warm space punched");
                Assert.Equal(0, faulty.Data.WritesIntoPunching);
                AssertWhole(store, "a", 16 * MiB, seed: 3);
                AssertWhole(store, "b", 8 * MiB, seed: 7);
                StoreChecks.AssertConsistent(store, "after the warm space was punched for a writer");
            }
        }
        finally
        {
            (await ProcessRunner.RunAsync("umount", [mount.Path])).EnsureSuccess("unmounting the test tmpfs failed");
        }
    }
}
