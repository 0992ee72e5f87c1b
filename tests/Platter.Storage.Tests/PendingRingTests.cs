using Platter.Storage.Tests.Support;
using Xunit;

namespace Platter.Storage.Tests;

/// <summary>
/// The pending-operation ring: what a process crash leaves of acknowledged writes that were never flushed. Each test
/// "crashes" in process (<see cref="FaultyStore.Crash"/>: nothing more reaches the data file, the final commit fails),
/// which leaves on disk what a SIGKILL would; the committer's timer is off (an hour), so nothing is committed unless
/// the test or a bound asks for it. The Crash tests do the same with real SIGKILLs.
/// </summary>
public sealed class PendingRingTests : IDisposable
{
    private const int B = Blocks.Size;
    private static readonly TimeSpan Hour = TimeSpan.FromHours(1);
    private const string AnotherBoot = "00000000-0000-4000-8000-000000000000";
    private readonly TempDirectory _dir = new();

    [Fact]
    public void Acknowledged_writes_and_trims_survive_a_process_crash_without_a_flush()
    {
        var faults = new FaultyStore();
        WriteUnflushed(faults);

        var log = new ListLoggerFactory();
        using var store = faults.Open(_dir.Path, commitIntervalMax: Hour, loggerFactory: log);
        using var v = store.OpenVolume("v");
        Assert.True(Blocks.IsZero(v.ReadAll(0, B)), "the trimmed block");
        Assert.True(Blocks.IsZero(v.ReadAll(B, B)), "the zeroed block");
        for (int b = 2; b < 4; b++) Assert.Equal(Blocks.Pattern(1, b), v.ReadAll(b * B, B));
        for (int b = 4; b < 12; b++) Assert.Equal(Blocks.Pattern(2, b), v.ReadAll(b * B, B));
        Assert.Equal(new byte[] { 1, 2, 3 }, v.ReadAll(20 * B, B)[100..103]);
        Assert.Contains(log.Lines, l => l.Contains("Recovered 11 acknowledged but uncommitted operations of 1 volumes"));
        Assert.True(store.Check(verifyChecksums: true).Ok);
    }

    [Fact]
    public void After_a_reboot_the_ring_is_ignored_and_the_store_holds_what_was_flushed()
    {
        var faults = new FaultyStore();
        WriteUnflushed(faults);

        // A power cut or a reboot loses the page cache the ring's records point into: only flushed writes count.
        var log = new ListLoggerFactory();
        using var store = faults.Open(_dir.Path, commitIntervalMax: Hour, bootId: AnotherBoot, loggerFactory: log);
        using var v = store.OpenVolume("v");
        for (int b = 0; b < 8; b++) Assert.Equal(Blocks.Pattern(1, b), v.ReadAll(b * B, B));
        for (int b = 8; b < 12; b++) Assert.True(Blocks.IsZero(v.ReadAll(b * B, B)), $"block {b} was never flushed");
        Assert.Contains(log.Lines, l => l.Contains("the machine has restarted since it was written"));
        Assert.True(store.Check(verifyChecksums: true).Ok);
    }

    [Fact]
    public void After_the_store_failed_the_ring_is_not_replayed_and_the_store_holds_what_it_committed()
    {
        var faults = new FaultyStore();
        var store = faults.Open(_dir.Path, commitIntervalMax: Hour);
        store.CreateVolume("v", 64 * B);
        var v = store.OpenVolume("v");
        v.Write(0, Blocks.Pattern(1, 0));
        v.Flush();
        v.Write(B, Blocks.Pattern(1, 1)); // acknowledged, not flushed
        // The journal write fails: the store fails (as after a failed fdatasync, when the page cache may hold data the
        // disk lost), so nothing it had not committed may come back, though the ring holds the write.
        faults.AimAtJournal();
        faults.Data!.FailWrites = 1;
        StorageAssert.ThrowsFlush(() => v.FlushAsync(), StorageError.StoreFailed);
        try { v.Dispose(); store.Dispose(); } catch (StorageException) { }

        var log = new ListLoggerFactory();
        using var reopened = faults.Open(_dir.Path, commitIntervalMax: Hour, loggerFactory: log);
        using var r = reopened.OpenVolume("v");
        Assert.Equal(Blocks.Pattern(1, 0), r.ReadAll(0, B));
        Assert.True(Blocks.IsZero(r.ReadAll(B, B)), "an uncommitted write of a failed store came back");
        Assert.Contains(log.Lines, l => l.Contains("the store had failed"));
        Assert.True(reopened.Check(verifyChecksums: true).Ok);
    }

    [Fact]
    public void Writes_after_a_snapshot_come_back_in_the_volume_and_the_snapshot_keeps_what_it_froze()
    {
        var faults = new FaultyStore();
        var store = faults.Open(_dir.Path, commitIntervalMax: Hour);
        store.CreateVolume("v", 64 * B);
        var v = store.OpenVolume("v");
        for (int b = 0; b < 4; b++) v.Write(b * B, Blocks.Pattern(5, b));
        store.CreateSnapshot("v", "s"); // commits: the writes before it are journaled with it
        for (int b = 0; b < 2; b++) v.Write(b * B, Blocks.Pattern(6, b)); // to the volume's new layer, never committed
        faults.Crash(store, v);

        using var reopened = faults.Open(_dir.Path, commitIntervalMax: Hour);
        using var r = reopened.OpenVolume("v");
        using var s = reopened.OpenSnapshot("v", "s");
        for (int b = 0; b < 4; b++)
        {
            Assert.Equal(Blocks.Pattern(b < 2 ? 6 : 5, b), r.ReadAll(b * B, B));
            Assert.Equal(Blocks.Pattern(5, b), s.ReadAll(b * B, B));
        }
        Assert.True(reopened.Check(verifyChecksums: true).Ok);
    }

    [Fact]
    public void A_record_whose_data_is_damaged_stops_that_volume_s_replay_and_no_other()
    {
        var faults = new FaultyStore();
        var store = faults.Open(_dir.Path, commitIntervalMax: Hour);
        store.CreateVolume("a", 64 * B);
        store.CreateVolume("w", 64 * B);
        var a = store.OpenVolume("a");
        var w = store.OpenVolume("w");
        for (int b = 0; b < 4; b++) a.Write(b * B, Blocks.Pattern(7, b));
        w.Write(0, Blocks.Pattern(8, 0));
        faults.Crash(store, a, w);

        // The first write of "a" no longer matches its CRC (as if the page had never been written): its record and
        // every later one of "a" are dropped, so "a" never holds a later write without an earlier one.
        string dataFile = Path.Combine(_dir.Path, VolumeStore.DataFileName);
        var target = Blocks.Pattern(7, 0);
        using (var f = new FileStream(dataFile, FileMode.Open, FileAccess.ReadWrite))
        {
            var block = new byte[B];
            long found = -1;
            for (long off = 0; off + B <= f.Length && found < 0; off += B)
            {
                f.Position = off;
                f.ReadExactly(block);
                if (block.AsSpan().SequenceEqual(target)) found = off;
            }
            Assert.True(found >= 0, "the first write's data is not in the data file");
            f.Position = found + 9;
            f.WriteByte(0x5A);
        }

        var log = new ListLoggerFactory();
        using var reopened = faults.Open(_dir.Path, commitIntervalMax: Hour, loggerFactory: log);
        using var ra = reopened.OpenVolume("a");
        using var rw = reopened.OpenVolume("w");
        for (int b = 0; b < 4; b++) Assert.True(Blocks.IsZero(ra.ReadAll(b * B, B)), $"block {b} of 'a' came back after an earlier write was dropped");
        Assert.Equal(Blocks.Pattern(8, 0), rw.ReadAll(0, B));
        Assert.Contains(log.Lines, l => l.Contains("Volume 'a': replayed 0 of the 4") && l.Contains("does not match its CRC"));
        Assert.True(reopened.Check(verifyChecksums: true).Ok);
    }

    [Fact]
    public void Many_times_the_ring_s_size_of_writes_between_crashes_all_come_back()
    {
        // Test stores have a 1 MiB journal, so a 512 KiB ring: 30,000 single-block writes are ~2.4 MB of records, so
        // the ring wraps several times, and writers wait for commits that reclaim it.
        const int VolumeBlocks = 256;
        var faults = new FaultyStore();
        var store = faults.Open(_dir.Path, commitIntervalMax: Hour);
        store.CreateVolume("v", VolumeBlocks * (long)B);
        var v = store.OpenVolume("v");
        var rng = new Random(42);
        var last = new int[VolumeBlocks];
        var block = new byte[B];
        for (int i = 1; i <= 30_000; i++)
        {
            int b = rng.Next(VolumeBlocks);
            Blocks.FillPattern(block, i, b);
            v.Write((long)b * B, block);
            last[b] = i;
        }
        Assert.True(store.Counters.Commits > 3, $"only {store.Counters.Commits} commits: the ring never wrapped");
        faults.Crash(store, v);

        using var reopened = faults.Open(_dir.Path, commitIntervalMax: Hour);
        using var r = reopened.OpenVolume("v");
        for (int b = 0; b < VolumeBlocks; b++)
        {
            var actual = r.ReadAll((long)b * B, B);
            if (last[b] == 0) Assert.True(Blocks.IsZero(actual), $"block {b} was never written");
            else Assert.True(actual.AsSpan().SequenceEqual(Blocks.Pattern(last[b], b)), $"block {b}: expected write {last[b]}, read {Blocks.Describe(actual)}");
        }
        Assert.True(reopened.Check(verifyChecksums: true).Ok);
    }

    // Volume "v": blocks 0-7 written and flushed, then acknowledged but never flushed: blocks 4-11 overwritten or
    // written, a partial write into block 20, a trim of block 0 and write-zeroes over block 1. Then a crash.
    private void WriteUnflushed(FaultyStore faults)
    {
        var store = faults.Open(_dir.Path, commitIntervalMax: Hour);
        store.CreateVolume("v", 64 * B);
        var v = store.OpenVolume("v");
        for (int b = 0; b < 8; b++) v.Write(b * B, Blocks.Pattern(1, b));
        v.Flush();
        for (int b = 4; b < 12; b++) v.Write(b * B, Blocks.Pattern(2, b));
        v.Write(20 * B + 100, new byte[] { 1, 2, 3 });
        v.Trim(0, B);
        v.WriteZeroes(B, B);
        faults.Crash(store, v);
    }

    public void Dispose() => _dir.Dispose();
}
