using Platter.Storage.Tests.Support;
using Xunit;

namespace Platter.Storage.Tests;

/// <summary>Snapshots, clones, rollback, deletion and diffs: the rules users rely on, one at a time.</summary>
public sealed class SnapshotTests
{
    private const int B = Blocks.Size;
    private const long MiB = 1 << 20;

    private static VolumeStore Open(TempDirectory dir) => VolumeStore.Open(dir.Path, new StoreOptions { JournalRegionBytes = 4 << 20 });

    private static byte[] Pattern(byte value, int length)
    {
        var data = new byte[length];
        data.AsSpan().Fill(value);
        return data;
    }

    private static byte[] ReadAll(Volume v, long offset, int length)
    {
        var buffer = new byte[length];
        v.Read(offset, buffer);
        return buffer;
    }

    [Fact]
    public void Snapshot_keeps_old_content_while_volume_changes_and_survives_reopen()
    {
        using var dir = new TempDirectory("platter-snap");
        using (var store = Open(dir))
        {
            store.CreateVolume("vm", 8 * MiB);
            using var vol = store.OpenVolume("vm");
            vol.Write(0, Pattern(1, (int)MiB));
            store.CreateSnapshot("vm", "s1");
            vol.Write(0, Pattern(2, 4 * B));
            vol.Trim(MiB / 2, MiB / 2);
            using var snap = store.OpenSnapshot("vm", "s1");
            Assert.True(snap.IsReadOnly);
            Assert.Equal("vm@s1", snap.Name);
            Assert.Equal(Pattern(1, (int)MiB), ReadAll(snap, 0, (int)MiB));
            StorageAssert.Throws(() => snap.Write(0, new byte[B]), StorageError.ReadOnly);
            Assert.Equal(Pattern(2, 4 * B), ReadAll(vol, 0, 4 * B));
            Assert.Equal(new byte[MiB / 2], ReadAll(vol, MiB / 2, (int)(MiB / 2)));
            StoreChecks.AssertConsistent(store, "before reopen");
        }
        using (var store = Open(dir))
        {
            using var snap = store.OpenSnapshot("vm", "s1");
            using var vol = store.OpenVolume("vm");
            Assert.Equal(Pattern(1, (int)MiB), ReadAll(snap, 0, (int)MiB));
            Assert.Equal(Pattern(2, 4 * B), ReadAll(vol, 0, 4 * B));
            Assert.Equal(new byte[MiB / 2], ReadAll(vol, MiB / 2, (int)(MiB / 2)));
            Assert.Equal(Pattern(1, (int)(MiB / 2 - 4 * B)), ReadAll(vol, 4 * B, (int)(MiB / 2 - 4 * B)));
            StoreChecks.AssertConsistent(store, "after reopen");
            var diff = store.Diff("vm", "s1", null);
            Assert.Equal([new ChangedExtent(0, 4 * B, true), new ChangedExtent(MiB / 2, MiB / 2, false)], diff);
        }
    }

    [Fact]
    public void Deleting_everything_returns_used_space_to_zero()
    {
        using var dir = new TempDirectory("platter-snap");
        using var store = Open(dir);
        store.CreateVolume("base", 4 * MiB);
        using (var v = store.OpenVolume("base")) v.Write(0, Pattern(7, (int)(2 * MiB)));
        store.CreateSnapshot("base", "a");
        using (var v = store.OpenVolume("base")) v.Write(0, Pattern(8, (int)MiB));
        store.CreateSnapshot("base", "b");
        store.CloneSnapshot("base", "a", "child");
        using (var c = store.OpenVolume("child"))
        {
            Assert.Equal(Pattern(7, B), ReadAll(c, 0, B));
            c.Write(MiB, Pattern(9, B));
        }
        var e = Assert.Throws<StorageException>(() => store.DeleteSnapshot("base", "a"));
        Assert.Equal(StorageError.HasDependents, e.Error);
        Assert.Contains("child", e.Message);
        e = Assert.Throws<StorageException>(() => store.DeleteVolume("base"));
        Assert.Equal(StorageError.HasDependents, e.Error);
        store.DeleteSnapshot("base", "b");
        StoreChecks.AssertConsistent(store, "after deleting b");
        store.DeleteVolume("child");
        store.DeleteVolume("base", recursive: true);
        store.Flush();
        StoreChecks.AssertConsistent(store, "after deleting everything");
        Assert.Equal(0, store.GetUsage().UsedBytes);
    }

    [Fact]
    public void Rollback_restores_content_and_size_and_drops_newer_snapshots_only_when_asked()
    {
        using var dir = new TempDirectory("platter-snap");
        using var store = Open(dir);
        store.CreateVolume("vm", 4 * MiB);
        using var vol = store.OpenVolume("vm");
        vol.Write(0, Pattern(1, (int)MiB));
        store.CreateSnapshot("vm", "s1");
        vol.Write(0, Pattern(2, (int)MiB));
        store.CreateSnapshot("vm", "s2");
        store.ResizeVolume("vm", 8 * MiB);
        vol.Write(6 * MiB, Pattern(3, B));
        var e = Assert.Throws<StorageException>(() => store.RollbackVolume("vm", "s1"));
        Assert.Equal(StorageError.HasDependents, e.Error);
        Assert.Contains("s2", e.Message);
        store.RollbackVolume("vm", "s1", recursive: true);
        Assert.Equal(4 * MiB, vol.SizeBytes);
        Assert.Equal(Pattern(1, (int)MiB), ReadAll(vol, 0, (int)MiB));
        Assert.Equal(["s1"], store.ListSnapshots("vm").Select(s => s.Name));
        store.Flush();
        StoreChecks.AssertConsistent(store, "after rollback");
        Assert.Equal(MiB, store.GetUsage().UsedBytes);
    }

    [Fact]
    public void Changed_extents_page_through_many_changes_with_a_small_buffer_and_agree_with_diff()
    {
        using var dir = new TempDirectory("platter-snap");
        using var store = Open(dir);
        store.CreateVolume("vm", 16 * MiB);
        using var vol = store.OpenVolume("vm");
        vol.Write(0, Pattern(1, (int)(16 * MiB)));
        store.CreateSnapshot("vm", "s1");
        var rng = new Random(42);
        var written = new SortedSet<long>();
        for (int i = 0; i < 300; i++)
        {
            long block = rng.Next(0, (int)(16 * MiB / B));
            written.Add(block);
            vol.Write(block * B, Pattern(2, B));
        }

        var dirty = new SortedSet<long>();
        var runs = new VolumeExtent[5];
        long at = 0;
        int calls = 0;
        while (at < vol.SizeBytes)
        {
            int n = vol.GetChangedExtents("s1", at, vol.SizeBytes - at, runs);
            Assert.InRange(n, 1, runs.Length);
            calls++;
            foreach (var r in runs.AsSpan(0, n))
            {
                Assert.Equal(at, r.Offset);
                if (r.Allocated)
                    for (long b = r.Offset / B; b < (r.Offset + r.Length) / B; b++) dirty.Add(b);
                at += r.Length;
            }
        }
        Assert.Equal(written, dirty);
        Assert.True(calls > 10, $"only {calls} calls: the buffer should have forced paging");
        var fromDiff = store.Diff("vm", "s1", null).SelectMany(c => Enumerable.Range(0, (int)(c.Length / B)).Select(i => c.Offset / B + i));
        Assert.Equal(written, new SortedSet<long>(fromDiff));
    }

    [Fact]
    public void Map_queries_over_long_uniform_runs_answer_in_bounded_pieces_that_cover_everything()
    {
        using var dir = new TempDirectory("platter-snap");
        using var store = Open(dir);
        const long size = 320 * MiB; // longer than one query's run limit (256 MiB)
        store.CreateVolume("base", size);
        using (var v = store.OpenVolume("base"))
        {
            var chunk = Pattern(3, (int)(16 * MiB));
            for (long off = 0; off < size; off += chunk.Length) v.Write(off, chunk);
        }
        store.CreateSnapshot("base", "s1");
        store.CloneSnapshot("base", "s1", "clone");
        using var clone = store.OpenVolume("clone");
        var depths = new DepthExtent[8];
        long at = 0;
        int calls = 0;
        while (at < size)
        {
            int n = clone.GetAllocationDepth(at, size - at, depths);
            calls++;
            Assert.InRange(n, 1, depths.Length);
            foreach (var d in depths.AsSpan(0, n))
            {
                Assert.Equal(at, d.Offset);
                Assert.Equal(2, d.Depth); // every block comes from the origin snapshot
                at += d.Length;
            }
        }
        Assert.True(calls >= 2, "one call answered 320 MiB of mapped blocks: the work per call is not bounded");

        using (var v = store.OpenVolume("base"))
        {
            var chunk = Pattern(4, (int)(16 * MiB));
            for (long off = 0; off < size; off += chunk.Length) v.Write(off, chunk);
        }
        using var live = store.OpenVolume("base");
        var runs = new VolumeExtent[8];
        at = 0;
        calls = 0;
        while (at < size)
        {
            int n = live.GetChangedExtents("s1", at, size - at, runs);
            calls++;
            Assert.InRange(n, 1, runs.Length);
            foreach (var r in runs.AsSpan(0, n))
            {
                Assert.Equal(at, r.Offset);
                Assert.True(r.Allocated, $"{r} reported clean after the whole volume was rewritten");
                at += r.Length;
            }
        }
        Assert.True(calls >= 2, "one call walked 320 MiB of changes: the work per call is not bounded");
    }
}
