using Xunit;

namespace Platter.Contract.Tests;

/// <summary>
/// What every <see cref="IVolumeBackend"/> must do, as the server, the management API and the CLI rely on it: the
/// catalog, I/O, snapshots, clones, rollback, diffs, block status and space. One suite, one fixture class per backend
/// (<see cref="EmbeddedBackendTests"/>, <see cref="RbdBackendTests"/>): a subclass supplies the backend, a way to
/// close and reopen it, and the properties in which backends may differ. Every test runs on every backend; where the
/// answers legitimately differ (a backend reports allocation, depth and changes per 4 KiB block or per 4 MiB
/// object), the layouts are built from <see cref="AllocationUnit"/>, so each backend is held to its own granularity
/// rather than excused. Tests use names of their own (a fixture may share one backend, or a whole cluster, between
/// tests) and talk only through the seam.
/// </summary>
public abstract class BackendContractTests
{
    private const int Block = 4096;
    private const long Mi = 1L << 20;

    /// <summary>32 MiB: whole 4 MiB objects, and room for eight allocation units of any backend here.</summary>
    private const long VolumeBytes = 32 * Mi;

    /// <summary>The backend under test.</summary>
    protected abstract IVolumeBackend Backend { get; }

    /// <summary>Closes the backend (as a server stopping) and opens the same store again.</summary>
    protected abstract void Reopen();

    /// <summary>
    /// The granularity of the backend's answers about space (extents, allocation depth, diffs, changed extents): a
    /// written block is always reported, and the report around it may widen to the whole unit that holds it, never
    /// further; a unit nothing was written to is a hole. (RBD reports a clone's own data per object but what it reads
    /// through from its parent more finely, so "may widen" is the promise, not "always widens".) A power of two, at
    /// least 4 KiB, and at most an eighth of the test volume.
    /// </summary>
    protected abstract long AllocationUnit { get; }

    /// <summary>What <see cref="IVolumeBackend.Kind"/> must say.</summary>
    protected abstract string ExpectedKind { get; }

    private readonly string _prefix = $"c{Guid.NewGuid():N}"[..10];

    private string Name(string suffix) => $"{_prefix}-{suffix}";

    private long Unit
    {
        get
        {
            long u = AllocationUnit;
            Assert.True(u >= Block && (u & (u - 1)) == 0 && 8 * u <= VolumeBytes, $"allocation unit {u} does not fit the suite's layouts");
            return u;
        }
    }

    private static byte[] Pattern(long length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    private static async Task<byte[]> ReadAsync(IVolumeHandle handle, long offset, long length)
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
        Assert.Null(created.Origin);

        var mine = Backend.ListVolumes().Where(v => v.Name.StartsWith(_prefix, StringComparison.Ordinal)).Select(v => v.Name).ToList();
        Assert.Equal([a, b], mine); // ordered by name

        Assert.Equal(2 * VolumeBytes, Backend.GetVolumeInfo(a).SizeBytes);
        Assert.True(Backend.TryGetVolumeInfo(a, out var info));
        Assert.Equal(a, info!.Name);
        Assert.False(Backend.TryGetVolumeInfo(Name("none"), out _));
        Assert.Equal(StorageError.NotFound, FailureOf(() => Backend.GetVolumeInfo(Name("none"))));
        Assert.Equal(StorageError.AlreadyExists, FailureOf(() => Backend.CreateVolume(a, VolumeBytes)));
        Assert.Equal(StorageError.InvalidName, FailureOf(() => Backend.CreateVolume("bad/name", VolumeBytes)));
        Assert.Equal(StorageError.InvalidName, FailureOf(() => Backend.CreateVolume("a@b", VolumeBytes)));
        Assert.Equal(StorageError.InvalidName, FailureOf(() => Backend.CreateVolume("", VolumeBytes)));
        // Names that cannot be managed afterwards (URL dot segments, option-like, display-spoofing) are refused too.
        foreach (var bad in new[] { ".", "..", "-x", "rtl\u202Etxt", "esc\u001b" })
        {
            Assert.Equal(StorageError.InvalidName, FailureOf(() => Backend.CreateVolume(bad, VolumeBytes)));
            Assert.Equal(StorageError.InvalidName, FailureOf(() => Backend.RenameVolume(a, bad)));
            Assert.Equal(StorageError.InvalidName, FailureOf(() => Backend.CreateSnapshot(a, bad)));
        }
        Assert.Equal(StorageError.InvalidArgument, FailureOf(() => Backend.CreateVolume(Name("zero"), 0)));
        Assert.Equal(StorageError.InvalidArgument, FailureOf(() => Backend.CreateVolume(Name("odd"), 1000)));
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
        Assert.Equal(new byte[8192], await ReadAsync(v, 20 * Mi, 8192));
        Assert.Equal(new byte[Block], await ReadAsync(v, VolumeBytes - Block, Block));

        // Unaligned writes and reads: the backend does the read-modify-write.
        var small = Pattern(1000, 2);
        await v.WriteAsync(Mi + 333, small, fua: true);
        var expected = (byte[])data.Clone();
        small.CopyTo(expected, 333);
        Assert.Equal(expected, await ReadAsync(v, Mi, data.Length));
        Assert.Equal(small, await ReadAsync(v, Mi + 333, small.Length));
        await v.WriteAsync(5 * Mi + 100, small, fua: false);
        await v.FlushAsync();
        Assert.Equal(small, await ReadAsync(v, 5 * Mi + 100, small.Length));
        Assert.Equal(new byte[100], await ReadAsync(v, 5 * Mi, 100));
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
        // Counted when asked; a plain lookup and a list either count the same or say they did not (null), never 0.
        long allocated = Backend.GetVolumeInfo(name, withAllocation: true).AllocatedBytes!.Value;
        Assert.True(allocated >= data.Length, $"{allocated} allocated after writing {data.Length}");
        Assert.True(Backend.GetVolumeInfo(name).AllocatedBytes is null || Backend.GetVolumeInfo(name).AllocatedBytes == allocated);
        Assert.True(Backend.ListVolumes().Single(v => v.Name == name).AllocatedBytes is null or > 0);
    }

    [Fact]
    public async Task Trim_and_write_zeroes_read_as_zeros_and_report_allocation()
    {
        long u = Unit;
        var name = Name("zero");
        Backend.CreateVolume(name, VolumeBytes);
        using var v = Backend.OpenVolumeHandle(name);
        var expected = Pattern(4 * u, 4); // units 0 to 3 written; 4 to 7 never
        await v.WriteAsync(0, expected, fua: false);

        await v.TrimAsync(u, u, fua: false); // unit 1, whole
        await v.WriteZeroesAsync(2 * u, Block, deallocate: false, fua: true); // the first block of unit 2
        await v.WriteZeroesAsync(4 * u - Block, Block, deallocate: true, fua: false); // the last block of unit 3
        Array.Clear(expected, (int)u, (int)u);
        Array.Clear(expected, (int)(2 * u), Block);
        Array.Clear(expected, (int)(4 * u - Block), Block);
        Assert.Equal(expected, await ReadAsync(v, 0, 4 * u));
        Assert.Equal(new byte[Block], await ReadAsync(v, 6 * u, Block));

        Assert.True(IsAllocated(v, 0, u), "the untouched written unit is data");
        Assert.False(IsAllocated(v, u, u), "a unit trimmed whole is a hole");
        Assert.True(IsAllocated(v, 2 * u, Block), "zeros written without deallocating stay allocated");
        Assert.False(IsAllocated(v, 4 * u, 4 * u), "never-written units are holes");
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
            for (int i = 0; i < n && pos < end; i++)
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
        Assert.Equal(StorageError.NotFound, FailureOf(() => Backend.ResizeVolume(Name("none"), VolumeBytes)));
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
        Assert.Equal(VolumeBytes, Backend.GetVolumeInfo(newName).SizeBytes);
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
        Assert.Empty(s1.Clones);
        // Allocated bytes: a create may leave them unknown (RBD: counting them walks the image, and a create must not
        // cost that), never wrong; describing the snapshot always counts them.
        long allocated = (64 * 1024 + Unit - 1) / Unit * Unit;
        Assert.True(s1.AllocatedBytes is null || s1.AllocatedBytes == allocated, $"created {s1.FullName} says {s1.AllocatedBytes} allocated");
        Assert.Equal(allocated, Backend.GetSnapshotInfo(name, "s1").AllocatedBytes);

        await v.WriteAsync(0, Pattern(64 * 1024, 9), fua: false);
        await v.TrimAsync(Mi, Mi, fua: false);
        Backend.CreateSnapshot(name, "s2");
        Assert.Equal(2, Backend.GetVolumeInfo(name).SnapshotCount);

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
        Assert.All(Backend.ListSnapshots(name), s => Assert.True(s.AllocatedBytes is null || s.AllocatedBytes == Backend.GetSnapshotInfo(name, s.Name).AllocatedBytes,
            $"listed {s.FullName} says {s.AllocatedBytes} allocated, described {Backend.GetSnapshotInfo(name, s.Name).AllocatedBytes}"));
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
    public async Task A_clone_starts_as_its_snapshot_reads_through_to_it_and_pins_it()
    {
        long u = Unit;
        var name = Name("origin");
        var clone = Name("clone");
        Backend.CreateVolume(name, VolumeBytes);
        var data = Pattern(2 * u, 10); // units 0 and 1
        using (var v = Backend.OpenVolumeHandle(name))
        {
            await v.WriteAsync(0, data, fua: false);
            await v.WriteAsync(4 * u, Pattern(Block, 11), fua: false); // unit 4
            await v.FlushAsync();
        }
        Backend.CreateSnapshot(name, "base");
        var info = Backend.CloneSnapshot(name, "base", clone);
        Assert.Equal(clone, info.Name);
        Assert.Equal($"{name}@base", info.Origin);
        Assert.Equal(VolumeBytes, info.SizeBytes);
        Assert.Equal([clone], Backend.GetSnapshotInfo(name, "base").Clones);

        using (var c = Backend.OpenVolumeHandle(clone))
        {
            Assert.Equal(data, await ReadAsync(c, 0, data.Length));
            await c.WriteAsync(0, Pattern(Block, 12), fua: true);
            Assert.Equal(Pattern(Block, 12), await ReadAsync(c, 0, Block));

            // Depth 1 where the clone wrote (its whole unit), 2 where it reads through to its origin, 0 where nothing is.
            var depth = new DepthExtent[16];
            int n = c.GetAllocationDepth(0, VolumeBytes, depth);
            Assert.True(n >= 2);
            Assert.Equal(new DepthExtent(0, u, 1), depth[0]);
            Assert.Equal(2, DepthAt(c, u));
            Assert.Equal(2, DepthAt(c, 4 * u));
            Assert.Equal(0, DepthAt(c, 2 * u));
            Assert.Equal(0, DepthAt(c, 6 * u));
            // base:allocation counts what the origin provides as allocated.
            Assert.True(IsAllocated(c, u, u));
            Assert.True(IsAllocated(c, 4 * u, Block));
            Assert.False(IsAllocated(c, 6 * u, 2 * u));
        }
        using (var snapshot = Backend.OpenSnapshotHandle(name, "base"))
            Assert.Equal(data, await ReadAsync(snapshot, 0, data.Length)); // the clone's writes do not reach its origin
        using (var v = Backend.OpenVolumeHandle(name))
            Assert.Equal(data, await ReadAsync(v, 0, data.Length));

        Assert.Equal(StorageError.HasDependents, FailureOf(() => Backend.DeleteSnapshot(name, "base")));
        Assert.Equal(StorageError.HasDependents, FailureOf(() => Backend.DeleteVolume(name, recursive: true)));
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
            await v.WriteAsync(0, Pattern(Block, 13), fua: true);
        Backend.CreateSnapshot(name, "s1");
        using (var v = Backend.OpenVolumeHandle(name))
            await v.WriteAsync(0, Pattern(Block, 14), fua: true);
        Backend.CreateSnapshot(name, "s2");

        Assert.Equal(StorageError.HasDependents, FailureOf(() => Backend.RollbackVolume(name, "s1", recursive: false)));
        Backend.RollbackVolume(name, "s2", recursive: false);
        Backend.RollbackVolume(name, "s1", recursive: true);
        Assert.Equal(["s1"], Backend.ListSnapshots(name).Select(s => s.Name));
        using var after = Backend.OpenVolumeHandle(name);
        Assert.Equal(Pattern(Block, 13), await ReadAsync(after, 0, Block));
    }

    [Fact]
    public async Task Diff_and_changed_extents_name_exactly_what_changed()
    {
        long u = Unit;
        var name = Name("diff");
        Backend.CreateVolume(name, VolumeBytes);
        using var v = Backend.OpenVolumeHandle(name);
        await v.WriteAsync(0, Pattern(Block, 15), fua: false);
        await v.WriteAsync(4 * u, Pattern(Block, 15), fua: false);
        Backend.CreateSnapshot(name, "s");
        await v.WriteAsync(2 * u, Pattern(Block, 16), fua: false);
        await v.TrimAsync(4 * u, Block, fua: false);
        await v.FlushAsync();
        Backend.CreateSnapshot(name, "t");

        var diff = Backend.Diff(name, "s", null);
        Assert.True(Covers(diff, 2 * u, Block), Show(diff));
        Assert.True(Covers(diff, 4 * u, Block), Show(diff)); // trimmed since: changed (now zeros)
        Assert.False(Touches(diff, 0, u), Show(diff)); // written before the snapshot only
        Assert.False(Touches(diff, u, u), Show(diff));
        Assert.False(Touches(diff, 6 * u, 2 * u), Show(diff));
        // Only unit 2 holds new data; the backend names it at its granularity, never more than the unit.
        Assert.InRange(diff.Where(d => d.Allocated && d.Offset < 4 * u).Sum(d => d.Length), Block, u);
        Assert.Equal(diff, Backend.Diff(name, "s", "t"));
        Assert.Empty(Backend.Diff(name, "t", null));
        Assert.Equal(StorageError.NotFound, FailureOf(() => Backend.Diff(name, "nope", null)));

        Assert.Equal(["s", "t"], v.DirtyBitmapSnapshots);
        var runs = new VolumeExtent[4]; // small on purpose: the client resumes from the end of each reply
        var changed = new List<VolumeExtent>();
        long pos = 0;
        while (pos < VolumeBytes)
        {
            int n = v.GetChangedExtents("s", pos, VolumeBytes - pos, runs);
            Assert.True(n > 0);
            for (int i = 0; i < n; i++)
            {
                Assert.Equal(pos, runs[i].Offset);
                changed.Add(runs[i]);
                pos += runs[i].Length;
            }
        }
        Assert.True(ChangedAt(changed, 2 * u));
        Assert.True(ChangedAt(changed, 4 * u));
        Assert.False(ChangedAt(changed, 0));
        Assert.False(ChangedAt(changed, 6 * u));
        Assert.InRange(changed.Where(e => e.Allocated).Sum(e => e.Length), 2 * Block, 2 * u);
        Assert.Equal(StorageError.NotFound, FailureOf(() => v.GetChangedExtents("nope", 0, Block, runs)));

        Assert.True(IsAllocated(v, 0, Block));
        Assert.True(IsAllocated(v, 2 * u, Block));
        Assert.False(IsAllocated(v, u, u));
        Assert.False(IsAllocated(v, 6 * u, 2 * u));
        var one = new VolumeExtent[1];
        Assert.Equal(1, v.GetExtents(0, VolumeBytes, one));
        Assert.Equal(0, one[0].Offset);
        Assert.True(one[0].Length > 0);
    }

    private static bool ChangedAt(List<VolumeExtent> extents, long offset) =>
        extents.Single(e => e.Offset <= offset && offset < e.Offset + e.Length).Allocated;

    private static bool Covers(IReadOnlyList<ChangedExtent> diff, long offset, long length) =>
        diff.Any(e => e.Offset <= offset && offset + length <= e.Offset + e.Length);

    private static bool Touches(IReadOnlyList<ChangedExtent> diff, long offset, long length) =>
        diff.Any(e => e.Offset < offset + length && offset < e.Offset + e.Length);

    private static string Show(IReadOnlyList<ChangedExtent> diff) => string.Join(", ", diff.Select(e => $"{e.Offset}+{e.Length}:{e.Allocated}"));

    [Fact]
    public async Task Delete_needs_recursive_for_snapshots_and_frees_the_name()
    {
        var name = Name("delete");
        Backend.CreateVolume(name, VolumeBytes);
        using (var v = Backend.OpenVolumeHandle(name))
            await v.WriteAsync(0, Pattern(Block, 17), fua: true);
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
    public async Task Deleting_a_volume_closes_its_handles()
    {
        var name = Name("closed");
        Backend.CreateVolume(name, VolumeBytes);
        var handle = Backend.OpenVolumeHandle(name);
        await handle.WriteAsync(0, Pattern(Block, 18), fua: true);
        Backend.DeleteVolume(name, recursive: false);
        Assert.Equal(StorageError.Closed, await FailureOf(async () => await handle.ReadAsync(0, new byte[Block])));
        handle.Dispose();
        Assert.False(Backend.TryGetVolumeInfo(name, out _));
    }

    [Fact]
    public async Task Space_usage_counts_unique_and_shared_data_and_the_store_checks_clean()
    {
        var name = Name("space");
        Backend.CreateVolume(name, VolumeBytes);
        using (var v = Backend.OpenVolumeHandle(name))
        {
            await v.WriteAsync(0, Pattern(4 * Mi, 19), fua: true);
            Backend.CreateSnapshot(name, "s1");
            await v.WriteAsync(0, Pattern(Mi, 20), fua: true);
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
        var check = Backend.Check(verifyChecksums: true);
        Assert.True(check.Ok, string.Join("; ", check.Problems));
    }

    [Fact]
    public async Task Many_requests_in_flight_complete_and_handles_of_one_volume_share_data()
    {
        var name = Name("inflight");
        Backend.CreateVolume(name, VolumeBytes);
        using var a = Backend.OpenVolumeHandle(name);
        using var b = Backend.OpenVolumeHandle(name);
        var writes = new List<Task>();
        for (int i = 0; i < 64; i++)
            writes.Add(a.WriteAsync(i * 64L * 1024, Pattern(64 * 1024, 100 + i), fua: false).AsTask());
        await Task.WhenAll(writes);
        // A flush on any handle covers the writes acknowledged on all of them (what NBD multi-conn promises).
        Assert.True(b.FlushCoversAllHandles);
        await b.FlushAsync();
        var reads = new List<Task<byte[]>>();
        for (int i = 0; i < 64; i++) reads.Add(ReadAsync(b, i * 64L * 1024, 64 * 1024));
        var results = await Task.WhenAll(reads);
        for (int i = 0; i < 64; i++) Assert.Equal(Pattern(64 * 1024, 100 + i), results[i]);
    }

    [Fact]
    public void Kind_and_location_name_the_backend()
    {
        Assert.Equal(ExpectedKind, Backend.Kind);
        Assert.False(string.IsNullOrEmpty(Backend.Location));
    }
}
