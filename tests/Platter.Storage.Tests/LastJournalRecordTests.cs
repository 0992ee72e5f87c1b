using Platter.Storage.Tests.Support;
using Xunit;

namespace Platter.Storage.Tests;

/// <summary>
/// Open judges whether the newest journal record's sync completed by the checksums of the blocks it maps. A block
/// the record maps and also lets go of (a write to a volume the same record deletes) is freed once the record is
/// durable, and the engine may write new data there before the next commit: such a block says nothing about the
/// record, and must not get an acknowledged delete dropped after a crash (the SnapshotCrashTests reclaim loop found
/// a deleted clone back after a SIGKILL this way).
/// </summary>
public sealed class LastJournalRecordTests : IDisposable
{
    private const int B = Blocks.Size;
    private readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    [Fact]
    public void A_delete_in_the_last_journal_record_stays_deleted_after_a_crash_once_its_freed_blocks_hold_other_data()
    {
        var faults = new FaultyStore();
        // No timed commit: the clone's writes and its delete go into one journal record.
        var store = faults.Open(_dir.Path, commitIntervalMax: TimeSpan.FromHours(1));
        store.CreateVolume("vm", 1 << 20);
        using (var vm = store.OpenVolume("vm"))
        {
            for (long b = 0; b < 256; b++) vm.Write(b * B, Blocks.Pattern(1, b));
            vm.Flush();
        }
        store.CreateSnapshot("vm", "s");
        store.CloneSnapshot("vm", "s", "scratch");
        store.Checkpoint(); // the clone is in LMDB; what follows lives only in the journal
        var scratch = store.OpenVolume("scratch");
        for (long b = 0; b < 16; b++) scratch.Write(b * B, Blocks.Pattern(99, b));
        store.DeleteVolume("scratch"); // acknowledged: durable when it returns
        faults.Crash(store, scratch);

        // The engine may hand the deleted clone's blocks to the next writes: play that, as a kill would leave it.
        int reused = 0;
        using (var f = new FileStream(Path.Combine(_dir.Path, "data"), FileMode.Open, FileAccess.ReadWrite))
        {
            var block = new byte[B];
            var patterns = Enumerable.Range(0, 16).Select(b => Blocks.Pattern(99, b)).ToList();
            for (long pos = 0; pos + B <= f.Length; pos += B)
            {
                f.Position = pos;
                f.ReadExactly(block);
                if (!patterns.Any(p => p.AsSpan().SequenceEqual(block))) continue;
                f.Position = pos;
                f.Write(Blocks.Pattern(7, pos / B));
                reused++;
            }
        }
        Assert.Equal(16, reused);

        var log = new ListLoggerFactory();
        using var reopened = faults.Open(_dir.Path, loggerFactory: log);

        Assert.DoesNotContain(reopened.ListVolumes(), v => v.Name == "scratch");
        using var vmAgain = reopened.OpenVolume("vm");
        var read = new byte[B];
        for (long b = 0; b < 256; b++)
        {
            vmAgain.Read(b * B, read);
            Assert.True(Blocks.Pattern(1, b).AsSpan().SequenceEqual(read), $"block {b} of vm");
        }
    }
}
