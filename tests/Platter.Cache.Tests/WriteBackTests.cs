using System.Buffers.Binary;
using Platter.Storage;
using Xunit;
using Xunit.Abstractions;

namespace Platter.Cache.Tests;

/// <summary>
/// The write-back cache's guarantees, with the embedded engine as the backend below and a gate between them that
/// decides how far write-back gets: flushed writes survive a crash (the log replays), a lost cache leaves the backend an
/// ordered prefix of the writes, damaged records are neither served nor written back, and a fast writer meets
/// back-pressure, not errors.
/// </summary>
public sealed class WriteBackTests(ITestOutputHelper output) : EngineVolumeTest(output, VolumeBytes)
{
    internal const long VolumeBytes = 64L << 20;

    private string LogPath => Path.Combine(_dir, "vm1.log");

    private (WriteBackVolume Cache, GatedBackend Gate) Open(long logBytes = 16L << 20, bool acceptLoss = false, string? logPath = null,
        WriteBackOptions? options = null)
    {
        var gate = new GatedBackend(_store.OpenVolume("vm1"));
        var o = options ?? new WriteBackOptions();
        var cache = WriteBackVolume.Open(logPath ?? LogPath, "store-test/vm1", gate, new WriteBackOptions
        {
            LogBytes = logBytes, AcceptLoss = acceptLoss, AtomicUnitBytes = o.AtomicUnitBytes, HeadIdleDelay = o.HeadIdleDelay,
        });
        return (cache, gate);
    }

    private static byte[] Stamp(long seq, int length = Block)
    {
        var data = new byte[length];
        Span<byte> word = stackalloc byte[8];
        BinaryPrimitives.WriteInt64LittleEndian(word, seq);
        for (int i = 0; i < length; i++) data[i] = word[i & 7];
        return data;
    }

    private byte[] BackendRead(long offset, int length)
    {
        var data = new byte[length];
        using var v = _store.OpenVolume("vm1");
        v.Read(offset, data);
        return data;
    }

    [Fact]
    public async Task Writes_are_served_from_the_log_and_written_back_in_order()
    {
        var (cache, gate) = Open();
        await using (cache)
        {
            gate.Pause();
            using var h = cache.OpenHandle();
            await h.WriteAsync(0, Stamp(1, 64 * 1024), fua: false);
            await h.WriteAsync(1000, Stamp(2, 100), fua: false); // unaligned: read-modify-write of block 0
            await h.WriteAsync(8L << 20, Stamp(3), fua: true);

            var expected = Stamp(1, 64 * 1024);
            Stamp(2, 100).CopyTo(expected, 1000);
            Assert.Equal(expected, await ReadAsync(h, 0, 64 * 1024));
            Assert.Equal(Stamp(3), await ReadAsync(h, 8L << 20, Block));
            Assert.Equal(new byte[Block], BackendRead(0, Block)); // held back by the gate: only the log has it
            Assert.True(cache.Status.DirtyBytes >= 64 * 1024);

            gate.Resume();
            await cache.DrainAsync();
            Assert.Equal(expected, BackendRead(0, 64 * 1024));
            Assert.Equal(Stamp(3), BackendRead(8L << 20, Block));
            Assert.Equal(0, cache.Status.DirtyBytes);
            // In order: the first record's blocks reached the backend before the later ones.
            Assert.Equal(0, gate.Applied[0].Offset);
            Assert.Equal(8L << 20, gate.Applied[^1].Offset);
        }
    }

    [Fact]
    public async Task Flushed_writes_replay_after_a_crash()
    {
        var (cache, gate) = Open();
        gate.Pause();
        using (var h = cache.OpenHandle())
        {
            for (int i = 0; i < 50; i++) await h.WriteAsync(i * 3L * Block, Stamp(100 + i), fua: false);
            await h.FlushAsync();
        }
        // A crash: the process dies with the log as it is on disk (SIGKILL keeps the page cache; the flush made the
        // records durable even without it). Copy the file as the crash leaves it; the dying process never writes back.
        var crashed = Path.Combine(_dir, "crashed.log");
        RawFile.Copy(LogPath, crashed);
        gate.Cut();
        await cache.DisposeAsync();
        Assert.Equal(new byte[Block], BackendRead(0, Block));

        var (again, _) = Open(logPath: crashed);
        await using (again)
        {
            Assert.Equal(50, again.Replayed);
            using var h = again.OpenHandle();
            for (int i = 0; i < 50; i++) Assert.Equal(Stamp(100 + i), await ReadAsync(h, i * 3L * Block, Block));
            await again.DrainAsync();
        }
        for (int i = 0; i < 50; i++) Assert.Equal(Stamp(100 + i), BackendRead(i * 3L * Block, Block));
    }

    [Fact]
    public async Task Power_cuts_at_random_moments_lose_nothing_flushed()
    {
        // Writers stamp random blocks; every 8th write is followed by a flush. At a random moment the log file is
        // copied as a power cut would leave it: the flushed part intact, the unflushed tail torn. After replay every
        // block reads as its last flushed stamp or a later one, never an older one or garbage.
        int seed = Environment.GetEnvironmentVariable("PLATTER_TEST_SEED") is { Length: > 0 } s ? int.Parse(s) : Random.Shared.Next();
        _output.WriteLine($"seed {seed} (replay with PLATTER_TEST_SEED={seed})");
        var random = new Random(seed);
        for (int round = 0; round < 5; round++)
        {
            string log = Path.Combine(_dir, $"round{round}.log");
            var gate = new GatedBackend(_store.OpenVolume("vm1"));
            var cache = WriteBackVolume.Open(log, $"store-test/round{round}", gate, new WriteBackOptions { LogBytes = 8L << 20 });
            gate.Pause();
            const int blocks = 256;
            var flushed = new long[blocks];  // stamp every block held at the last completed flush
            long syncedEnd = 4096;            // the log's tail at the last completed flush: what a power cut keeps
            var latest = new long[blocks];
            using var h = cache.OpenHandle();
            long seq = round * 1_000_000;
            int writes = random.Next(10, 400);
            for (int i = 0; i < writes; i++)
            {
                int b = random.Next(blocks);
                await h.WriteAsync(b * (long)Block, Stamp(++seq), fua: false);
                latest[b] = seq;
                if (i % 8 == 7)
                {
                    await h.FlushAsync();
                    Array.Copy(latest, flushed, blocks);
                    syncedEnd = cache.LogTailPosition;
                }
            }
            var cut = Path.Combine(_dir, $"round{round}.cut");
            RawFile.Copy(log, cut);
            TearTail(cut, syncedEnd, random);
            gate.Cut();
            await cache.DisposeAsync();

            var again = WriteBackVolume.Open(cut, $"store-test/round{round}", new GatedBackend(_store.OpenVolume("vm1")), new WriteBackOptions { LogBytes = 8L << 20 });
            await using (again)
            {
                using var r = again.OpenHandle();
                for (int b = 0; b < blocks; b++)
                {
                    var data = await ReadAsync(r, b * (long)Block, Block);
                    long stamp = BinaryPrimitives.ReadInt64LittleEndian(data);
                    Assert.True(data.AsSpan().SequenceEqual(Stamp(stamp)), $"seed {seed} round {round}: block {b} is torn");
                    Assert.True(stamp >= flushed[b] && stamp <= latest[b] && (stamp == 0 || stamp > round * 1_000_000 || flushed[b] == 0),
                        $"seed {seed} round {round}: block {b} reads stamp {stamp}; flushed {flushed[b]}, latest {latest[b]}");
                }
                await again.DrainAsync();
            }
            // The backend had nothing of this round before (gate paused, then cut), so reset for the next round.
            using var v = _store.OpenVolume("vm1");
            v.WriteZeroes(0, blocks * (long)Block);
        }
    }

    [Fact]
    public async Task Power_cuts_after_head_syncs_of_the_superblock_alone_keep_every_flushed_write_and_an_ordered_prefix()
    {
        // Write-back runs while writers stamp random blocks, flushing after every 8th write, so the head is made durable
        // many times between flushes, each time by a durable write of the superblock's slot alone (pwritev2 RWF_DSYNC),
        // not an fdatasync of the log: the records appended since the last flush stay unsynced. Then a power cut: the
        // backend stops where it is, the superblock is what its last durable write left, and each log sector written
        // since the last flush is kept, zeroed or garbage. After replay and write-back the volume must be the state
        // after the first k writes, for some k at least the writes the last flush covered.
        int seed = Environment.GetEnvironmentVariable("PLATTER_TEST_SEED") is { Length: > 0 } s ? int.Parse(s) : Random.Shared.Next();
        _output.WriteLine($"seed {seed} (replay with PLATTER_TEST_SEED={seed})");
        var random = new Random(seed);
        const int blocks = 256;
        long slotSyncs = 0;
        for (int round = 0; round < 6; round++)
        {
            using (var v = _store.OpenVolume("vm1")) v.WriteZeroes(0, blocks * (long)Block);
            File.Delete(LogPath);
            var (cache, gate) = Open(logBytes: 8L << 20, options: new WriteBackOptions { HeadIdleDelay = TimeSpan.FromMilliseconds(1) });
            var writes = new List<(int Block, long Stamp)>();
            int flushedWrites = 0;
            long syncedEnd = Platter.Cache.Internal.LogFormat.DataStart;
            using (var h = cache.OpenHandle())
            {
                int count = random.Next(50, 600);
                int unflushedTail = random.Next(0, 300); // the last writes are never flushed: only head syncs pass them
                for (int i = 0; i < count; i++)
                {
                    int b = random.Next(blocks);
                    long stamp = round * 1_000_000L + i + 1;
                    await h.WriteAsync(b * (long)Block, Stamp(stamp), fua: false);
                    writes.Add((b, stamp));
                    if (i % 8 == 7 && i < count - unflushedTail)
                    {
                        await h.FlushAsync();
                        flushedWrites = i + 1;
                        syncedEnd = cache.LogTailPosition;
                    }
                    if (random.Next(16) == 0) await Task.Delay(1); // let write-back catch up now and then
                }
                // The cut, at a random moment of write-back (often after its head passed the last flush's tail):
                // nothing more reaches the backend (writes in flight finish, as they would on the wire).
                await Task.Delay(random.Next(0, 300));
                gate.Pause();
                while (gate.InFlight != 0) await Task.Delay(1);
                slotSyncs += cache.Log.SlotSyncs;
                var cut = Path.Combine(_dir, $"round{round}.cut");
                RawFile.Copy(LogPath, cut);
                TearTail(cut, syncedEnd, random);
                _output.WriteLine($"round {round}: {count} writes, {flushedWrites} flushed, {gate.Applied.Count} written back (head at {cache.Log.HeadPosition}, last flush's tail {syncedEnd}), head syncs {cache.Log.HeadSyncs} ({cache.Log.SlotSyncs} of the slot alone)");
                File.Move(cut, LogPath, overwrite: true);
            }
            gate.Cut();
            await cache.DisposeAsync();

            var (again, _) = Open(logBytes: 8L << 20);
            await using (again) await again.DrainAsync();
            var image = new long[blocks];
            for (int b = 0; b < blocks; b++)
            {
                var data = BackendRead(b * (long)Block, Block);
                image[b] = BinaryPrimitives.ReadInt64LittleEndian(data);
                Assert.True(data.AsSpan().SequenceEqual(Stamp(image[b])), $"seed {seed} round {round}: block {b} is torn");
            }
            var expected = new long[blocks];
            int k = 0;
            for (; k < flushedWrites; k++) expected[writes[k].Block] = writes[k].Stamp;
            while (!expected.AsSpan().SequenceEqual(image))
            {
                Assert.True(k < writes.Count, $"seed {seed} round {round}: the volume is not the flushed state plus a prefix of the later writes");
                expected[writes[k].Block] = writes[k].Stamp;
                k++;
            }
        }
        Assert.True(slotSyncs > 0, "no head sync made the superblock durable alone");
    }

    // A power cut keeps what was synced and an arbitrary part of the rest: here, each 512-byte sector written after the
    // last flush is independently kept, zeroed or turned to garbage.
    private static void TearTail(string path, long syncedEnd, Random random)
    {
        using var f = File.Open(path, FileMode.Open, FileAccess.ReadWrite);
        long length = f.Length;
        // Find the end of the written records: the last non-zero sector.
        var sector = new byte[512];
        long end = 4096;
        for (long pos = 4096; pos < length; pos += 512)
        {
            f.Position = pos;
            f.ReadExactly(sector);
            if (sector.AsSpan().IndexOfAnyExcept((byte)0) >= 0) end = pos + 512;
        }
        long tear = syncedEnd;
        var junk = new byte[512];
        for (long pos = tear; pos < end; pos += 512)
        {
            // Each unsynced sector independently: kept, zeroed, or garbage.
            int what = random.Next(3);
            if (what == 0) continue;
            if (what == 2) random.NextBytes(junk); else Array.Clear(junk);
            f.Position = pos;
            f.Write(junk);
        }
    }

    // ---- laps of the ring: the log is written once when made, then records overwrite earlier laps' records ----

    private const long LapLogBytes = 4096 + (4L << 20); // the smallest ring: 910 records of one block per lap

    [Fact]
    public async Task A_new_log_is_written_once_so_records_never_land_in_a_hole()
    {
        var (cache, _) = Open(logBytes: LapLogBytes);
        await using (cache)
        {
            // Every block of the file is allocated when the log is made (a sparse ring would put first-lap records in
            // holes, and each flush would then also write allocation metadata).
            Assert.Equal(LapLogBytes, new FileInfo(LogPath).Length);
            Assert.Equal(LapLogBytes, RawFile.FirstHole(LogPath));
        }
    }

    // A crash of a log whose ring has gone round more than once: the ring filled for 1.1 to 3 laps (drained as it
    // goes), then write-back held (so the log keeps what follows), `flushedWrites` writes with flushes among them and
    // a last flush, then one-block writes to `laterBlocks` with no flush. The log as the last flush left it (what a
    // power cut keeps of the records) and as it is at the crash, with the tails and block stamps of both moments.
    private sealed record MidLapCrash(byte[] Synced, byte[] Now, long SyncedTail, long NowTail, long[] Flushed, List<(int Block, long Stamp)> Unflushed);

    private async Task<MidLapCrash> CrashMidLapAsync(Random random, int blocks, int flushedWrites, IReadOnlyList<int> laterBlocks)
    {
        using (var v = _store.OpenVolume("vm1")) v.WriteZeroes(0, blocks * (long)Block);
        File.Delete(LogPath);
        var (cache, gate) = Open(logBytes: LapLogBytes);
        var latest = new long[blocks];
        var unflushed = new List<(int Block, long Stamp)>();
        MidLapCrash crash;
        using (var h = cache.OpenHandle())
        {
            long seq = 0;
            int lapWrites = random.Next(1_000, 2_700);
            for (int i = 0; i < lapWrites + flushedWrites; i++)
            {
                if (i == lapWrites)
                {
                    await cache.DrainAsync();
                    gate.Pause();
                    while (!cache.Log.HeadSettled) await Task.Delay(5); // no superblock write in flight while the test copies the file
                }
                int b = random.Next(blocks);
                await h.WriteAsync(b * (long)Block, Stamp(++seq), fua: false);
                latest[b] = seq;
                if (i >= lapWrites && random.Next(4) == 0) await h.FlushAsync();
            }
            await h.FlushAsync();
            var synced = RawFile.ReadAll(LogPath);
            long syncedTail = cache.LogTailPosition;
            var flushed = (long[])latest.Clone();
            foreach (int b in laterBlocks)
            {
                await h.WriteAsync(b * (long)Block, Stamp(++seq), fua: false);
                unflushed.Add((b, seq));
            }
            crash = new MidLapCrash(synced, RawFile.ReadAll(LogPath), syncedTail, cache.LogTailPosition, flushed, unflushed);
        }
        gate.Cut();
        await cache.DisposeAsync();
        return crash;
    }

    // The log after a power cut: the file at the crash, but each 512-byte sector written since the last flush (the ring
    // from its tail then to the tail at the crash, wrapping) independently new, old (what the disk held before: an
    // earlier lap's record) or garbage, as `choose` says (0, 1, 2). Checks that nothing else changed since that flush.
    // Then opens it (replay) and returns k: the volume it serves must be the flushed state plus the first k later writes.
    private async Task<int> PowerCutAndReplayAsync(MidLapCrash c, Func<long, int> choose, Random random, int blocks, string context)
    {
        var cut = (byte[])c.Now.Clone();
        var torn = new bool[cut.Length / 512];
        for (long pos = c.SyncedTail; pos != c.NowTail; pos += 512)
        {
            if (pos == cut.Length) { pos = 4096; if (pos == c.NowTail) break; }
            torn[pos / 512] = true;
            var sector = cut.AsSpan((int)pos, 512);
            switch (choose(pos))
            {
                case 1: c.Synced.AsSpan((int)pos, 512).CopyTo(sector); break;
                case 2: random.NextBytes(sector); break;
            }
        }
        for (int s = 8; s < torn.Length; s++)
            if (!torn[s]) Assert.True(c.Now.AsSpan(s * 512, 512).SequenceEqual(c.Synced.AsSpan(s * 512, 512)), $"sector {s} changed after the flush but is not between the flushed tail and the tail");
        File.WriteAllBytes(LogPath, cut);

        var (again, _) = Open(logBytes: LapLogBytes);
        await using (again)
        {
            using var h = again.OpenHandle();
            var image = new long[blocks];
            for (int b = 0; b < blocks; b++)
            {
                var data = await ReadAsync(h, b * (long)Block, Block);
                image[b] = BinaryPrimitives.ReadInt64LittleEndian(data);
                Assert.True(data.AsSpan().SequenceEqual(Stamp(image[b])), $"{context}: block {b} is torn");
            }
            await again.DrainAsync();
            var expected = (long[])c.Flushed.Clone();
            for (int k = 0; ; k++)
            {
                if (expected.AsSpan().SequenceEqual(image)) return k;
                Assert.True(k < c.Unflushed.Count, $"{context}: the volume is not the flushed state plus a prefix of the unflushed writes");
                expected[c.Unflushed[k].Block] = c.Unflushed[k].Stamp;
            }
        }
    }

    [Fact]
    public async Task Power_cuts_mid_lap_replay_what_was_flushed_and_never_a_stale_record()
    {
        // The ring has gone round more than once, so the space after the tail holds intact records of earlier laps
        // (valid checksums, older sequence numbers). A power cut keeps what the last flush synced; each sector written
        // after it is new, old (the earlier lap's) or garbage. Replay must give the flushed state plus a prefix of the
        // later writes: a stale record taken for the continuation of the log would put older data back.
        int seed = Environment.GetEnvironmentVariable("PLATTER_TEST_SEED") is { Length: > 0 } s ? int.Parse(s) : Random.Shared.Next();
        _output.WriteLine($"seed {seed} (replay with PLATTER_TEST_SEED={seed})");
        var random = new Random(seed);
        const int blocks = 256;
        for (int round = 0; round < 4; round++)
        {
            var later = Enumerable.Range(0, random.Next(1, 40)).Select(_ => random.Next(blocks)).ToList();
            var c = await CrashMidLapAsync(random, blocks, random.Next(1, 200), later);
            Assert.True(c.Now.AsSpan((int)c.NowTail, 512).IndexOfAnyExcept((byte)0) >= 0, "the ring after the tail should hold an earlier lap's data");
            // Rounds 0 and 2: every sector at random; 1 and 3: new up to a random sector, old after it.
            long cutAt = c.SyncedTail + 512L * random.Next(0, 20);
            int k = await PowerCutAndReplayAsync(c, pos => round % 2 == 0 ? random.Next(3) : (pos >= c.SyncedTail && pos < cutAt ? 0 : 1),
                random, blocks, $"seed {seed} round {round}");
            _output.WriteLine($"round {round}: replay kept {k} of {c.Unflushed.Count} unflushed writes");
        }
    }

    [Fact]
    public async Task A_torn_or_stale_record_mid_lap_ends_replay_before_it_and_everything_after()
    {
        const int blocks = 64;
        var random = new Random(11);
        foreach (var tear in new[] { "stale header", "garbage payload sector", "all old" })
        {
            // Three unflushed one-block writes, A, B, C, to blocks that hold flushed data.
            var c = await CrashMidLapAsync(random, blocks, 10, [1, 2, 3]);
            // One-block records are 4,608 bytes, the same place in every lap: an earlier lap's record header (valid,
            // with a sequence number one lap older) lies exactly where B's header goes.
            const int recordBytes = 512 + Block;
            long b0 = c.SyncedTail + recordBytes;
            Assert.True(b0 + 2 * recordBytes <= c.Now.Length, "the three records should not wrap");
            Assert.Equal(0x52425750u, BinaryPrimitives.ReadUInt32LittleEndian(c.Synced.AsSpan((int)b0))); // "PWBR"
            int k = await PowerCutAndReplayAsync(c, pos => tear switch
            {
                "stale header" => pos == b0 ? 1 : 0,
                "garbage payload sector" => pos == b0 + 512 + 1024 ? 2 : 0,
                _ => 1,
            }, random, blocks, tear);
            // A survives whole; B is torn or an earlier lap's record, so neither it nor C (intact) comes back.
            Assert.Equal(tear == "all old" ? 0 : 1, k);
            for (int b = 1; b <= 3; b++)
                Assert.Equal(Stamp(b == 1 && k == 1 ? c.Unflushed[0].Stamp : c.Flushed[b]), BackendRead(b * (long)Block, Block));
        }
    }

    [Fact]
    public async Task A_lost_cache_leaves_the_backend_an_ordered_prefix_of_the_writes()
    {
        int seed = Environment.GetEnvironmentVariable("PLATTER_TEST_SEED") is { Length: > 0 } s ? int.Parse(s) : Random.Shared.Next();
        _output.WriteLine($"seed {seed} (replay with PLATTER_TEST_SEED={seed})");
        var random = new Random(seed);
        var (cache, gate) = Open();
        gate.WriteDelay = TimeSpan.FromMilliseconds(1);
        // The cache disk dies after a random number of write-back operations reached the backend.
        gate.CutAfterWrites = random.Next(1, 300);
        const int blocks = 512;
        var target = new List<int>();
        using (var h = cache.OpenHandle())
        {
            // Sequence-stamped writes of one to four blocks at random places, some of them runs that write-back merges.
            for (int seq = 1; seq <= 600; seq++)
            {
                int b = random.Next(blocks - 4);
                int n = random.Next(1, 5);
                var data = new byte[n * Block];
                for (int i = 0; i < n; i++) Stamp(seq).CopyTo(data, i * Block);
                await h.WriteAsync(b * (long)Block, data, fua: false);
                for (int i = 0; i < n; i++) target.Add(b + i);
                target.Add(-1); // end of write seq
            }
        }
        while (gate.Applied.Count < gate.CutAfterWrites) await Task.Delay(5);
        await cache.DisposeAsync();
        File.Delete(LogPath);

        AssertOrderedPrefix(target, blocks, 600, seed);
    }

    // Writes 1..n are sequence-stamped; target lists each write's blocks, each write ended by -1. The backend must hold
    // exactly "writes 1..k applied in order" for some k (k = its newest stamp).
    private void AssertOrderedPrefix(List<int> target, int blocks, int writes, int seed)
    {
        var writeBlocks = new List<List<int>>();
        var current = new List<int>();
        foreach (int t in target)
        {
            if (t < 0) { writeBlocks.Add(current); current = []; }
            else current.Add(t);
        }
        var image = new long[blocks];
        var bytes = BackendRead(0, blocks * Block);
        long k = 0;
        for (int b = 0; b < blocks; b++)
        {
            image[b] = BinaryPrimitives.ReadInt64LittleEndian(bytes.AsSpan(b * Block));
            Assert.True(bytes.AsSpan(b * Block, Block).SequenceEqual(Stamp(image[b])), $"seed {seed}: block {b} is torn");
            k = Math.Max(k, image[b]);
        }
        var expected = new long[blocks];
        for (int seq = 1; seq <= k; seq++)
            foreach (int b in writeBlocks[seq - 1]) expected[b] = seq;
        _output.WriteLine($"the backend holds writes 1..{k} of {writes}");
        for (int b = 0; b < blocks; b++)
            Assert.True(expected[b] == image[b], $"seed {seed}: with writes 1..{k} block {b} should hold {expected[b]} but holds {image[b]}");
    }

    // Sequence-stamped writes of one to four blocks at random places (overlapping often), some of them runs that
    // write-back merges; returns the blocks of each write, each write ended by -1.
    private static async Task<List<int>> WriteStampedAsync(IVolumeHandle h, Random random, int writes, int blocks)
    {
        var target = new List<int>();
        for (int seq = 1; seq <= writes; seq++)
        {
            int b = random.Next(blocks - 4);
            int n = random.Next(1, 5);
            var data = new byte[n * Block];
            for (int i = 0; i < n; i++) Stamp(seq).CopyTo(data, i * Block);
            await h.WriteAsync(b * (long)Block, data, fua: false);
            for (int i = 0; i < n; i++) target.Add(b + i);
            target.Add(-1);
        }
        return target;
    }

    [Fact]
    public async Task A_crash_then_a_cache_lost_while_replaying_still_leave_an_ordered_prefix()
    {
        // Write-back makes its head durable once per batch of operations on disjoint blocks, so after a crash replay
        // writes some operations to the backend a second time. The backend must stay an ordered prefix while it does:
        // the node crashes after a random number of write-back operations (the log copied as it is), the log replays
        // on restart, and the cache dies after a random number of the replay's operations.
        int seed = Environment.GetEnvironmentVariable("PLATTER_TEST_SEED") is { Length: > 0 } s ? int.Parse(s) : Random.Shared.Next();
        _output.WriteLine($"seed {seed} (replay with PLATTER_TEST_SEED={seed})");
        var random = new Random(seed);
        // Few blocks, so writes overlap often: a rewrite out of order would show.
        const int blocks = 64, writes = 600;
        var (cache, gate) = Open();
        gate.CutAfterWrites = random.Next(1, 300);
        List<int> target;
        gate.Pause();
        using (var h = cache.OpenHandle()) target = await WriteStampedAsync(h, random, writes, blocks);
        gate.Resume();
        // Write-back stops at the cut (the next operation finds the backend gone): then nothing more is written.
        while (cache.Status.Failure is null) await Task.Delay(5);
        // The crash: the log as the dying process left it.
        var crashed = Path.Combine(_dir, "crashed.log");
        RawFile.Copy(LogPath, crashed);
        await cache.DisposeAsync();
        _output.WriteLine($"crash after {gate.Applied.Count} write-back operations; head syncs {cache.Log.HeadSyncs}");

        var (again, gate2) = Open(logPath: crashed);
        gate2.CutAfterWrites = random.Next(1, 32); // within the operations replay writes a second time
        while (gate2.Applied.Count < gate2.CutAfterWrites && again.Status.LagRecords > 0 && again.Status.Failure is null) await Task.Delay(5);
        _output.WriteLine($"replayed {again.Replayed} records; the cache dies after {gate2.Applied.Count} replay operations");
        await again.DisposeAsync();
        File.Delete(crashed);
        AssertOrderedPrefix(target, blocks, writes, seed);
    }

    private static async Task WaitUntilAsync(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow.AddMinutes(1); // a guard against hanging, not a measurement
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "the condition never came true");
            await Task.Delay(1);
        }
    }

    [Fact]
    public async Task Writes_no_client_can_have_ordered_go_back_together_as_disjoint_writes()
    {
        var (cache, gate) = Open();
        await using (cache)
        {
            gate.Pause();
            gate.PauseAfterWrites = 1; // the first write passes, the next ones wait at the gate together
            using var h = cache.OpenHandle();
            var clock = (IClockedAcknowledgements)h;
            clock.AcknowledgeThroughClock();
            // A first write, which write-back takes alone and holds at the gate.
            await h.WriteAsync(500L * Block, Stamp(100), fua: false);
            await WaitUntilAsync(() => gate.InFlight >= 1);
            // A door that received these before it sent any reply: no client can have ordered them.
            for (int i = 0; i < 8; i++) await h.WriteAsync(i * 8L * Block, Stamp(i + 1), fua: false);
            await h.WriteAsync(100L * Block, Stamp(9), fua: false);
            await h.WriteAsync(101L * Block, Stamp(10), fua: false); // continues the one before: one backend write
            clock.AcknowledgementsLeaving();
            gate.Resume();
            await WaitUntilAsync(() => gate.InFlight >= 9); // the second wave: nine writes in flight together
            gate.Resume();
            await cache.DrainAsync();

            Assert.Equal(2, cache.Log.Waves);
            Assert.Equal(10, cache.Log.WaveOps);
            Assert.Equal(9, gate.MaxInFlight);
            Assert.Contains((100L * Block, 2 * Block), gate.Applied);
            for (int i = 0; i < 8; i++) Assert.Equal(Stamp(i + 1), BackendRead(i * 8L * Block, Block));
            Assert.Equal(Stamp(9), BackendRead(100L * Block, Block));
            Assert.Equal(Stamp(10), BackendRead(101L * Block, Block));
        }
    }

    [Fact]
    public async Task Writes_acknowledged_one_after_another_go_back_one_after_another()
    {
        var (cache, gate) = Open();
        gate.WriteDelay = TimeSpan.FromMilliseconds(1);
        await using (cache)
        {
            gate.Pause();
            using var h = cache.OpenHandle();
            var clock = (IClockedAcknowledgements)h;
            clock.AcknowledgeThroughClock();
            await h.WriteAsync(500L * Block, Stamp(100), fua: false);
            clock.AcknowledgementsLeaving();
            await WaitUntilAsync(() => gate.InFlight >= 1);
            // Each reply leaves before the next write arrives (a client at depth 1): each may depend on the one before.
            for (int i = 0; i < 8; i++)
            {
                await h.WriteAsync(i * 8L * Block, Stamp(i + 1), fua: false);
                clock.AcknowledgementsLeaving();
            }
            await h.WriteAsync(100L * Block, Stamp(9), fua: false);
            clock.AcknowledgementsLeaving();
            await h.WriteAsync(101L * Block, Stamp(10), fua: false); // continues it inside one atomic unit: joins it
            clock.AcknowledgementsLeaving();
            gate.Resume();
            await cache.DrainAsync();

            Assert.Equal(1, gate.MaxInFlight);
            Assert.Equal(10, cache.Log.Waves);
            Assert.Equal(10, cache.Log.WaveOps);
            Assert.Contains((100L * Block, 2 * Block), gate.Applied);
            // A handle whose caller does not move the clock is ordered the same way (the cache moves it on return).
            using var plain = cache.OpenHandle();
            gate.Pause();
            for (int i = 0; i < 8; i++) await plain.WriteAsync(i * 8L * Block, Stamp(i + 20), fua: false);
            gate.Resume();
            await cache.DrainAsync();
            Assert.Equal(1, gate.MaxInFlight);
            for (int i = 0; i < 8; i++) Assert.Equal(Stamp(i + 20), BackendRead(i * 8L * Block, Block));
        }
    }

    [Fact]
    public async Task A_lost_cache_during_concurrent_write_back_leaves_a_state_a_cacheless_disk_could_be_in()
    {
        // Batches of writes a door received before it sent a reply (any order among them is possible), each batch
        // acknowledged before the next arrives. Write-back sends each batch's writes together; the cache dies after
        // a random number of them reached the backend. The backend must hold every batch before some batch k, part of
        // batch k, and nothing after it: what a disk without a cache could hold after a power cut.
        int seed = Environment.GetEnvironmentVariable("PLATTER_TEST_SEED") is { Length: > 0 } s ? int.Parse(s) : Random.Shared.Next();
        _output.WriteLine($"seed {seed} (replay with PLATTER_TEST_SEED={seed})");
        var random = new Random(seed);
        const int blocks = 64, batches = 150;
        var (cache, gate) = Open();
        gate.WriteDelay = TimeSpan.FromMilliseconds(1);
        gate.CutAfterWrites = random.Next(1, 300);
        var writes = new List<(int First, int Count, int Batch)>(); // write seq = index + 1
        using (var h = cache.OpenHandle())
        {
            var clock = (IClockedAcknowledgements)h;
            clock.AcknowledgeThroughClock();
            bool refused = false;
            for (int b = 0; b < batches && !refused; b++)
            {
                int n = random.Next(1, 9);
                for (int j = 0; j < n; j++)
                {
                    int first = random.Next(blocks - 4), count = random.Next(1, 5);
                    int seq = writes.Count + 1;
                    var data = new byte[count * Block];
                    for (int i = 0; i < count; i++) Stamp(seq).CopyTo(data, i * Block);
                    try
                    {
                        await h.WriteAsync(first * (long)Block, data, fua: false);
                    }
                    catch (StorageException) when (gate.Applied.Count >= gate.CutAfterWrites)
                    {
                        // The cut came while the client still wrote: the cache refuses writes from then on. This write
                        // was not acknowledged, so it is not one the image may hold; the batches before it are checked.
                        refused = true;
                        break;
                    }
                    writes.Add((first, count, b));
                }
                clock.AcknowledgementsLeaving();
            }
        }
        while (gate.Applied.Count < gate.CutAfterWrites && cache.Status.LagRecords > 0 && cache.Status.Failure is null) await Task.Delay(5);
        _output.WriteLine($"cut after {gate.Applied.Count} backend writes, most in flight together {gate.MaxInFlight}, waves {cache.Log.Waves}");
        await cache.DisposeAsync();
        File.Delete(LogPath);

        var bytes = BackendRead(0, blocks * Block);
        var image = new long[blocks];
        int k = -1;
        for (int b = 0; b < blocks; b++)
        {
            image[b] = BinaryPrimitives.ReadInt64LittleEndian(bytes.AsSpan(b * Block));
            Assert.True(bytes.AsSpan(b * Block, Block).SequenceEqual(Stamp(image[b])), $"seed {seed}: block {b} is torn");
            if (image[b] > 0) k = Math.Max(k, writes[(int)image[b] - 1].Batch);
        }
        _output.WriteLine($"the backend holds batches before {k} and part of batch {k}");
        for (int b = 0; b < blocks; b++)
        {
            long before = 0; // the newest write of an earlier batch to this block
            for (int w = 0; w < writes.Count && writes[w].Batch < k; w++)
                if (b >= writes[w].First && b < writes[w].First + writes[w].Count) before = w + 1;
            bool fromBatchK = image[b] > before && writes[(int)image[b] - 1].Batch == k
                && b >= writes[(int)image[b] - 1].First && b < writes[(int)image[b] - 1].First + writes[(int)image[b] - 1].Count;
            Assert.True(image[b] == before || fromBatchK,
                $"seed {seed}: block {b} holds write {image[b]}, but with every batch before {k} it should hold {before} or a write of batch {k}");
        }
    }

    [Fact]
    public async Task A_flush_costs_one_fdatasync_and_no_head_sync()
    {
        var (cache, gate) = Open();
        await using (cache)
        {
            gate.Pause();
            using var h = cache.OpenHandle();
            for (int i = 0; i < 20; i++)
            {
                await h.WriteAsync(i * 2L * Block, Stamp(i + 1), fua: false);
                await h.FlushAsync();
            }
            await h.WriteAsync(64L * Block, Stamp(99), fua: true); // FUA: the same flush
            await h.FlushAsync(); // nothing new: no sync
            Assert.Equal(21, cache.Log.FlushSyncs);
            Assert.Equal(0, cache.Log.HeadSyncs); // write-back is held: nothing to record
            Assert.Equal(21, cache.Log.ConfirmedFlushSeq); // in the same sync
            gate.Resume();
            await cache.DrainAsync();
        }
    }

    [Fact]
    public async Task Write_back_syncs_its_head_once_per_batch_of_operations_on_disjoint_blocks()
    {
        // One record per operation (4 KiB atomic unit), no idle head sync: only an overlap ends a batch here.
        var (cache, gate) = Open(options: new WriteBackOptions { AtomicUnitBytes = Block, HeadIdleDelay = Timeout.InfiniteTimeSpan });
        await using (cache)
        {
            gate.Pause();
            using var h = cache.OpenHandle();
            for (int i = 0; i < 30; i++) await h.WriteAsync(i * 3L * Block, Stamp(i + 1), fua: false);
            await h.WriteAsync(0, Stamp(100), fua: false); // overlaps the first operation
            await h.WriteAsync(1L * Block, Stamp(101), fua: false); // disjoint again
            gate.Resume();
            await cache.DrainAsync();
            Assert.Equal(32, gate.Applied.Count);
            Assert.Equal(1, cache.Log.HeadSyncs); // before the overlapping operation, none before the others
            Assert.Equal(Stamp(100), BackendRead(0, Block));
            Assert.Equal(Stamp(101), BackendRead(Block, Block));
            for (int i = 1; i < 30; i++) Assert.Equal(Stamp(i + 1), BackendRead(i * 3L * Block, Block));
        }
    }

    [Fact]
    public async Task A_flipped_byte_in_a_flushed_record_is_refused_after_a_crash_right_after_the_flush()
    {
        var (cache, gate) = Open();
        gate.Pause();
        using (var h = cache.OpenHandle())
        {
            await h.WriteAsync(0, Stamp(1), fua: false);
            await h.WriteAsync(Block, Stamp(2), fua: false);
            await h.WriteAsync(2 * Block, Stamp(3), fua: true);
        }
        // SIGKILL now: the log as it is, never closed. Then the disk damages the second record's payload.
        var crashed = Path.Combine(_dir, "crashed.log");
        RawFile.Copy(LogPath, crashed);
        gate.Cut();
        await cache.DisposeAsync();
        RawFile.FlipByte(crashed, 4096 + (512 + Block) + 512 + 100);

        var refused = Assert.Throws<StorageException>(() => Open(logPath: crashed));
        _output.WriteLine(refused.Message);
        Assert.Equal(StorageError.IoError, refused.Error);
        Assert.Contains("2 flushed write record(s)", refused.Message);
        Assert.Equal(new byte[3 * Block], BackendRead(0, 3 * Block));
    }

    [Fact]
    public async Task A_flipped_byte_in_the_log_is_refused_at_open_and_never_written_back()
    {
        var (cache, gate) = Open();
        gate.Pause();
        using (var h = cache.OpenHandle())
        {
            await h.WriteAsync(0, Stamp(1), fua: false);
            await h.WriteAsync(Block, Stamp(2), fua: false);
            await h.WriteAsync(2 * Block, Stamp(3), fua: true);
        }
        gate.Cut();
        await cache.DisposeAsync();

        // Flip one byte in the second record's payload: records are a 512-byte header and a 4 KiB block each, from 4096.
        long secondPayload = 4096 + (512 + Block) + 512;
        using (var f = File.Open(LogPath, FileMode.Open, FileAccess.ReadWrite))
        {
            f.Position = secondPayload + 100;
            int b = f.ReadByte();
            f.Position = secondPayload + 100;
            f.WriteByte((byte)(b ^ 0x40));
        }

        var refused = Assert.Throws<StorageException>(() => Open());
        _output.WriteLine(refused.Message);
        Assert.Equal(StorageError.IoError, refused.Error);
        Assert.Contains("damaged", refused.Message);
        Assert.Contains("fails its checksum", refused.Message);
        Assert.Equal(new byte[3 * Block], BackendRead(0, 3 * Block)); // nothing written back

        // Accepting the loss serves the intact prefix (record 1) and never the damaged record or anything after it.
        var (accepted, _) = Open(acceptLoss: true);
        await using (accepted)
        {
            Assert.NotNull(accepted.Damage);
            await accepted.DrainAsync();
            using var h = accepted.OpenHandle();
            Assert.Equal(Stamp(1), await ReadAsync(h, 0, Block));
            Assert.Equal(new byte[Block], await ReadAsync(h, Block, Block));
            Assert.Equal(new byte[Block], await ReadAsync(h, 2 * Block, Block));
        }
        Assert.Equal(Stamp(1), BackendRead(0, Block));
        Assert.Equal(new byte[2 * Block], BackendRead(Block, 2 * Block));
    }

    [Fact]
    public async Task A_block_damaged_while_serving_is_an_error_not_data_and_stops_write_back()
    {
        var (cache, gate) = Open();
        await using (cache)
        {
            gate.Pause();
            using var h = cache.OpenHandle();
            // Write-back picks up the first record at once and waits at the gate with it; the second (in another 4 MiB
            // unit, so never merged with the first) waits in the log.
            const long second = 8L << 20;
            await h.WriteAsync(0, Stamp(7), fua: true);
            await h.WriteAsync(second, Stamp(8), fua: true);
            RawFile.FlipByte(LogPath, 4096 + (512 + Block) + 512 + 5);
            var e = await Assert.ThrowsAsync<StorageException>(async () => await ReadAsync(h, second, Block));
            Assert.Equal(StorageError.ChecksumMismatch, e.Error);
            Assert.Equal(Stamp(7), await ReadAsync(h, 0, Block));
            gate.Resume();
            await Assert.ThrowsAsync<StorageException>(async () => await cache.DrainAsync());
            Assert.Contains("damaged", cache.Status.Failure);
            Assert.Equal(Stamp(7), BackendRead(0, Block));
            Assert.Equal(new byte[Block], BackendRead(second, Block));
            // A stopped log takes no more writes: their order could no longer be kept.
            await Assert.ThrowsAsync<StorageException>(async () => await h.WriteAsync(2 * Block, Stamp(9), fua: false));
        }
    }

    [Fact]
    public async Task A_writer_faster_than_write_back_waits_and_the_log_stays_in_its_size()
    {
        var (cache, gate) = Open(logBytes: 4L << 20);
        await using (cache)
        {
            gate.WriteDelay = TimeSpan.FromMilliseconds(2);
            using var h = cache.OpenHandle();
            long maxUsed = 0;
            for (int i = 0; i < 2048; i++) // 8 MiB through a 4 MiB log
            {
                await h.WriteAsync(i * (long)Block, Stamp(i + 1), fua: false);
                maxUsed = Math.Max(maxUsed, cache.Status.LogUsedBytes);
                Assert.True(cache.Status.LogUsedBytes <= cache.Status.LogCapacityBytes);
            }
            await h.FlushAsync();
            await cache.DrainAsync();
            _output.WriteLine($"most of the log in use: {maxUsed} of {cache.Status.LogCapacityBytes}");
            Assert.True(maxUsed > cache.Status.LogCapacityBytes / 2, "the test never filled the log, so it showed no back-pressure");
            for (int i = 0; i < 2048; i += 97) Assert.Equal(Stamp(i + 1), BackendRead(i * (long)Block, Block));
        }
    }

    [Fact]
    public async Task Trim_is_ordered_after_earlier_writes()
    {
        var (cache, _) = Open();
        await using (cache)
        {
            using var h = cache.OpenHandle();
            await h.WriteAsync(0, Stamp(1, 64 * 1024), fua: false);
            await h.TrimAsync(0, 32 * 1024, fua: false);
            await h.WriteAsync(4096, Stamp(2), fua: false);
            var expected = new byte[64 * 1024];
            Stamp(1, 64 * 1024).AsSpan(32 * 1024).CopyTo(expected.AsSpan(32 * 1024));
            Stamp(2).CopyTo(expected, 4096);
            Assert.Equal(expected, await ReadAsync(h, 0, 64 * 1024));
            await cache.DrainAsync();
            Assert.Equal(expected, BackendRead(0, 64 * 1024));
        }
    }

    [Fact]
    public async Task A_log_is_only_ever_opened_for_its_own_volume()
    {
        var (cache, _) = Open();
        await cache.DisposeAsync();
        using var other = _store.OpenVolume("vm1");
        var e = Assert.Throws<StorageException>(() => WriteBackVolume.Open(LogPath, "store-test/other", other, new WriteBackOptions()));
        Assert.Equal(StorageError.BadStore, e.Error);
        Assert.Contains("belongs to volume", e.Message);
    }
}
