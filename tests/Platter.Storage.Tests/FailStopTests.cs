using Platter.Storage.Internal;
using Platter.Storage.Tests.Support;
using Xunit;

namespace Platter.Storage.Tests;

/// <summary>
/// Fail-stop: a broken invariant or an unexpected exception inside the engine's write, commit or catalog code fails
/// the whole store (like a failed sync) instead of surfacing as one client's error while the process carries on with
/// memory and journal that may disagree. Each test breaks the engine's memory on purpose, then checks that every
/// writer, flusher and catalog change gets StoreFailed (nobody hangs), reads of durable data still work, and a
/// reopen recovers everything flushed before the fault.
/// </summary>
public sealed class FailStopTests : IDisposable
{
    private const int B = Blocks.Size;
    private const long MiB = 1 << 20;
    private readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    private static StoreOptions Options => new() { JournalRegionBytes = FaultyStore.JournalBytes, DataGrowthBytes = MiB };

    private VolumeStore OpenWithBaseline()
    {
        var store = VolumeStore.Open(_dir.Path, Options);
        foreach (var name in new[] { "a", "b" })
        {
            store.CreateVolume(name, 4 * MiB);
            using var vol = store.OpenVolume(name);
            for (int b = 0; b < 16; b++) vol.Write(b * (long)B, Blocks.Pattern(name[0], b));
        }
        store.Flush();
        return store;
    }

    private void AssertFailedEverywhere(VolumeStore store, string cause)
    {
        using var a = store.OpenVolume("a");
        using var b = store.OpenVolume("b");
        var e = StorageAssert.Throws(() => b.Write(0, Blocks.Pattern(9, 0)), $"{cause}: another volume's write", StorageError.StoreFailed);
        Assert.Contains("reopen", e.Message);
        StorageAssert.ThrowsFlush(() => store.FlushAsync(), StorageError.StoreFailed);
        StorageAssert.ThrowsFlush(() => a.FlushAsync(), StorageError.StoreFailed);
        StorageAssert.Throws(() => store.CreateVolume("c", MiB), $"{cause}: a catalog change", StorageError.StoreFailed);
        StorageAssert.Throws(() => store.CreateSnapshot("b", "s"), $"{cause}: a snapshot", StorageError.StoreFailed);
        // What was durable before the fault still reads back.
        Assert.Equal(Blocks.Pattern('b', 3), b.ReadAll(3 * B, B));
    }

    private void ReopenAndVerify()
    {
        using var store = VolumeStore.Open(_dir.Path, Options);
        foreach (var name in new[] { "a", "b" })
        {
            using var vol = store.OpenVolume(name);
            for (int b = 0; b < 16; b++)
                Assert.True(Blocks.Pattern(name[0], b).AsSpan().SequenceEqual(vol.ReadAll(b * (long)B, B)), $"'{name}' block {b} after reopen: {Blocks.Describe(vol.ReadAll(b * (long)B, B))}");
        }
        StoreChecks.AssertConsistent(store, "after reopening a failed store");
        using var a = store.OpenVolume("a");
        a.Write(0, Blocks.Pattern(7, 0)); // the reopened store takes writes again
        store.Flush();
    }

    private static void CloseQuietly(VolumeStore store)
    {
        try { store.Dispose(); } catch (StorageException) { }
    }

    [Fact]
    public void UnexpectedExceptionInTheWritePathFailsTheStore()
    {
        var store = OpenWithBaseline();
        // Inject an engine bug: volume a's map is frozen, so the write path's map update throws InvalidOperationException.
        var state = store.VolumeStateForTests("a");
        lock (state.Lock) state.Map = state.Map.Snapshot();
        using (var a = store.OpenVolume("a"))
        {
            var e = StorageAssert.Throws(() => a.Write(5 * B, Blocks.Pattern(8, 5)), "the write that hits the bug", StorageError.StoreFailed);
            Assert.IsType<InvalidOperationException>(e.InnerException);
            Assert.Contains("a write to 'a'", e.Message);
        }
        Assert.True(store.Parts.Committer.Failed);
        AssertFailedEverywhere(store, "after a write-path exception");
        CloseQuietly(store);
        ReopenAndVerify();
    }

    [Fact]
    public void FreeOfFreeSpaceFailsTheStoreAtRelease()
    {
        var store = OpenWithBaseline();
        // Inject an accounting bug: volume a frees a block the allocator already holds free, together with a real change.
        // Overwrites free the old blocks: after their commit and the readers' epoch, the allocator holds them free.
        using (var b = store.OpenVolume("b"))
            for (int i = 0; i < 4; i++) b.Write(i * (long)B, Blocks.Pattern('b', i));
        var (free, _, _) = store.Parts.Space.AccountingSnapshot();
        for (int round = 0; round < 4 && free.Count == 0; round++)
        {
            store.Flush();
            (free, _, _) = store.Parts.Space.AccountingSnapshot();
        }
        Assert.NotEmpty(free);
        using (var a = store.OpenVolume("a"))
        {
            a.Write(0, Blocks.Pattern('a', 0)); // a real change (same content, so the reopen check stays simple)
            // Chosen after the write, which may itself take a freed block (small writes reuse short free runs).
            (free, _, _) = store.Parts.Space.AccountingSnapshot();
            Assert.NotEmpty(free);
            long freeBlock = free[0].Start;
            var state = store.VolumeStateForTests("a");
            lock (state.Lock) state.PendingFrees.Add(freeBlock);
            // The commit that carries the free succeeds (it is journaled); the double free is found when the quarantine
            // hands the block back, at most two rounds later (the epoch must drain first). Bounded: no timing.
            StorageException? failed = null;
            for (int round = 0; round < 4 && failed is null; round++)
            {
                try { a.Flush(); }
                catch (StorageException e) { failed = e; }
            }
            Assert.NotNull(failed);
            Assert.Equal(StorageError.StoreFailed, failed!.Error);
            Assert.Contains("double free", failed.Message);
        }
        AssertFailedEverywhere(store, "after a double free");
        CloseQuietly(store);
        ReopenAndVerify();
    }

    [Fact]
    public void FreeWithoutAJournaledChangeFailsTheCommit()
    {
        var store = OpenWithBaseline();
        // Map and pending log out of step: a block freed with no operation that explains it.
        var state = store.VolumeStateForTests("b");
        long mapped;
        lock (state.Lock) mapped = state.Map.Get(2).Pba;
        lock (state.Lock) state.PendingFrees.Add(mapped);
        var e = StorageAssert.ThrowsFlush(() => store.FlushAsync(), StorageError.StoreFailed);
        Assert.Contains("without a journaled change", e.Message);
        AssertFailedEverywhere(store, "after a free without a change");
        CloseQuietly(store);
        ReopenAndVerify();
    }

    [Fact]
    public void InvariantViolationIsNotAStorageException()
    {
        // The fail-stop handlers let StorageExceptions (expected outcomes) through and stop on everything else.
        var e = Assert.Throws<InvariantViolation>(() => Invariant.Check(false, "test"));
        Assert.IsAssignableFrom<InvalidOperationException>(e);
        Assert.Contains("engine invariant broken: test", e.Message);
    }
}
