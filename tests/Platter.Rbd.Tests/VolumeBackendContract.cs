using Platter.Volumes;
using Xunit;

namespace Platter.Rbd.Tests;

/// <summary>
/// What every backend behind the seam promises, as one suite run against each (subclasses supply the backend): the
/// catalog, I/O, snapshots, clones, rollback, diffs and block status. Where the backends may differ in granularity
/// (RBD reports allocation per 4 MiB object, the embedded engine per 4 KiB block), the assertions use layouts whose
/// written and untouched regions lie in different 4 MiB objects, so both must give the same answer.
/// </summary>
public abstract class VolumeBackendContract : IDisposable
{
    protected const long MiB = 1 << 20;
    protected const long SizeBytes = 32 * MiB;

    protected abstract IVolumeBackend Backend { get; }

    protected string Name(string prefix) => CephCluster.UniqueName(prefix);

    public abstract void Dispose();

    protected static byte[] Pattern(int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    protected static async Task<byte[]> ReadAsync(IVolumeHandle handle, long offset, int length)
    {
        var buffer = new byte[length];
        await handle.ReadAsync(offset, buffer);
        return buffer;
    }

    [Fact]
    public void Catalog_create_list_info_resize_rename_delete()
    {
        string name = Name("cat");
        var info = Backend.CreateVolume(name, SizeBytes);
        Assert.Equal(name, info.Name);
        Assert.Equal(SizeBytes, info.SizeBytes);
        Assert.Null(info.Origin);
        Assert.Contains(Backend.ListVolumes(), v => v.Name == name);
        Assert.Equal(StorageError.AlreadyExists, Assert.Throws<StorageException>(() => Backend.CreateVolume(name, SizeBytes)).Error);
        Assert.Equal(StorageError.InvalidName, Assert.Throws<StorageException>(() => Backend.CreateVolume("a@b", SizeBytes)).Error);
        Assert.Equal(StorageError.InvalidArgument, Assert.Throws<StorageException>(() => Backend.CreateVolume(Name("odd"), 1000)).Error);

        Backend.ResizeVolume(name, 2 * SizeBytes);
        Assert.Equal(2 * SizeBytes, Backend.GetVolumeInfo(name).SizeBytes);
        Backend.ResizeVolume(name, SizeBytes / 2);
        Assert.Equal(SizeBytes / 2, Backend.GetVolumeInfo(name).SizeBytes);

        string renamed = name + "-r";
        Backend.RenameVolume(name, renamed);
        Assert.False(Backend.TryGetVolumeInfo(name, out _));
        Assert.True(Backend.TryGetVolumeInfo(renamed, out var after));
        Assert.Equal(SizeBytes / 2, after!.SizeBytes);

        Backend.DeleteVolume(renamed, recursive: false);
        Assert.Equal(StorageError.NotFound, Assert.Throws<StorageException>(() => Backend.GetVolumeInfo(renamed)).Error);
        Assert.Equal(StorageError.NotFound, Assert.Throws<StorageException>(() => Backend.DeleteVolume(renamed, false)).Error);
    }

    [Fact]
    public async Task Io_round_trip_zeros_trim_and_write_zeroes()
    {
        string name = Name("io");
        Backend.CreateVolume(name, SizeBytes);
        using var handle = Backend.OpenVolumeHandle(name);
        Assert.Equal(SizeBytes, handle.SizeBytes);
        Assert.False(handle.IsReadOnly);
        var data = Pattern(64 * 1024, 1);
        await handle.WriteAsync(MiB, data, fua: false);
        await handle.WriteAsync(5 * MiB + 100, data.AsMemory(0, 1000), fua: true); // unaligned
        await handle.FlushAsync();
        Assert.Equal(data, await ReadAsync(handle, MiB, data.Length));
        Assert.Equal(data[..1000], await ReadAsync(handle, 5 * MiB + 100, 1000));
        Assert.All(await ReadAsync(handle, 20 * MiB, 8192), b => Assert.Equal(0, b)); // never written

        await handle.TrimAsync(MiB, 8192, fua: false);
        Assert.All(await ReadAsync(handle, MiB, 8192), b => Assert.Equal(0, b));
        Assert.Equal(data[8192..], await ReadAsync(handle, MiB + 8192, data.Length - 8192));
        await handle.WriteZeroesAsync(MiB + 16384, 4096, deallocate: false, fua: false);
        await handle.WriteZeroesAsync(MiB + 32768, 4096, deallocate: true, fua: false);
        var back = await ReadAsync(handle, MiB, data.Length);
        Assert.All(back.AsSpan(16384, 4096).ToArray(), b => Assert.Equal(0, b));
        Assert.All(back.AsSpan(32768, 4096).ToArray(), b => Assert.Equal(0, b));
        Assert.Equal(data[20480..32768], back[20480..32768]);
    }

    [Fact]
    public async Task Many_requests_in_flight_and_handles_of_one_volume_share_data()
    {
        string name = Name("par");
        Backend.CreateVolume(name, SizeBytes);
        using var a = Backend.OpenVolumeHandle(name);
        using var b = Backend.OpenVolumeHandle(name);
        var writes = Enumerable.Range(0, 64).Select(i => a.WriteAsync(i * 65536L, Pattern(65536, i), fua: false).AsTask());
        await Task.WhenAll(writes);
        await b.FlushAsync(); // a flush on any handle covers writes acknowledged on all (multi-conn)
        Assert.True(b.FlushCoversAllHandles);
        var reads = Enumerable.Range(0, 64).Select(async i => (i, await ReadAsync(b, i * 65536L, 65536)));
        foreach (var (i, bytes) in await Task.WhenAll(reads)) Assert.Equal(Pattern(65536, i), bytes);
    }

    [Fact]
    public async Task Snapshots_freeze_content_and_are_read_only()
    {
        string name = Name("snap");
        Backend.CreateVolume(name, SizeBytes);
        var first = Pattern(8192, 2);
        var second = Pattern(8192, 3);
        using (var handle = Backend.OpenVolumeHandle(name))
        {
            await handle.WriteAsync(0, first, fua: false);
            await handle.FlushAsync();
            var snap = Backend.CreateSnapshot(name, "s1");
            Assert.Equal("s1", snap.Name);
            Assert.Equal(name, snap.Volume);
            Assert.Equal(SizeBytes, snap.SizeBytes);
            Assert.Empty(snap.Clones);
            await handle.WriteAsync(0, second, fua: false);
            await handle.FlushAsync();
            Assert.Equal(second, await ReadAsync(handle, 0, 8192));
        }
        Assert.Equal(StorageError.AlreadyExists, Assert.Throws<StorageException>(() => Backend.CreateSnapshot(name, "s1")).Error);
        Backend.CreateSnapshot(name, "s2");
        Assert.Equal(["s1", "s2"], Backend.ListSnapshots(name).Select(s => s.Name));
        Assert.Contains(Backend.ListSnapshots(), s => s.FullName == $"{name}@s1");
        Assert.Equal(2, Backend.GetVolumeInfo(name).SnapshotCount);
        using (var snapshot = Backend.OpenSnapshotHandle(name, "s1"))
        {
            Assert.True(snapshot.IsReadOnly);
            Assert.Equal($"{name}@s1", snapshot.Name);
            Assert.Equal(first, await ReadAsync(snapshot, 0, 8192));
            var refused = await Assert.ThrowsAsync<StorageException>(async () => await snapshot.WriteAsync(0, second, false));
            Assert.Equal(StorageError.ReadOnly, refused.Error);
        }
        Assert.Equal(StorageError.NotFound, Assert.Throws<StorageException>(() => Backend.OpenSnapshotHandle(name, "nope")).Error);
        Backend.DeleteSnapshot(name, "s2");
        Assert.Equal(["s1"], Backend.ListSnapshots(name).Select(s => s.Name));
        Assert.Equal(StorageError.HasDependents, Assert.Throws<StorageException>(() => Backend.DeleteVolume(name, recursive: false)).Error);
        Backend.DeleteVolume(name, recursive: true);
        Assert.False(Backend.TryGetVolumeInfo(name, out _));
    }

    [Fact]
    public async Task Clones_start_as_the_snapshot_diverge_and_pin_it()
    {
        string name = Name("orig");
        string clone = Name("clone");
        Backend.CreateVolume(name, SizeBytes);
        var data = Pattern(16384, 4);
        using (var handle = Backend.OpenVolumeHandle(name))
        {
            await handle.WriteAsync(0, data, fua: false);
            await handle.FlushAsync();
        }
        Backend.CreateSnapshot(name, "base");
        var info = Backend.CloneSnapshot(name, "base", clone);
        Assert.Equal($"{name}@base", info.Origin);
        Assert.Equal(SizeBytes, info.SizeBytes);
        Assert.Equal([clone], Backend.GetSnapshotInfo(name, "base").Clones);
        using (var handle = Backend.OpenVolumeHandle(clone))
        {
            Assert.Equal(data, await ReadAsync(handle, 0, data.Length));
            await handle.WriteAsync(8 * MiB, Pattern(4096, 5), fua: true);
            await handle.WriteAsync(0, Pattern(4096, 6), fua: true);

            // depth: written by the clone 1, inherited 2, never written 0
            var depth = new DepthExtent[16];
            int n = handle.GetAllocationDepth(0, SizeBytes, depth);
            Assert.Equal(1, DepthAt(depth, n, 0));
            Assert.Equal(1, DepthAt(depth, n, 8 * MiB));
            Assert.Equal(0, DepthAt(depth, n, 20 * MiB));
        }
        using (var snapshot = Backend.OpenSnapshotHandle(name, "base"))
        {
            Assert.Equal(data, await ReadAsync(snapshot, 0, data.Length)); // the clone's writes do not reach its origin
        }
        Assert.Equal(StorageError.HasDependents, Assert.Throws<StorageException>(() => Backend.DeleteSnapshot(name, "base")).Error);
        Assert.Equal(StorageError.HasDependents, Assert.Throws<StorageException>(() => Backend.DeleteVolume(name, recursive: true)).Error);
        Backend.DeleteVolume(clone, recursive: false);
        Backend.DeleteVolume(name, recursive: true);
    }

    [Fact]
    public async Task Clone_inherits_data_at_depth_two()
    {
        string name = Name("deep");
        string clone = Name("deepc");
        Backend.CreateVolume(name, SizeBytes);
        using (var handle = Backend.OpenVolumeHandle(name))
        {
            await handle.WriteAsync(12 * MiB, Pattern(4096, 9), fua: true);
        }
        Backend.CreateSnapshot(name, "base");
        Backend.CloneSnapshot(name, "base", clone);
        using (var handle = Backend.OpenVolumeHandle(clone))
        {
            var depth = new DepthExtent[16];
            int n = handle.GetAllocationDepth(0, SizeBytes, depth);
            Assert.Equal(2, DepthAt(depth, n, 12 * MiB));
            Assert.Equal(0, DepthAt(depth, n, 4 * MiB));
            var extents = new VolumeExtent[16];
            int e = handle.GetExtents(0, SizeBytes, extents);
            Assert.True(AllocatedAt(extents, e, 12 * MiB)); // base:allocation includes what the origin provides
            Assert.False(AllocatedAt(extents, e, 4 * MiB));
        }
        Backend.DeleteVolume(clone, false);
        Backend.DeleteVolume(name, true);
    }

    [Fact]
    public async Task Rollback_restores_the_snapshot_and_refuses_past_newer_ones()
    {
        string name = Name("roll");
        Backend.CreateVolume(name, SizeBytes);
        var first = Pattern(4096, 7);
        using (var handle = Backend.OpenVolumeHandle(name))
        {
            await handle.WriteAsync(0, first, fua: true);
        }
        Backend.CreateSnapshot(name, "a");
        using (var handle = Backend.OpenVolumeHandle(name))
        {
            await handle.WriteAsync(0, Pattern(4096, 8), fua: true);
        }
        Backend.CreateSnapshot(name, "b");
        Assert.Equal(StorageError.HasDependents, Assert.Throws<StorageException>(() => Backend.RollbackVolume(name, "a", recursive: false)).Error);
        Backend.RollbackVolume(name, "a", recursive: true);
        Assert.Equal(["a"], Backend.ListSnapshots(name).Select(s => s.Name));
        using (var handle = Backend.OpenVolumeHandle(name))
        {
            Assert.Equal(first, await ReadAsync(handle, 0, 4096));
        }
        Backend.DeleteVolume(name, recursive: true);
    }

    [Fact]
    public async Task Diff_and_changed_extents_report_what_changed_since_a_snapshot()
    {
        string name = Name("diff");
        Backend.CreateVolume(name, SizeBytes);
        using var handle = Backend.OpenVolumeHandle(name);
        await handle.WriteAsync(0, Pattern(4096, 10), fua: true);
        await handle.WriteAsync(16 * MiB, Pattern(4096, 10), fua: true);
        Backend.CreateSnapshot(name, "s");
        await handle.WriteAsync(8 * MiB + 4096, Pattern(8192, 11), fua: true);
        await handle.TrimAsync(16 * MiB, 4096, fua: true);
        Backend.CreateSnapshot(name, "t");

        var diff = Backend.Diff(name, "s", null);
        Assert.True(Covers(diff, 8 * MiB + 4096, 8192), Show(diff));
        Assert.True(Covers(diff, 16 * MiB, 4096), Show(diff)); // trimmed since: changed (now zeros)
        Assert.False(Touches(diff, 0, 4 * MiB), Show(diff)); // written before the snapshot only
        Assert.False(Touches(diff, 24 * MiB, 8 * MiB), Show(diff));
        Assert.Equal(diff, Backend.Diff(name, "s", "t"));
        Assert.Empty(Backend.Diff(name, "t", null));
        Assert.Equal(StorageError.NotFound, Assert.Throws<StorageException>(() => Backend.Diff(name, "zz", null)).Error);

        Assert.Equal(["s", "t"], handle.DirtyBitmapSnapshots);
        var changed = new VolumeExtent[32];
        int n = handle.GetChangedExtents("s", 0, SizeBytes, changed);
        Assert.True(AllocatedAt(changed, n, 8 * MiB + 4096));
        Assert.True(AllocatedAt(changed, n, 16 * MiB));
        Assert.False(AllocatedAt(changed, n, 0));
        Assert.Equal(SizeBytes, changed[..n].Sum(e => e.Length));
        Assert.Equal(StorageError.NotFound, Assert.Throws<StorageException>(() => handle.GetChangedExtents("zz", 0, SizeBytes, changed)).Error);

        var extents = new VolumeExtent[32];
        int m = handle.GetExtents(0, SizeBytes, extents);
        Assert.Equal(0, extents[0].Offset);
        Assert.Equal(SizeBytes, extents[..m].Sum(e => e.Length));
        Assert.True(AllocatedAt(extents, m, 0));
        Assert.True(AllocatedAt(extents, m, 8 * MiB + 4096));
        Assert.False(AllocatedAt(extents, m, 4 * MiB));
        Assert.False(AllocatedAt(extents, m, 28 * MiB));
        // a reply with room for one run covers a prefix, and the client resumes from its end
        var one = new VolumeExtent[1];
        Assert.Equal(1, handle.GetExtents(0, SizeBytes, one));
        Assert.Equal(0, one[0].Offset);
        Assert.True(one[0].Length > 0);
    }

    [Fact]
    public async Task Space_usage_and_store_usage_count_the_volumes()
    {
        string name = Name("du");
        Backend.CreateVolume(name, SizeBytes);
        using (var handle = Backend.OpenVolumeHandle(name))
        {
            await handle.WriteAsync(0, Pattern(65536, 12), fua: true);
        }
        Backend.CreateSnapshot(name, "s");
        var usage = Backend.GetSpaceUsage();
        var volume = Assert.Single(usage, u => u.Name == name);
        var snapshot = Assert.Single(usage, u => u.Name == $"{name}@s");
        Assert.True(snapshot.IsSnapshot);
        Assert.True(volume.AllocatedBytes >= 65536);
        Assert.Equal(volume.AllocatedBytes, volume.UniqueBytes + volume.SharedBytes);
        var store = Backend.GetUsage();
        Assert.True(store.VolumeCount >= 1);
        Assert.True(store.ProvisionedBytes >= SizeBytes);
        Assert.True(Backend.Check(verifyChecksums: true).Ok);
        Backend.DeleteVolume(name, recursive: true);
    }

    [Fact]
    public async Task Deleting_a_volume_closes_its_handles()
    {
        string name = Name("del");
        Backend.CreateVolume(name, SizeBytes);
        var handle = Backend.OpenVolumeHandle(name);
        await handle.WriteAsync(0, Pattern(4096, 13), fua: true);
        Backend.DeleteVolume(name, recursive: false);
        var error = await Assert.ThrowsAsync<StorageException>(async () => await handle.ReadAsync(0, new byte[4096]));
        Assert.Equal(StorageError.Closed, error.Error);
        handle.Dispose();
        Assert.False(Backend.TryGetVolumeInfo(name, out _));
    }

    private static int DepthAt(DepthExtent[] extents, int count, long offset) =>
        extents[..count].Single(e => e.Offset <= offset && offset < e.Offset + e.Length).Depth;

    private static bool AllocatedAt(VolumeExtent[] extents, int count, long offset) =>
        extents[..count].Single(e => e.Offset <= offset && offset < e.Offset + e.Length).Allocated;

    private static bool Covers(IReadOnlyList<ChangedExtent> diff, long offset, long length) =>
        diff.Any(e => e.Offset <= offset && offset + length <= e.Offset + e.Length);

    private static bool Touches(IReadOnlyList<ChangedExtent> diff, long offset, long length) =>
        diff.Any(e => e.Offset < offset + length && offset < e.Offset + e.Length);

    private static string Show(IReadOnlyList<ChangedExtent> diff) => string.Join(", ", diff.Select(e => $"{e.Offset}+{e.Length}:{e.Allocated}"));
}

/// <summary>The contract on the embedded engine: a fresh store in a temp directory per test.</summary>
public sealed class EmbeddedBackendContractTests : VolumeBackendContract
{
    private readonly string _directory = Directory.CreateTempSubdirectory("platter-contract-").FullName;
    private readonly IVolumeBackend _backend;

    public EmbeddedBackendContractTests() => _backend = Platter.Storage.VolumeStore.Open(_directory);

    protected override IVolumeBackend Backend => _backend;

    public override void Dispose()
    {
        _backend.Dispose();
        Directory.Delete(_directory, recursive: true);
    }
}

/// <summary>The contract on RBD: the shared one-host cluster, a backend on its pool per test.</summary>
[Collection(CephCollection.Name)]
public sealed class RbdBackendContractTests(CephCluster ceph) : VolumeBackendContract
{
    private readonly RbdBackend _backend = ceph.OpenBackend();

    protected override IVolumeBackend Backend => _backend;

    public override void Dispose() => _backend.Dispose();
}
