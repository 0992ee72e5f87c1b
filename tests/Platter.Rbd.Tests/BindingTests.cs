using System.Runtime.InteropServices;
using Platter.Ceph;
using Platter.Testing;
using Xunit;

namespace Platter.Rbd.Tests;

/// <summary>The binding against a real cluster: each call does what librbd documents, errors map to errno.</summary>
[Collection(CephCollection.Name)]
public sealed unsafe class BindingTests(CephCluster ceph)
{
    private const RbdFeatures Features = RbdFeatures.Layering | RbdFeatures.ExclusiveLock | RbdFeatures.ObjectMap |
        RbdFeatures.FastDiff | RbdFeatures.DeepFlatten;

    [Fact]
    public void Create_list_stat_resize_rename_remove()
    {
        using var cluster = ceph.Connect();
        using var io = cluster.OpenPool(ceph.Pool);
        string name = CephCluster.UniqueName("bind");
        RbdImages.Create(io, name, 64 << 20, Features);
        Assert.Contains(name, RbdImages.List(io));
        var error = Assert.Throws<CephException>(() => RbdImages.Create(io, name, 1 << 20, Features));
        Assert.Equal(CephException.EEXIST, error.Errno);
        using (var image = RbdImage.Open(io, name))
        {
            Assert.Equal(64UL << 20, image.Size);
            Assert.Equal(4UL << 20, image.ObjectSize);
            Assert.Equal(Features, image.Features & Features);
            var shrink = Assert.Throws<CephException>(() => image.Resize(32 << 20, allowShrink: false));
            Assert.Equal(CephException.EINVAL, shrink.Errno);
            image.Resize(128 << 20, allowShrink: false);
            Assert.Equal(128UL << 20, image.Size);
            image.SetMetadata("platter.test", "value");
            Assert.Equal("value", image.GetMetadata("platter.test"));
            Assert.Null(image.GetMetadata("platter.absent"));
        }
        RbdImages.Rename(io, name, name + "-r");
        Assert.Contains(name + "-r", RbdImages.List(io));
        RbdImages.Remove(io, name + "-r");
        var missing = Assert.Throws<CephException>(() => RbdImage.Open(io, name + "-r"));
        Assert.Equal(CephException.ENOENT, missing.Errno);
        Assert.Contains("No such file", missing.Message);
    }

    [Fact]
    public void Aio_write_read_flush_discard_zeroes_and_diff()
    {
        using var cluster = ceph.Connect();
        using var io = cluster.OpenPool(ceph.Pool);
        string name = CephCluster.UniqueName("aio");
        RbdImages.Create(io, name, 16 << 20, Features);
        using var image = RbdImage.Open(io, name);
        var data = GC.AllocateArray<byte>(8192, pinned: true);
        new Random(7).NextBytes(data);
        {
            byte* p = Pin(data);
            Assert.Equal(0, Wait(c => image.BeginWrite(1 << 20, p, 8192, c, RbdOpFlags.None)));
        }
        Assert.Equal(0, Wait(image.BeginFlush));
        image.CreateSnapshot("s1");
        {
            byte* p = Pin(data);
            Assert.Equal(0, Wait(c => image.BeginWrite(9 << 20, p, 4096, c, RbdOpFlags.FadviseFua)));
        }
        var back = GC.AllocateArray<byte>(8192, pinned: true);
        {
            byte* p = Pin(back);
            Assert.Equal(8192, Wait(c => image.BeginRead(1 << 20, p, 8192, c, RbdOpFlags.None)));
        }
        Assert.Equal(data, back);

        var allocated = new List<(ulong, ulong, bool)>();
        image.DiffIterate(null, 0, image.Size, includeParent: true, wholeObject: false, (o, l, e) => { allocated.Add((o, l, e)); return true; });
        // librbd reports at most object granularity (4 MiB objects here): each touched object's written range, from its start.
        Assert.Equal([(0UL, (1UL << 20) + 8192, true), (8UL << 20, (1UL << 20) + 4096, true)], allocated);
        var changed = new List<(ulong, ulong, bool)>();
        image.DiffIterate("s1", 0, image.Size, includeParent: true, wholeObject: false, (o, l, e) => { changed.Add((o, l, e)); return true; });
        Assert.Equal([(8UL << 20, (1UL << 20) + 4096, true)], changed);
        Assert.False(image.DiffIterate(null, 0, image.Size, true, false, (_, _, _) => false));

        Assert.Equal(0, Wait(c => image.BeginDiscard(1 << 20, 4096, c)));
        Assert.Equal(0, Wait(c => image.BeginWriteZeroes(1 << 20 | 4096, 4096, c)));
        {
            byte* p = Pin(back);
            Assert.Equal(8192, Wait(c => image.BeginRead(1 << 20, p, 8192, c, RbdOpFlags.None)));
        }
        Assert.All(back, b => Assert.Equal(0, b));

        var snaps = image.ListSnapshots();
        Assert.Equal("s1", Assert.Single(snaps).Name);
        Assert.True(image.GetSnapshotTimestamp(snaps[0].Id) > DateTimeOffset.UtcNow.AddMinutes(-5));
        using (var snap = RbdImage.Open(io, name, "s1"))
        {
            {
                byte* p = Pin(back);
                Assert.Equal(8192, Wait(c => snap.BeginRead(1 << 20, p, 8192, c, RbdOpFlags.None)));
            }
            Assert.Equal(data, back);
            RbdImages.Clone(io, name, "s1", name + "-c", Features);
            Assert.Equal(name + "-c", Assert.Single(snap.ListChildren()).Image);
        }
        using (var clone = RbdImage.Open(io, name + "-c"))
        {
            var parent = clone.GetParent();
            Assert.Equal(new RbdParent(ceph.Pool, name, "s1", snaps[0].Id), parent);
            {
                byte* p = Pin(back);
                Assert.Equal(8192, Wait(c => clone.BeginRead(1 << 20, p, 8192, c, RbdOpFlags.None)));
            }
            Assert.Equal(data, back);
        }
        Assert.Null(image.GetParent());
        RbdImages.Remove(io, name + "-c");
        image.RollbackSnapshot("s1");
        image.RemoveSnapshot("s1");
        Assert.Empty(image.ListSnapshots());
    }

    [Fact]
    public void Exclusive_lock_is_not_handed_over_and_breaking_it_fences_the_holder()
    {
        string name = CephCluster.UniqueName("lock");
        using var a = ceph.Connect();
        using var b = ceph.Connect();
        using var ioA = a.OpenPool(ceph.Pool);
        using var ioB = b.OpenPool(ceph.Pool);
        Assert.NotEqual(a.Address, b.Address);
        RbdImages.Create(ioA, name, 16 << 20, Features);
        var imageA = RbdImage.Open(ioA, name);
        imageA.AcquireExclusiveLock();
        Assert.True(imageA.IsExclusiveLockOwner);
        using var imageB = RbdImage.Open(ioB, name);
        var refused = Assert.Throws<CephException>(imageB.AcquireExclusiveLock);
        Assert.Contains(refused.Errno, new[] { CephException.EROFS, CephException.EBUSY });
        var data = GC.AllocateArray<byte>(4096, pinned: true);
        {
            byte* p = Pin(data);
            // a write through B asks A for the lock; A's policy refuses, so B's write fails instead of taking it
            Assert.Equal(-CephException.EROFS, Wait(c => imageB.BeginWrite(0, p, 4096, c, RbdOpFlags.None)));
        }
        Assert.True(imageA.IsExclusiveLockOwner);
        Assert.Equal([a.Address], imageB.GetLockOwners());

        imageB.BreakExclusiveLock(a.Address);
        imageB.AcquireExclusiveLock();
        {
            byte* p = Pin(data);
            Assert.Equal(0, Wait(c => imageB.BeginWrite(0, p, 4096, c, RbdOpFlags.None)));
            long fenced = Wait(c => imageA.BeginWrite(4096, p, 4096, c, RbdOpFlags.None));
            Assert.True(fenced < 0, $"a write through the fenced client returned {fenced}");
        }
        try { imageA.Dispose(); } catch (CephException) { }
    }

    [Fact]
    public void Unreachable_monitor_fails_with_a_timeout_not_a_hang()
    {
        using var dir = new TempDirectory("prbdu");
        string conf = dir.Combine("unreachable.conf");
        File.WriteAllText(conf, "[global]\nmon host = [v2:127.0.0.1:9]\nkeyring = " + Path.Combine(ceph.Directory, "keyring") + "\n");
        var error = Assert.Throws<CephException>(() => RadosCluster.Connect(conf, "admin", [new("client_mount_timeout", "3")]));
        Assert.Contains("connecting to the Ceph monitors", error.Message);
    }

    /// <summary>A pointer to a pinned array (arrays made with GC.AllocateArray(pinned: true)).</summary>
    private static byte* Pin(byte[] array) => (byte*)System.Runtime.CompilerServices.Unsafe.AsPointer(ref array[0]);

    private static long Wait(Action<RbdCompletion> start)
    {
        var done = new TaskCompletionSource<long>(TaskCreationOptions.RunContinuationsAsynchronously);
        var gc = GCHandle.Alloc(done);
        var completion = RbdCompletion.Create(GCHandle.ToIntPtr(gc), &OnComplete);
        try
        {
            start(completion);
        }
        catch
        {
            completion.Release();
            gc.Free();
            throw;
        }
        long result = done.Task.WaitAsync(TimeSpan.FromMinutes(2)).GetAwaiter().GetResult();
        gc.Free();
        return result;
    }

    [UnmanagedCallersOnly]
    private static void OnComplete(nint completion, nint arg)
    {
        var c = RbdCompletion.FromHandle(completion);
        long rv = c.ReturnValue;
        c.Release();
        ((TaskCompletionSource<long>)GCHandle.FromIntPtr(arg).Target!).SetResult(rv);
    }
}
