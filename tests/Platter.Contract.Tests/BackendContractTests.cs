using Xunit;

namespace Platter.Contract.Tests;

/// <summary>
/// What every <see cref="IVolumeBackend"/> must do, as the server, the management API and the CLI rely on it. One
/// suite, one fixture class per backend: a subclass supplies the backend and a way to close and reopen it.
/// Tests use names of their own (a fixture may share one backend between tests) and sizes in whole 4 MiB units (RBD's
/// object size), and talk only through the seam.
/// </summary>
public abstract class BackendContractTests
{
    private const int Block = 4096;
    private const long Mi = 1L << 20;
    private const long VolumeBytes = 16 * Mi;

    /// <summary>The backend under test.</summary>
    protected abstract IVolumeBackend Backend { get; }

    /// <summary>Closes the backend (as a server stopping) and opens the same store again.</summary>
    protected abstract void Reopen();

    private readonly string _prefix = $"c{Guid.NewGuid():N}"[..10];

    private string Name(string suffix) => $"{_prefix}-{suffix}";

    private static byte[] Pattern(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    private static async Task<byte[]> ReadAsync(IVolumeHandle handle, long offset, int length)
    {
        var buffer = new byte[length];
        await handle.ReadAsync(offset, buffer);
        return buffer;
    }

    private static async Task<StorageError> FailureOf(Func<Task> action)
    {
        var e = await Assert.ThrowsAsync<StorageException>(action);
        return e.Error;
    }

    private static StorageError FailureOf(Action action) => Assert.Throws<StorageException>(action).Error;

    [Fact]
    public void Create_list_info_and_refusals()
    {
        var a = Name("a");
        var b = Name("b");
        var created = Backend.CreateVolume(b, VolumeBytes);
        Backend.CreateVolume(a, 2 * VolumeBytes);
        Assert.Equal(b, created.Name);
        Assert.Equal(VolumeBytes, created.SizeBytes);
        Assert.Equal(0, created.AllocatedBytes);

        var mine = Backend.ListVolumes().Where(v => v.Name.StartsWith(_prefix, StringComparison.Ordinal)).Select(v => v.Name).ToList();
        Assert.Equal([a, b], mine); // ordered by name

        Assert.Equal(2 * VolumeBytes, Backend.GetVolumeInfo(a).SizeBytes);
        Assert.True(Backend.TryGetVolumeInfo(a, out var info));
        Assert.Equal(a, info!.Name);
        Assert.False(Backend.TryGetVolumeInfo(Name("none"), out _));
        Assert.Equal(StorageError.NotFound, FailureOf(() => Backend.GetVolumeInfo(Name("none"))));
        Assert.Equal(StorageError.AlreadyExists, FailureOf(() => Backend.CreateVolume(a, VolumeBytes)));
        Assert.Equal(StorageError.InvalidName, FailureOf(() => Backend.CreateVolume("bad/name", VolumeBytes)));
        Assert.Equal(StorageError.InvalidName, FailureOf(() => Backend.CreateVolume("", VolumeBytes)));
        // Names that cannot be managed afterwards (URL dot segments, option-like, display-spoofing) are refused too.
        foreach (var bad in new[] { ".", "..", "-x", "rtl\u202Etxt", "esc\u001b" })
        {
            Assert.Equal(StorageError.InvalidName, FailureOf(() => Backend.CreateVolume(bad, VolumeBytes)));
            Assert.Equal(StorageError.InvalidName, FailureOf(() => Backend.RenameVolume(a, bad)));
            Assert.Equal(StorageError.InvalidName, FailureOf(() => Backend.CreateSnapshot(a, bad)));
        }
        Assert.Equal(StorageError.InvalidArgument, FailureOf(() => Backend.CreateVolume(Name("zero"), 0)));
        Assert.Equal(StorageError.NotFound, FailureOf(() => Backend.OpenVolumeHandle(Name("none"))));
    }

    [Fact]
    public async Task Written_data_reads_back_and_unwritten_reads_as_zeros()
    {
        var name = Name("io");
        Backend.CreateVolume(name, VolumeBytes);
        using var v = Backend.OpenVolumeHandle(name);
        Assert.Equal(name, v.Name);
        Assert.Equal(VolumeBytes, v.SizeBytes);
        Assert.False(v.IsReadOnly);

        var data = Pattern(64 * 1024, 1);
        await v.WriteAsync(Mi, data, fua: false);
        Assert.Equal(data, await ReadAsync(v, Mi, data.Length));
        Assert.Equal(new byte[Block], await ReadAsync(v, 0, Block));
        Assert.Equal(new byte[Block], await ReadAsync(v, VolumeBytes - Block, Block));

        // Unaligned writes and reads: the backend does the read-modify-write.
        var small = Pattern(1000, 2);
        await v.WriteAsync(Mi + 333, small, fua: true);
        var expected = (byte[])data.Clone();
        small.CopyTo(expected, 333);
        Assert.Equal(expected, await ReadAsync(v, Mi, data.Length));
        Assert.Equal(small, await ReadAsync(v, Mi + 333, small.Length));
    }

    [Fact]
    public async Task Flushed_writes_survive_reopening_the_store()
    {
        var name = Name("durable");
        Backend.CreateVolume(name, VolumeBytes);
        var data = Pattern(256 * 1024, 3);
        using (var v = Backend.OpenVolumeHandle(name))
        {
            await v.WriteAsync(4 * Mi, data, fua: false);
            await v.FlushAsync();
        }
        Reopen();
        using var again = Backend.OpenVolumeHandle(name);
        Assert.Equal(data, await ReadAsync(again, 4 * Mi, data.Length));
        Assert.True(Backend.GetVolumeInfo(name).AllocatedBytes >= data.Length);
    }

    [Fact]
    public async Task Trim_and_write_zeroes_read_as_zeros_and_report_allocation()
    {
        var name = Name("zero");
        Backend.CreateVolume(name, VolumeBytes);
        using var v = Backend.OpenVolumeHandle(name);
        await v.WriteAsync(0, Pattern((int)(2 * Mi), 4), fua: false);
        await v.WriteAsync(8 * Mi, Pattern((int)Mi, 5), fua: false);

        await v.TrimAsync(0, Mi, fua: false);
        Assert.Equal(new byte[Mi], await ReadAsync(v, 0, (int)Mi));
        await v.WriteZeroesAsync(8 * Mi, 64 * 1024, deallocate: false, fua: true);
        Assert.Equal(new byte[64 * 1024], await ReadAsync(v, 8 * Mi, 64 * 1024));
        await v.WriteZeroesAsync(8 * Mi + 64 * 1024, 64 * 1024, deallocate: true, fua: false);
        Assert.Equal(new byte[128 * 1024], await ReadAsync(v, 8 * Mi, 128 * 1024));

        // The never-written 4 MiB object [12 MiB, 16 MiB) is a hole; the written 4 KiB at [1 MiB, 2 MiB) is data.
        Assert.True(IsAllocated(v, Mi + 4096, Block));
        Assert.False(IsAllocated(v, 12 * Mi, 4 * Mi));
        // Zeros written without deallocating stay allocated.
        Assert.True(IsAllocated(v, 8 * Mi, Block));
    }

    // True when the whole range is reported allocated, false when none of it is; fails on a mix.
    private static bool IsAllocated(IVolumeHandle v, long offset, long length)
    {
        var runs = new VolumeExtent[64];
        bool? state = null;
        long pos = offset, end = offset + length;
        while (pos < end)
        {
            int n = v.GetExtents(pos, end - pos, runs);
            Assert.True(n > 0, "an extent query returned nothing");
            for (int i = 0; i < n; i++)
            {
                Assert.Equal(pos, runs[i].Offset);
                Assert.True(runs[i].Length > 0);
                state ??= runs[i].Allocated;
                Assert.True(state == runs[i].Allocated, $"[{offset}, {end}) is partly allocated");
                pos += runs[i].Length;
            }
        }
        return state!.Value;
    }

    [Fact]
    public async Task Resize_grows_with_zeros_and_shrinks()
    {
        var name = Name("resize");
        Backend.CreateVolume(name, VolumeBytes);
        using (var v = Backend.OpenVolumeHandle(name))
        {
            await v.WriteAsync(VolumeBytes - Block, Pattern(Block, 6), fua: true);
        }
        Backend.ResizeVolume(name, 2 * VolumeBytes);
        Assert.Equal(2 * VolumeBytes, Backend.GetVolumeInfo(name).SizeBytes);
        using (var v = Backend.OpenVolumeHandle(name))
        {
            Assert.Equal(2 * VolumeBytes, v.SizeBytes);
            Assert.Equal(Pattern(Block, 6), await ReadAsync(v, VolumeBytes - Block, Block));
            Assert.Equal(new byte[Block], await ReadAsync(v, VolumeBytes, Block));
        }
        // A shrink discards data: refused without the flag, and nothing changes.
        Assert.Equal(StorageError.InvalidArgument, FailureOf(() => Backend.ResizeVolume(name, VolumeBytes / 2)));
        Assert.Equal(2 * VolumeBytes, Backend.GetVolumeInfo(name).SizeBytes);
        Backend.ResizeVolume(name, VolumeBytes / 2, allowShrink: true);
        Assert.Equal(VolumeBytes / 2, Backend.GetVolumeInfo(name).SizeBytes);
        // Growing again shows zeros where the discarded data was.
        Backend.ResizeVolume(name, VolumeBytes);
        using (var v = Backend.OpenVolumeHandle(name))
            Assert.Equal(new byte[Block], await ReadAsync(v, VolumeBytes - Block, Block));
    }

    [Fact]
    public async Task Rename_moves_data_and_snapshots()
    {
        var name = Name("old");
        var newName = Name("new");
        Backend.CreateVolume(name, VolumeBytes);
        using (var v = Backend.OpenVolumeHandle(name))
            await v.WriteAsync(0, Pattern(Block, 7), fua: true);
        Backend.CreateSnapshot(name, "s1");
        Backend.RenameVolume(name, newName);
        Assert.False(Backend.TryGetVolumeInfo(name, out _));
        using var renamed = Backend.OpenVolumeHandle(newName);
        Assert.Equal(Pattern(Block, 7), await ReadAsync(renamed, 0, Block));
        Assert.Equal(["s1"], Backend.ListSnapshots(newName).Select(s => s.Name));
        Assert.Equal(StorageError.NotFound, FailureOf(() => Backend.RenameVolume(name, Name("x"))));
        Backend.CreateVolume(name, VolumeBytes);
        Assert.Equal(StorageError.AlreadyExists, FailureOf(() => Backend.RenameVolume(name, newName)));
    }

    [Fact]
    public async Task A_snapshot_keeps_its_content_and_is_read_only()
    {
        var name = Name("snap");
        Backend.CreateVolume(name, VolumeBytes);
        using var v = Backend.OpenVolumeHandle(name);
        await v.WriteAsync(0, Pattern(64 * 1024, 8), fua: false);
        var s1 = Backend.CreateSnapshot(name, "s1");
        Assert.Equal(name, s1.Volume);
        Assert.Equal("s1", s1.Name);
        Assert.Equal($"{name}@s1", s1.FullName);
        Assert.Equal(VolumeBytes, s1.SizeBytes);

        await v.WriteAsync(0, Pattern(64 * 1024, 9), fua: false);
        await v.TrimAsync(Mi, Mi, fua: false);
        Backend.CreateSnapshot(name, "s2");

        using (var snap = Backend.OpenSnapshotHandle(name, "s1"))
        {
            Assert.True(snap.IsReadOnly);
            Assert.Equal($"{name}@s1", snap.Name);
            Assert.Equal(Pattern(64 * 1024, 8), await ReadAsync(snap, 0, 64 * 1024));
            Assert.Equal(StorageError.ReadOnly, await FailureOf(async () => await snap.WriteAsync(0, new byte[Block], fua: false)));
            Assert.Equal(StorageError.ReadOnly, await FailureOf(async () => await snap.TrimAsync(0, Block, fua: false)));
        }
        Assert.Equal(Pattern(64 * 1024, 9), await ReadAsync(v, 0, 64 * 1024));

        Assert.Equal(["s1", "s2"], Backend.ListSnapshots(name).Select(s => s.Name));
        Assert.Contains(Backend.ListSnapshots(), s => s.FullName == $"{name}@s2");
        Assert.Equal(StorageError.AlreadyExists, FailureOf(() => Backend.CreateSnapshot(name, "s1")));
        Assert.Equal(StorageError.NotFound, FailureOf(() => Backend.GetSnapshotInfo(name, "nope")));
        Assert.Equal(StorageError.NotFound, FailureOf(() => Backend.OpenSnapshotHandle(name, "nope")));
        Assert.Equal(StorageError.NotFound, FailureOf(() => Backend.CreateSnapshot(Name("none"), "s1")));

        Backend.DeleteSnapshot(name, "s1");
        Assert.Equal(["s2"], Backend.ListSnapshots(name).Select(s => s.Name));
        using var s2 = Backend.OpenSnapshotHandle(name, "s2");
        Assert.Equal(Pattern(64 * 1024, 9), await ReadAsync(s2, 0, 64 * 1024));
    }

    [Fact]
    public async Task A_clone_starts_as_its_snapshot_and_pins_it()
    {
        var name = Name("origin");
        var clone = Name("clone");
        Backend.CreateVolume(name, VolumeBytes);
        using (var v = Backend.OpenVolumeHandle(name))
            await v.WriteAsync(0, Pattern((int)Mi, 10), fua: true);
        Backend.CreateSnapshot(name, "base");
        var info = Backend.CloneSnapshot(name, "base", clone);
        Assert.Equal(clone, info.Name);
        Assert.Equal($"{name}@base", info.Origin);
        Assert.Contains(clone, Backend.GetSnapshotInfo(name, "base").Clones);

        using (var c = Backend.OpenVolumeHandle(clone))
        {
            Assert.Equal(Pattern((int)Mi, 10), await ReadAsync(c, 0, (int)Mi));
            await c.WriteAsync(0, Pattern(Block, 11), fua: true);
            Assert.Equal(Pattern(Block, 11), await ReadAsync(c, 0, Block));

            // Depth 1 where the clone wrote, 2 where it reads through to its origin, 0 where nothing is.
            var depth = new DepthExtent[16];
            int n = c.GetAllocationDepth(0, VolumeBytes, depth);
            Assert.True(n >= 2);
            Assert.Equal(new DepthExtent(0, Block, 1), depth[0]);
            Assert.Equal(2, DepthAt(c, Mi / 2));
            Assert.Equal(0, DepthAt(c, 8 * Mi));
        }
        using (var v = Backend.OpenVolumeHandle(name))
            Assert.Equal(Pattern((int)Mi, 10), await ReadAsync(v, 0, (int)Mi));

        Assert.Equal(StorageError.HasDependents, FailureOf(() => Backend.DeleteSnapshot(name, "base")));
        Assert.Equal(StorageError.AlreadyExists, FailureOf(() => Backend.CloneSnapshot(name, "base", clone)));
        Backend.DeleteVolume(clone, recursive: false);
        Backend.DeleteSnapshot(name, "base");
        Assert.Empty(Backend.ListSnapshots(name));
    }

    private static int DepthAt(IVolumeHandle v, long offset)
    {
        var one = new DepthExtent[1];
        Assert.Equal(1, v.GetAllocationDepth(offset, Block, one));
        Assert.Equal(offset, one[0].Offset);
        return one[0].Depth;
    }

    [Fact]
    public async Task Rollback_restores_the_snapshot_and_guards_newer_ones()
    {
        var name = Name("rollback");
        Backend.CreateVolume(name, VolumeBytes);
        using (var v = Backend.OpenVolumeHandle(name))
            await v.WriteAsync(0, Pattern(Block, 12), fua: true);
        Backend.CreateSnapshot(name, "s1");
        using (var v = Backend.OpenVolumeHandle(name))
            await v.WriteAsync(0, Pattern(Block, 13), fua: true);
        Backend.CreateSnapshot(name, "s2");

        Assert.Equal(StorageError.HasDependents, FailureOf(() => Backend.RollbackVolume(name, "s1", recursive: false)));
        Backend.RollbackVolume(name, "s2", recursive: false);
        Backend.RollbackVolume(name, "s1", recursive: true);
        Assert.Equal(["s1"], Backend.ListSnapshots(name).Select(s => s.Name));
        using var after = Backend.OpenVolumeHandle(name);
        Assert.Equal(Pattern(Block, 12), await ReadAsync(after, 0, Block));
    }

    [Fact]
    public async Task Diff_and_changed_extents_name_exactly_what_changed()
    {
        var name = Name("diff");
        Backend.CreateVolume(name, VolumeBytes);
        using var v = Backend.OpenVolumeHandle(name);
        await v.WriteAsync(0, Pattern((int)Mi, 14), fua: false);
        Backend.CreateSnapshot(name, "s1");
        await v.WriteAsync(8 * Mi, Pattern(64 * 1024, 15), fua: false);
        await v.FlushAsync();

        var diff = Backend.Diff(name, "s1", null);
        Assert.NotEmpty(diff);
        Assert.All(diff, d => Assert.True(d.Offset >= 8 * Mi && d.Offset + d.Length <= 8 * Mi + 64 * 1024, $"unexpected change at {d.Offset}+{d.Length}"));
        Assert.Equal(64 * 1024, diff.Where(d => d.Allocated).Sum(d => d.Length));

        Assert.Contains("s1", v.DirtyBitmapSnapshots);
        var runs = new VolumeExtent[16];
        long changed = 0, pos = 0;
        while (pos < VolumeBytes)
        {
            int n = v.GetChangedExtents("s1", pos, VolumeBytes - pos, runs);
            Assert.True(n > 0);
            for (int i = 0; i < n; i++)
            {
                Assert.Equal(pos, runs[i].Offset);
                if (runs[i].Allocated) changed += runs[i].Length;
                pos += runs[i].Length;
            }
        }
        Assert.Equal(64 * 1024, changed);
        Assert.Equal(StorageError.NotFound, FailureOf(() => v.GetChangedExtents("nope", 0, Block, runs)));
        Assert.Equal(StorageError.NotFound, FailureOf(() => Backend.Diff(name, "nope", null)));
    }

    [Fact]
    public async Task Delete_needs_recursive_for_snapshots_and_frees_the_name()
    {
        var name = Name("delete");
        Backend.CreateVolume(name, VolumeBytes);
        using (var v = Backend.OpenVolumeHandle(name))
            await v.WriteAsync(0, Pattern(Block, 16), fua: true);
        Backend.CreateSnapshot(name, "s1");
        Assert.Equal(StorageError.HasDependents, FailureOf(() => Backend.DeleteVolume(name, recursive: false)));
        Backend.DeleteVolume(name, recursive: true);
        Assert.False(Backend.TryGetVolumeInfo(name, out _));
        Assert.DoesNotContain(Backend.ListSnapshots(), s => s.Volume == name);
        Assert.Equal(StorageError.NotFound, FailureOf(() => Backend.DeleteVolume(name, recursive: false)));

        // The name is free again and the new volume starts empty.
        Backend.CreateVolume(name, VolumeBytes);
        using var fresh = Backend.OpenVolumeHandle(name);
        Assert.Equal(new byte[Block], await ReadAsync(fresh, 0, Block));
    }

    [Fact]
    public async Task Space_usage_counts_unique_and_shared_data()
    {
        var name = Name("space");
        Backend.CreateVolume(name, VolumeBytes);
        using (var v = Backend.OpenVolumeHandle(name))
        {
            await v.WriteAsync(0, Pattern((int)(4 * Mi), 17), fua: true);
            Backend.CreateSnapshot(name, "s1");
            await v.WriteAsync(0, Pattern((int)Mi, 18), fua: true);
        }
        var usage = Backend.GetSpaceUsage();
        var volume = Assert.Single(usage, u => u.Name == name);
        var snapshot = Assert.Single(usage, u => u.Name == $"{name}@s1");
        Assert.False(volume.IsSnapshot);
        Assert.True(snapshot.IsSnapshot);
        Assert.True(volume.AllocatedBytes >= 4 * Mi);
        Assert.True(snapshot.AllocatedBytes >= 4 * Mi);
        Assert.Equal(volume.AllocatedBytes - volume.UniqueBytes, volume.SharedBytes);
        Assert.True(volume.UniqueBytes >= Mi, "the overwritten MiB is the volume's own");

        var store = Backend.GetUsage();
        Assert.True(store.VolumeCount >= 1);
        Assert.True(store.ProvisionedBytes >= VolumeBytes);
    }

    [Fact]
    public async Task Many_requests_in_flight_on_one_handle_all_complete()
    {
        var name = Name("inflight");
        Backend.CreateVolume(name, VolumeBytes);
        using var v = Backend.OpenVolumeHandle(name);
        var writes = new List<Task>();
        for (int i = 0; i < 64; i++)
            writes.Add(v.WriteAsync(i * 64L * 1024, Pattern(64 * 1024, 100 + i), fua: false).AsTask());
        await Task.WhenAll(writes);
        await v.FlushAsync();
        var reads = new List<Task<byte[]>>();
        for (int i = 0; i < 64; i++) reads.Add(ReadAsync(v, i * 64L * 1024, 64 * 1024));
        var results = await Task.WhenAll(reads);
        for (int i = 0; i < 64; i++) Assert.Equal(Pattern(64 * 1024, 100 + i), results[i]);
    }

    [Fact]
    public void Kind_and_location_name_the_backend()
    {
        Assert.False(string.IsNullOrEmpty(Backend.Kind));
        Assert.False(string.IsNullOrEmpty(Backend.Location));
    }
}
