using Platter.Storage.Tests.Support;
using Xunit;
using Xunit.Abstractions;

namespace Platter.Storage.Tests;

/// <summary>
/// Failures below the engine (EIO on write, read and fsync, torn writes, ENOSPC, a failed KV commit):
/// the caller sees a clear error, and nothing that was already durable is lost.
/// </summary>
public sealed class FaultInjectionTests(ITestOutputHelper output) : IDisposable
{
    private const int B = Blocks.Size;
    private const long MiB = 1 << 20;
    private readonly TempDirectory _dir = new();
    private readonly FaultyStore _faults = new();

    public void Dispose() => _dir.Dispose();

    /// <summary>Tag 1 in blocks 0..63 of "v", flushed: the durable baseline every test checks after its fault.</summary>
    private (VolumeStore Store, Volume Vol) OpenWithBaseline(long dataBytesMax = long.MaxValue, long growth = MiB)
    {
        var store = _faults.Open(_dir.Path, dataGrowthBytes: growth, dataBytesMax: dataBytesMax);
        store.CreateVolume("v", 4 * MiB);
        var vol = store.OpenVolume("v");
        for (int b = 0; b < 64; b++) vol.Write(b * (long)B, Blocks.Pattern(1, b));
        vol.Flush();
        return (store, vol);
    }

    private static void CloseQuietly(VolumeStore store, Volume? vol)
    {
        // A failed store may report its failure again on close; what matters is what the next open finds.
        try { vol?.Dispose(); } catch (StorageException) { }
        try { store.Dispose(); } catch (StorageException) { }
    }

    /// <summary>Reopens without faults and checks: blocks 0..63 hold tag 1, except <paramref name="maybeNew"/> which may hold tag 2 instead.</summary>
    private void ReopenAndVerifyBaseline(ISet<long> maybeNew, ISet<long>? mustBeNew = null, string context = "", bool restIsZeros = true)
    {
        var store = _faults.Open(_dir.Path);
        var vol = store.OpenVolume("v");
        var recovered = new Dictionary<long, byte[]>();
        for (long b = 0; b < 64; b++)
        {
            var actual = vol.ReadAll(b * B, B);
            bool isOld = actual.AsSpan().SequenceEqual(Blocks.Pattern(1, b));
            bool isNew = actual.AsSpan().SequenceEqual(Blocks.Pattern(2, b));
            if (mustBeNew?.Contains(b) == true)
                Assert.True(isNew, $"{context}: block {b} was flushed with tag 2 but reads {Blocks.Describe(actual)}");
            else if (maybeNew.Contains(b))
                Assert.True(isOld || isNew, $"{context}: block {b} must be old or new, reads {Blocks.Describe(actual)}");
            else
                Assert.True(isOld, $"{context}: durable block {b} was lost: reads {Blocks.Describe(actual)}");
            recovered[b] = actual;
        }
        if (restIsZeros)
            Assert.True(Blocks.IsZero(vol.ReadAll(64 * B, (int)(4 * MiB) - 64 * B)), $"{context}: never-written space must read zeros");
        StoreChecks.AssertConsistent(store, $"{context} after reopen");

        // The store works again, and what it writes now survives a crash too: the journal goes on cleanly
        // after whatever the fault left at its end.
        vol.Write(100 * B, Blocks.Pattern(3, 100));
        vol.Flush();
        Assert.Equal(Blocks.Pattern(3, 100), vol.ReadAll(100 * B, B));
        _faults.Crash(store, vol);
        using (store = _faults.Open(_dir.Path))
        using (vol = store.OpenVolume("v"))
        {
            Assert.True(Blocks.Pattern(3, 100).AsSpan().SequenceEqual(vol.ReadAll(100 * B, B)), $"{context}: a write flushed after recovery was lost in the next crash");
            for (long b = 0; b < 64; b++)
                Assert.True(recovered[b].AsSpan().SequenceEqual(vol.ReadAll(b * B, B)), $"{context}: block {b} changed between two recoveries");
            StoreChecks.AssertConsistent(store, $"{context} after the second recovery");
        }
    }

    private static void WriteTag2(Volume vol, int firstBlock, int blocks)
    {
        var buf = new byte[blocks * B];
        for (int i = 0; i < blocks; i++) Blocks.FillPattern(buf.AsSpan(i * B, B), 2, firstBlock + i);
        vol.Write(firstBlock * (long)B, buf);
    }

    private static void AssertOldOrNew(Volume vol, int firstBlock, int blocks, string context)
    {
        for (int b = firstBlock; b < firstBlock + blocks; b++)
        {
            var actual = vol.ReadAll(b * (long)B, B);
            Assert.True(actual.AsSpan().SequenceEqual(Blocks.Pattern(1, b)) || actual.AsSpan().SequenceEqual(Blocks.Pattern(2, b)),
                $"{context}: block {b} reads {Blocks.Describe(actual)}, neither old nor new");
        }
    }

    /// <summary>After a failed data write the store may go on or refuse writes; either way the next write says which, clearly.</summary>
    private static void AssertWritesWorkOrStoreFailed(Volume vol, string context)
    {
        try
        {
            vol.Write(200 * B, Blocks.Pattern(4, 200));
            Assert.Equal(Blocks.Pattern(4, 200), vol.ReadAll(200 * B, B));
        }
        catch (StorageException e) when (e.Error == StorageError.StoreFailed) { }
        catch (StorageException e)
        {
            Assert.Fail($"{context}: a later write failed with {e.Error}: {e.Message}");
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Data_write_error_or_torn_write_fails_the_write_and_loses_nothing_durable(bool torn)
    {
        var (store, vol) = OpenWithBaseline();
        _faults.AimAtData();
        if (torn) _faults.Data!.TornWrites = 1; else _faults.Data!.FailWrites = 1;
        var e = StorageAssert.Throws(() => WriteTag2(vol, 0, 16), StorageError.IoError);
        output.WriteLine($"caller saw: {e.Message}");
        Assert.Equal(1, _faults.Data.Injected);
        // The failed write was not acknowledged: each block reads old or new, never the torn half.
        AssertOldOrNew(vol, 0, 16, "after the failed write");
        AssertOldOrNew(vol, 16, 48, "untouched blocks");
        Assert.True(store.Counters.IoErrors >= 1, "the I/O error must be counted");
        AssertWritesWorkOrStoreFailed(vol, "after the failed write");
        // An unaligned write (read-modify-write) over the same blocks fails the same way.
        if (torn) _faults.Data.TornWrites = 1; else _faults.Data.FailWrites = 1;
        StorageAssert.Throws(() => vol.Write(5 * B + 10, new byte[100]), StorageError.IoError, StorageError.StoreFailed);
        CloseQuietly(store, vol);
        ReopenAndVerifyBaseline(new HashSet<long>(Enumerable.Range(0, 16).Select(i => (long)i)), context: torn ? "torn write" : "EIO on write", restIsZeros: false);
    }

    [Fact]
    public void Data_read_error_is_an_io_error_for_that_read_only()
    {
        var (store, vol) = OpenWithBaseline();
        CloseQuietly(store, vol);
        // Reopen so that the blocks come from the device, not from anything the engine kept in memory.
        store = _faults.Open(_dir.Path);
        vol = store.OpenVolume("v");
        _faults.AimAtData();
        _faults.Data!.FailReads = 1;
        StorageAssert.Throws(() => vol.ReadAll(7 * B, B), StorageError.IoError);
        Assert.Equal(1, _faults.Data.Injected);
        Assert.Equal(Blocks.Pattern(1, 7), vol.ReadAll(7 * B, B));
        Assert.True(store.Counters.IoErrors >= 1);

        // A read-modify-write whose read fails leaves the block as it was.
        var reads = _faults.Data.Reads;
        _faults.Data.FailReads = 1;
        StorageAssert.Throws(() => vol.Write(9 * B + 1, new byte[] { 0xFF }), StorageError.IoError);
        Assert.True(_faults.Data.Reads > reads);
        Assert.Equal(Blocks.Pattern(1, 9), vol.ReadAll(9 * B, B));

        // A read failure does not fail the store: writes and flushes go on.
        vol.Write(10 * B, Blocks.Pattern(2, 10));
        vol.Flush();
        CloseQuietly(store, vol);
        ReopenAndVerifyBaseline(new HashSet<long>(), new HashSet<long> { 10 }, "EIO on read");
    }

    public enum SyncFault { DataSync, JournalWrite, JournalTornWrite }

    [Theory]
    [InlineData(SyncFault.DataSync)]
    [InlineData(SyncFault.JournalWrite)]
    [InlineData(SyncFault.JournalTornWrite)]
    public void Failed_flush_fails_the_store_until_reopen_and_keeps_durable_data(SyncFault fault)
    {
        var (store, vol) = OpenWithBaseline();
        WriteTag2(vol, 0, 8);
        vol.Flush();                     // blocks 0..7: tag 2, durable
        WriteTag2(vol, 8, 8);            // blocks 8..15: tag 2, acknowledged, not flushed
        var dev = _faults.Data!;
        _faults.AimAtJournal();
        switch (fault)
        {
            case SyncFault.DataSync: dev.FailSyncs = 1; break;
            case SyncFault.JournalWrite: dev.FailWrites = 1; break;
            case SyncFault.JournalTornWrite: dev.TornPrefixBytes = 40; dev.TornWrites = 1; break;
        }
        var e = StorageAssert.ThrowsFlush(() => vol.FlushAsync(), StorageError.IoError, StorageError.StoreFailed);
        output.WriteLine($"flush saw: {e.Error}: {e.Message}");
        Assert.Equal(1, dev.Injected);

        // Refuses every change until reopened; reads keep working.
        StorageAssert.Throws(() => vol.Write(20 * B, new byte[B]), StorageError.StoreFailed);
        StorageAssert.Throws(() => vol.Trim(0, B), StorageError.StoreFailed);
        StorageAssert.Throws(() => vol.WriteZeroes(0, B), StorageError.StoreFailed);
        StorageAssert.ThrowsFlush(() => store.FlushAsync(), StorageError.StoreFailed);
        StorageAssert.Throws(() => store.CreateVolume("w", MiB), StorageError.StoreFailed);
        Assert.Equal(Blocks.Pattern(2, 3), vol.ReadAll(3 * B, B));
        AssertOldOrNew(vol, 8, 8, "after the failed flush");
        Assert.Equal(Blocks.Pattern(1, 30), vol.ReadAll(30 * B, B));
        Assert.Single(store.ListVolumes());

        CloseQuietly(store, vol);
        ReopenAndVerifyBaseline(
            maybeNew: new HashSet<long>(Enumerable.Range(8, 8).Select(i => (long)i)),
            mustBeNew: new HashSet<long>(Enumerable.Range(0, 8).Select(i => (long)i)),
            context: fault.ToString());
    }

    [Fact]
    public void Failed_checkpoint_fails_the_store_and_loses_no_flushed_write()
    {
        var (store, vol) = OpenWithBaseline();
        WriteTag2(vol, 0, 32);
        vol.Flush();                 // durable in the journal, not yet in the KV store
        WriteTag2(vol, 32, 8);       // acknowledged only
        _faults.FailCheckpoints = true;
        // The checkpoint the check (and the CLI's offline check) runs first: the KV commit fails.
        StorageAssert.Throws(() => store.Check(verifyChecksums: false), StorageError.StoreFailed, StorageError.IoError);
        Assert.Equal(1, _faults.CheckpointsFailed);
        StorageAssert.Throws(() => vol.Write(50 * B, new byte[B]), StorageError.StoreFailed);
        StorageAssert.ThrowsFlush(() => vol.FlushAsync(), StorageError.StoreFailed);
        Assert.Equal(Blocks.Pattern(2, 5), vol.ReadAll(5 * B, B));
        CloseQuietly(store, vol);
        ReopenAndVerifyBaseline(
            maybeNew: new HashSet<long>(Enumerable.Range(32, 8).Select(i => (long)i)),
            mustBeNew: new HashSet<long>(Enumerable.Range(0, 32).Select(i => (long)i)),
            context: "failed KV checkpoint");
    }

    [Fact]
    public void Failed_checkpoint_on_close_loses_no_flushed_write()
    {
        var (store, vol) = OpenWithBaseline();
        WriteTag2(vol, 0, 64);
        vol.Flush();
        _faults.FailCheckpoints = true;
        CloseQuietly(store, vol);    // close checkpoints: it fails, the journal still has every batch
        Assert.True(_faults.CheckpointsFailed > 0, "closing the store ran no checkpoint: the fault was never exercised");
        ReopenAndVerifyBaseline(new HashSet<long>(), new HashSet<long>(Enumerable.Range(0, 64).Select(i => (long)i)), "failed checkpoint on close");
    }

    [Fact]
    public void Quota_reached_is_no_space_for_that_write_only_and_space_comes_back_after_trim()
    {
        const long quota = FaultyStore.JournalBytes + 12 * MiB;
        var (store, vol) = OpenWithBaseline(dataBytesMax: quota, growth: 256 * 1024);
        store.CreateVolume("big", 32 * MiB);
        using var big = store.OpenVolume("big");
        int written = FillUntilNoSpace(big, tag: 5, chunksMax: 512, out var full);
        Assert.NotNull(full);
        Assert.True(full.Error == StorageError.NoSpace, $"a full quota must be NoSpace, got {full.Error}: {full.Message}");
        Assert.InRange(written * (long)Chunk, 4 * MiB, quota);
        output.WriteLine($"full after {written} chunks: {full.Message}; usage {store.GetUsage()}");
        Assert.True(store.GetUsage().DataFileBytes <= quota, $"{store.GetUsage()}");

        // Only that write failed: the store flushes, and everything acknowledged reads back.
        big.Flush();
        for (int i = 0; i < written; i++)
            Assert.Equal(Blocks.Pattern(5, i * (Chunk / B)), big.ReadAll(i * (long)Chunk, B));
        for (int b = 0; b < 64; b++) Assert.Equal(Blocks.Pattern(1, b), vol.ReadAll(b * (long)B, B));
        StorageAssert.Throws(() => big.Write(written * (long)Chunk, new byte[Chunk]), StorageError.NoSpace);

        // Freeing space makes writes possible again.
        big.Trim(0, written * (long)Chunk / 2);
        big.Flush();
        big.Write(written * (long)Chunk, Blocks.Pattern(6, 0));
        Assert.Equal(Blocks.Pattern(6, 0), big.ReadAll(written * (long)Chunk, B));
        store.Flush();
        StoreChecks.AssertConsistent(store, "after ENOSPC");
        CloseQuietly(store, vol);
        ReopenAndVerifyBaseline(new HashSet<long>(), context: "quota");
    }

    [Fact]
    public void Free_space_under_the_quota_is_usable_by_every_volume()
    {
        // 2 MiB of data under the quota (after the journal region), 256 KiB used by "v": another volume must get most of the rest.
        var (store, vol) = OpenWithBaseline(dataBytesMax: FaultyStore.JournalBytes + 2 * MiB, growth: 256 * 1024);
        output.WriteLine($"usage with 256 KiB written: {store.GetUsage()}");
        store.CreateVolume("other", 16 * MiB);
        using var other = store.OpenVolume("other");
        int written = FillUntilNoSpace(other, tag: 7, chunksMax: 64, out var full);
        output.WriteLine($"'other' took {written} chunks of 64 KiB before {full?.Error}; usage {store.GetUsage()}");
        Assert.True(written * (long)Chunk >= MiB,
            $"only {written * (long)Chunk} bytes fit in another volume while {2 * MiB - 64 * B} bytes of the quota are unused ({full?.Message})");
        CloseQuietly(store, vol);
    }

    private const int Chunk = 64 * 1024;

    private static int FillUntilNoSpace(Volume v, int tag, int chunksMax, out StorageException? full)
    {
        full = null;
        var data = new byte[Chunk];
        for (int i = 0; i < chunksMax; i++)
        {
            for (int k = 0; k < Chunk / B; k++) Blocks.FillPattern(data.AsSpan(k * B, B), tag, i * (Chunk / B) + k);
            try { v.Write(i * (long)Chunk, data); }
            catch (StorageException e) { full = e; return i; }
        }
        return chunksMax;
    }

    [Fact]
    public void Enospc_from_the_device_is_no_space_not_an_io_error()
    {
        var (store, vol) = OpenWithBaseline(growth: 256 * 1024);
        store.CreateVolume("big", 64 * MiB);
        using var big = store.OpenVolume("big");
        big.Write(0, Blocks.Pattern(5, 0)); // "big" now has space of its own; what follows needs the file to grow
        _faults.Data!.FailGrowsNoSpace = int.MaxValue;
        int written = FillUntilNoSpace(big, tag: 5, chunksMax: 256, out var full);
        Assert.NotNull(full);
        Assert.True(full.Error == StorageError.NoSpace, $"ENOSPC from the device must be NoSpace, got {full.Error}: {full.Message}");
        Assert.True(_faults.Data.Injected > 0);
        output.WriteLine($"full after {written} chunks: {full.Message}");
        big.Flush(); // not a failed store
        for (int i = 0; i < written; i++)
            Assert.Equal(Blocks.Pattern(5, i * (Chunk / B)), big.ReadAll(i * (long)Chunk, B));
        _faults.Data.FailGrowsNoSpace = 0;
        big.Write(written * (long)Chunk, Blocks.Pattern(8, 1000)); // the disk has room again
        Assert.Equal(Blocks.Pattern(8, 1000), big.ReadAll(written * (long)Chunk, B));
        big.Flush();
        CloseQuietly(store, vol);
        ReopenAndVerifyBaseline(new HashSet<long>(), context: "device ENOSPC");
    }
}
