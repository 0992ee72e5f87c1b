using Platter.Storage;
using Xunit;
using Xunit.Abstractions;

namespace Platter.Cache.Tests;

/// <summary>
/// <see cref="CachedBackend"/>'s rules about modes and the dirty marker, with the embedded engine below and volume
/// metadata kept in a dictionary (what RBD image metadata is to the real thing; the real cluster runs the same rules
/// in Platter.Rbd.Tests' CacheTests). Write-back to the engine goes through a <see cref="GatedBackend"/> the test can
/// hold.
/// </summary>
public sealed class CachedBackendTests(ITestOutputHelper output) : EngineVolumeTest(output, 16L << 20)
{
    private readonly Dictionary<string, string> _metadata = new();
    private GatedBackend? _gate;

    private string CacheDir => Path.Combine(_dir, "cache");

    private CachedBackend Open(string? cacheDir = null) =>
        new(new SharedStore(this), new NodeCacheOptions { Directory = cacheDir ?? CacheDir, SizeBytes = 16L << 20 });

    private static byte[] Filled(byte value) => Enumerable.Repeat(value, Block).ToArray();

    private byte[] BackendRead(long offset)
    {
        var data = new byte[Block];
        using var v = _store.OpenVolume("vm1");
        v.Read(offset, data);
        return data;
    }

    [Fact]
    public async Task A_mode_is_stored_with_the_volume_and_writeback_sets_the_dirty_marker_until_release()
    {
        using var cached = Open();
        Assert.Equal(CacheMode.None, cached.GetMode("vm1"));
        cached.SetMode("vm1", CacheMode.WriteBack);
        Assert.Equal("writeback", _metadata["vm1/" + CachedBackend.ModeKey]);

        using (var h = cached.OpenVolumeHandle("vm1"))
        {
            Assert.True(_metadata.ContainsKey("vm1/" + CachedBackend.DirtyKey)); // set before the first write is taken
            await h.WriteAsync(0, Filled(7), fua: true);
        }
        var status = cached.GetStatus("vm1");
        Assert.Equal("writeback", status.Active); // stays open without clients until release
        Assert.NotNull(status.DirtyMarker);

        cached.Release("vm1");
        Assert.False(_metadata.ContainsKey("vm1/" + CachedBackend.DirtyKey));
        Assert.Equal(Filled(7), BackendRead(0));
        Assert.Empty(Directory.GetFiles(CacheDir));
        Assert.Null(cached.GetStatus("vm1").Active);
    }

    [Fact]
    public async Task A_volume_another_node_may_hold_dirty_data_of_is_refused_until_the_loss_is_accepted()
    {
        using var cached = Open();
        cached.SetMode("vm1", CacheMode.WriteBack);
        _metadata["vm1/" + CachedBackend.DirtyKey] = $"{Guid.NewGuid()} node elsewhere dir /ssd pid 42";

        var refused = Assert.Throws<StorageException>(() => cached.OpenVolumeHandle("vm1"));
        Assert.Equal(StorageError.InUse, refused.Error);
        Assert.Contains("write-back cache of another server (node elsewhere dir /ssd pid 42)", refused.Message);
        Assert.Contains("--accept-cache-loss", refused.Message);
        Assert.Equal(StorageError.InUse, Assert.Throws<StorageException>(() => cached.TakeOverVolume("vm1")).Error);

        cached.TakeOverVolume("vm1", acceptCacheLoss: true);
        using var h = cached.OpenVolumeHandle("vm1");
        await h.WriteAsync(0, Filled(3), fua: true);
        Assert.DoesNotContain("elsewhere", _metadata["vm1/" + CachedBackend.DirtyKey]); // now this node's own log
    }

    [Fact]
    public async Task A_local_log_the_volume_no_longer_names_is_deleted_never_replayed()
    {
        var first = Open();
        first.SetMode("vm1", CacheMode.WriteBack);
        using (var h = first.OpenVolumeHandle("vm1"))
        {
            _gate!.Pause(); // write-back held: the write stays only in the log
            await h.WriteAsync(0, Filled(1), fua: true);
        }
        first.Dispose(); // a crash, as far as the log is concerned: it keeps the write, the marker stays
        _gate!.Resume();
        Assert.Single(Directory.GetFiles(CacheDir, "*.wblog"));

        // Elsewhere the loss was accepted (marker removed) and newer data written to the volume.
        _metadata.Remove("vm1/" + CachedBackend.DirtyKey);
        using (var direct = _store.OpenVolume("vm1")) direct.Write(0, Filled(2));

        using var second = Open();
        using (var again = second.OpenVolumeHandle("vm1")) Assert.Equal(Filled(2), await ReadAsync(again, 0, Block));
        Assert.Equal(StorageError.InUse, Assert.Throws<StorageException>(() =>
        {
            using var connected = second.OpenVolumeHandle("vm1");
            second.Release("vm1"); // refused while a client is connected
        }).Error);
        second.Release("vm1");
        Assert.Equal(Filled(2), BackendRead(0)); // the stale log's write never reached the volume
    }

    [Fact]
    public async Task This_nodes_own_log_replays_whatever_the_mode_is_now_and_a_snapshot_holds_every_acknowledged_write()
    {
        var first = Open();
        first.SetMode("vm1", CacheMode.WriteBack);
        using (var h = first.OpenVolumeHandle("vm1"))
        {
            _gate!.Pause();
            await h.WriteAsync(Block, Filled(9), fua: true);
        }
        first.Dispose();
        _gate!.Resume();

        using var second = Open();
        second.SetMode("vm1", CacheMode.WriteThrough); // changed meanwhile: the log is written back before that applies
        using var h2 = second.OpenVolumeHandle("vm1");
        Assert.Equal("writethrough", second.GetStatus("vm1").Active);
        Assert.False(_metadata.ContainsKey("vm1/" + CachedBackend.DirtyKey));
        Assert.Equal(Filled(9), BackendRead(Block));

        second.SetMode("vm1", CacheMode.WriteBack);
        h2.Dispose(); // last client of the write-through cache: it closes
        using var h3 = second.OpenVolumeHandle("vm1");
        _gate!.Pause();
        await h3.WriteAsync(2 * Block, Filled(5), fua: true);
        _gate!.Resume();
        second.CreateSnapshot("vm1", "s1");
        using var snap = _store.OpenSnapshot("vm1", "s1");
        var data = new byte[Block];
        snap.Read(2 * Block, data);
        Assert.Equal(Filled(5), data);
    }

    [Fact]
    public async Task Releasing_one_volume_does_not_hold_up_opening_another()
    {
        // A release drains the log, which takes as long as write-back needs; only that volume waits for it.
        _store.CreateVolume("vm2", 16L << 20);
        using var cached = Open();
        cached.SetMode("vm1", CacheMode.WriteBack);
        cached.SetMode("vm2", CacheMode.WriteBack);
        using (var h = cached.OpenVolumeHandle("vm1"))
        {
            _gate!.Pause(); // vm1's write-back is held: its release cannot finish
            await h.WriteAsync(0, Filled(4), fua: true);
        }
        var vm1Gate = _gate!;
        var release = Task.Run(() => cached.Release("vm1"));
        var opened = Task.Run(async () =>
        {
            while (!release.IsCompleted && cached.GetStatus("vm1").Active is not null) await Task.Delay(5); // the release has begun
            using var other = cached.OpenVolumeHandle("vm2");
            await other.WriteAsync(0, Filled(6), fua: true);
            Assert.Equal(Filled(6), await ReadAsync(other, 0, Block));
        });
        // A bound, not a timing: with one lock for every volume this never completes while vm1's write-back is held.
        await opened.WaitAsync(TimeSpan.FromMinutes(2));
        Assert.False(release.IsCompleted, "vm1's release finished while its write-back was held");
        vm1Gate.Resume();
        Assert.Equal(Block, await release);
        Assert.Equal(Filled(4), BackendRead(0));
        cached.Release("vm2");
    }

    // The engine with volume metadata in a dictionary and no one else to take over from: a stand-in for a shared store.
    private sealed class SharedStore(CachedBackendTests test) : IVolumeBackend, IVolumeMetadata, IVolumeTakeover
    {
        private IVolumeBackend S => test._store;
        public string Kind => "test";
        public string Location => "test:" + test._dir;
        public IReadOnlyList<VolumeInfo> ListVolumes() => S.ListVolumes();
        public VolumeInfo GetVolumeInfo(string name) => S.GetVolumeInfo(name);
        public VolumeInfo GetVolumeInfo(string name, bool withAllocation) => S.GetVolumeInfo(name, withAllocation);
        public bool TryGetVolumeInfo(string name, out VolumeInfo? info) => S.TryGetVolumeInfo(name, out info);
        public VolumeInfo CreateVolume(string name, long sizeBytes) => S.CreateVolume(name, sizeBytes);
        public void RenameVolume(string name, string newName) => S.RenameVolume(name, newName);
        public void ResizeVolume(string name, long newSizeBytes, bool allowShrink = false) => S.ResizeVolume(name, newSizeBytes, allowShrink);
        public void DeleteVolume(string name, bool recursive) => S.DeleteVolume(name, recursive);
        public SnapshotInfo CreateSnapshot(string volume, string snapshot) => S.CreateSnapshot(volume, snapshot);
        public IReadOnlyList<SnapshotInfo> ListSnapshots(string volume) => S.ListSnapshots(volume);
        public IReadOnlyList<SnapshotInfo> ListSnapshots() => S.ListSnapshots();
        public SnapshotInfo GetSnapshotInfo(string volume, string snapshot) => S.GetSnapshotInfo(volume, snapshot);
        public void DeleteSnapshot(string volume, string snapshot) => S.DeleteSnapshot(volume, snapshot);
        public VolumeInfo CloneSnapshot(string volume, string snapshot, string newVolume) => S.CloneSnapshot(volume, snapshot, newVolume);
        public void RollbackVolume(string volume, string snapshot, bool recursive) => S.RollbackVolume(volume, snapshot, recursive);
        public IReadOnlyList<ChangedExtent> Diff(string volume, string fromSnapshot, string? toSnapshot) => S.Diff(volume, fromSnapshot, toSnapshot);
        public FlattenResult FlattenVolume(string name) => S.FlattenVolume(name);
        public IReadOnlyList<SpaceUsage> GetSpaceUsage() => S.GetSpaceUsage();
        public StoreUsage GetUsage() => S.GetUsage();
        public CheckReport Check(bool verifyChecksums) => S.Check(verifyChecksums);
        public IVolumeHandle OpenVolumeHandle(string name) => test._gate = new GatedBackend(S.OpenVolumeHandle(name));
        public IVolumeHandle OpenSnapshotHandle(string volume, string snapshot) => S.OpenSnapshotHandle(volume, snapshot);
        public ValueTask FlushAsync(CancellationToken cancellationToken = default) => S.FlushAsync(cancellationToken);
        public string? GetVolumeMetadata(string name, string key) => test._metadata.GetValueOrDefault(name + "/" + key);

        public void SetVolumeMetadata(string name, string key, string? value)
        {
            if (value is null) test._metadata.Remove(name + "/" + key);
            else test._metadata[name + "/" + key] = value;
        }

        public string? TakeOverVolume(string name) => null;
        public void Dispose() { } // the test owns the engine
    }
}
