using Platter.Storage.Tests.Support;
using Xunit;
using Xunit.Abstractions;

namespace Platter.Storage.Tests;

/// <summary>
/// Flatten (decision 0008): a clone gets its own copy of every block it still shares with its origin snapshot, then
/// drops the origin link, so the origin (and its volume) can be deleted. Content never changes.
/// </summary>
public sealed class FlattenTests(ITestOutputHelper output)
{
    private const int B = Blocks.Size;
    private const long MiB = 1 << 20;

    private static VolumeStore Open(TempDirectory dir, long dataBytesMax = long.MaxValue) =>
        VolumeStore.Open(dir.Path, new StoreOptions { JournalRegionBytes = 4 << 20, DataBytesMax = dataBytesMax, DataGrowthBytes = MiB });

    private static byte[] ReadAll(Volume v)
    {
        var buffer = new byte[v.SizeBytes];
        v.Read(0, buffer);
        return buffer;
    }

    /// <summary>base: blocks 0..63 and 128..191 written, a hole between; snapshot s1; clone c overwrites 4 blocks and trims 4 others it inherited.</summary>
    private static void MakeClone(VolumeStore store)
    {
        store.CreateVolume("base", 4 * MiB);
        using (var v = store.OpenVolume("base"))
        {
            for (int b = 0; b < 64; b++) v.Write(b * (long)B, Blocks.Pattern(1, b));
            for (int b = 128; b < 192; b++) v.Write(b * (long)B, Blocks.Pattern(1, b));
        }
        store.CreateSnapshot("base", "s1");
        using (var v = store.OpenVolume("base")) v.Write(0, Blocks.Pattern(2, 0)); // the origin's volume moves on
        store.CloneSnapshot("base", "s1", "c");
        using var c = store.OpenVolume("c");
        for (int b = 10; b < 14; b++) c.Write(b * (long)B, Blocks.Pattern(3, b));
        c.Trim(20 * B, 4 * B);
        c.Write(300 * B, Blocks.Pattern(3, 300)); // beyond what the origin maps
    }

    [Fact]
    public void Flatten_copies_only_the_shared_blocks_keeps_content_and_lets_the_origin_go()
    {
        using var dir = new TempDirectory("platter-flatten");
        byte[] before;
        using (var store = Open(dir))
        {
            MakeClone(store);
            using (var c = store.OpenVolume("c")) before = ReadAll(c);
            StorageAssert.Throws(() => store.DeleteVolume("base", recursive: true), StorageError.HasDependents);

            var result = store.FlattenVolume("c");
            // 128 blocks mapped by the origin, minus 4 overwritten and 4 trimmed by the clone.
            Assert.Equal((128 - 8) * (long)B, result.CopiedBytes);
            Assert.Equal("base@s1", result.Origin);
            Assert.Null(store.GetVolumeInfo("c").Origin);
            Assert.Empty(store.GetSnapshotInfo("base", "s1").Clones);
            using (var c = store.OpenVolume("c")) Assert.Equal(before, ReadAll(c));
            StoreChecks.AssertConsistent(store, "after flatten");

            store.DeleteVolume("base", recursive: true);
            store.WaitForReclaims();
            store.Flush();
            using (var c = store.OpenVolume("c")) Assert.Equal(before, ReadAll(c));
            // Nothing of the origin is left, and nothing the clone reads was freed with it.
            Assert.Equal(store.GetVolumeInfo("c").AllocatedBytes, store.GetUsage().UsedBytes);
            StoreChecks.AssertConsistent(store, "after deleting the origin");
        }
        using (var store = Open(dir))
        {
            Assert.Null(store.GetVolumeInfo("c").Origin);
            using (var c = store.OpenVolume("c"))
            {
                Assert.Equal(before, ReadAll(c));
                c.Write(0, Blocks.Pattern(4, 0)); // overwriting a copied block frees the copy
            }
            StoreChecks.AssertConsistent(store, "after reopen");
            store.DeleteVolume("c");
            store.WaitForReclaims();
            store.Flush();
            Assert.Equal(0, store.GetUsage().UsedBytes);
        }
    }

    [Fact]
    public void Flatten_survives_a_crash_right_after_it_returns_by_journal_replay()
    {
        using var dir = new TempDirectory("platter-flatten");
        var faults = new FaultyStore();
        byte[] before;
        var store = faults.Open(dir.Path);
        MakeClone(store);
        store.Checkpoint();
        using (var c = store.OpenVolume("c")) before = ReadAll(c);
        store.FlattenVolume("c");
        // Journaled, not checkpointed: what a SIGKILL now leaves is replayed at the next open.
        faults.Crash(store);
        using (store = faults.Open(dir.Path))
        {
            Assert.Null(store.GetVolumeInfo("c").Origin);
            Assert.Empty(store.GetSnapshotInfo("base", "s1").Clones);
            using (var c = store.OpenVolume("c")) Assert.Equal(before, ReadAll(c));
            StoreChecks.AssertConsistent(store, "after replay");
            store.DeleteVolume("base", recursive: true);
            store.WaitForReclaims();
            using (var c = store.OpenVolume("c")) Assert.Equal(before, ReadAll(c));
            StoreChecks.AssertConsistent(store, "after deleting the origin");
        }
    }

    [Fact]
    public void Flatten_refuses_a_volume_that_is_not_a_clone_and_a_clone_with_snapshots()
    {
        using var dir = new TempDirectory("platter-flatten");
        using var store = Open(dir);
        MakeClone(store);
        var e = StorageAssert.Throws(() => store.FlattenVolume("base"), StorageError.InvalidArgument);
        Assert.Contains("not a clone", e.Message);
        StorageAssert.Throws(() => store.FlattenVolume("nope"), StorageError.NotFound);
        store.CreateSnapshot("c", "mine");
        e = StorageAssert.Throws(() => store.FlattenVolume("c"), StorageError.HasDependents);
        Assert.Contains("mine", e.Message);
        Assert.Equal("base@s1", store.GetVolumeInfo("c").Origin);
        store.DeleteSnapshot("c", "mine");
        store.FlattenVolume("c");
        // Flattened once, it is no clone any more.
        StorageAssert.Throws(() => store.FlattenVolume("c"), StorageError.InvalidArgument);
        StoreChecks.AssertConsistent(store, "after the refusals");
    }

    [Fact]
    public void A_full_disk_stops_the_flatten_leaves_the_clone_as_it_was_and_a_retry_finishes()
    {
        using var dir = new TempDirectory("platter-flatten");
        // Room for the origin's 8 MiB, a 7 MiB filler and the clone's few writes, plus about 3 MiB: not for an 8 MiB copy.
        using var store = Open(dir, dataBytesMax: (4L << 20) + 18 * MiB);
        store.CreateVolume("base", 16 * MiB);
        using (var v = store.OpenVolume("base"))
            for (int b = 0; b < 2048; b++) v.Write(b * (long)B, Blocks.Pattern(1, b));
        store.CreateSnapshot("base", "s1");
        store.CloneSnapshot("base", "s1", "c");
        store.CreateVolume("filler", 16 * MiB);
        using (var f = store.OpenVolume("filler"))
            for (int b = 0; b < 1792; b++) f.Write(b * (long)B, Blocks.Pattern(5, b));
        byte[] before;
        using (var c = store.OpenVolume("c"))
        {
            c.Write(0, Blocks.Pattern(3, 0));
            before = ReadAll(c);
        }
        store.Flush();

        var e = StorageAssert.Throws(() => store.FlattenVolume("c"), StorageError.NoSpace);
        output.WriteLine(e.Message);
        Assert.Contains("still depends on 'base@s1'", e.Message);
        Assert.Equal("base@s1", store.GetVolumeInfo("c").Origin);
        using (var c = store.OpenVolume("c")) Assert.Equal(before, ReadAll(c));
        store.Flush(); // not a failed store: only the flatten failed
        StoreChecks.AssertConsistent(store, "after the failed flatten");

        // Room again: the retry copies only what the first attempt did not.
        store.DeleteVolume("filler");
        store.WaitForReclaims();
        store.Flush();
        var result = store.FlattenVolume("c");
        Assert.InRange(result.CopiedBytes!.Value, 0, 2046L * B);
        using (var c = store.OpenVolume("c"))
        {
            Assert.Equal(before, ReadAll(c));
            c.Write(B, Blocks.Pattern(3, 1)); // writable as ever
            before = ReadAll(c);
        }
        store.DeleteVolume("base", recursive: true);
        store.WaitForReclaims();
        using (var c = store.OpenVolume("c")) Assert.Equal(before, ReadAll(c));
        StoreChecks.AssertConsistent(store, "after the retry");
    }

    [Fact]
    public async Task Writes_to_the_clone_during_the_flatten_win_over_the_copy()
    {
        using var dir = new TempDirectory("platter-flatten");
        using var store = Open(dir);
        const int blocks = 8192; // 32 MiB: the copy takes long enough for the writer to land inside it
        store.CreateVolume("base", blocks * (long)B);
        using (var v = store.OpenVolume("base"))
        {
            var chunk = new byte[256 * B];
            for (int b = 0; b < blocks; b += 256)
            {
                for (int k = 0; k < 256; k++) Blocks.FillPattern(chunk.AsSpan(k * B, B), 1, b + k);
                v.Write(b * (long)B, chunk);
            }
        }
        store.CreateSnapshot("base", "s1");
        store.CloneSnapshot("base", "s1", "c");
        var written = new System.Collections.Concurrent.ConcurrentDictionary<int, int>();
        using var c = store.OpenVolume("c");
        using var stop = new CancellationTokenSource();
        var writer = Task.Run(() =>
        {
            var rng = new Random(42);
            for (int i = 0; !stop.IsCancellationRequested; i++)
            {
                int b = rng.Next(blocks);
                c.Write(b * (long)B, Blocks.Pattern(7, i));
                written[b] = i;
            }
        });
        var result = store.FlattenVolume("c");
        stop.Cancel();
        await writer;
        output.WriteLine($"copied {result.CopiedBytes} bytes; {written.Count} blocks rewritten by the guest");
        store.DeleteVolume("base", recursive: true);
        store.WaitForReclaims();
        for (int b = 0; b < blocks; b++)
        {
            var expected = written.TryGetValue(b, out int i) ? Blocks.Pattern(7, i) : Blocks.Pattern(1, b);
            Assert.Equal(expected, c.ReadAll(b * (long)B, B));
        }
        StoreChecks.AssertConsistent(store, "after flatten under writes");
    }
}
