using Platter.Ceph;
using Platter.Testing;
using Xunit;

namespace Platter.Rbd.Tests;

/// <summary>
/// Read-only images are closed a grace period after disposal (DeferredImageClose: librbd 16.2 may still be inside an
/// image a synchronous call just returned from; closing it at once aborted the server, issue 10).
/// </summary>
[Collection(CephCollection.Name)]
public sealed class DeferredCloseTests(CephCluster ceph)
{
    [Fact]
    public void A_read_only_image_outlives_its_disposal_and_its_connection_until_the_deferred_close()
    {
        string name = CephCluster.UniqueName("defer");
        var cluster = ceph.Connect();
        var io = cluster.OpenPool(ceph.Pool);
        RbdImages.Create(io, name, 4 << 20, RbdFeatures.Layering | RbdFeatures.ExclusiveLock);

        long closedBefore = DeferredImageClose.ClosedCount;
        var image = RbdImage.Open(io, name, readOnly: true);
        Assert.Equal(4UL << 20, image.Size);
        image.Dispose();
        // Pool and connection go at once, as a backend's Dispose or a failed open would do: their native release
        // waits for the image's (each holds a reference on its parent).
        io.Dispose();
        cluster.Dispose();
        Assert.True(DeferredImageClose.PendingCount >= 1, "a disposed read-only image must wait for its grace period");

        RbdImage.WaitForDeferredCloses();
        Assert.Equal(0, DeferredImageClose.PendingCount);
        Assert.True(DeferredImageClose.ClosedCount > closedBefore);

        // A writable open still closes at once: its watch must not outlive the caller (a delete refuses while one does).
        using var admin = ceph.Connect();
        using var pool = admin.OpenPool(ceph.Pool);
        RbdImage.Open(pool, name).Dispose();
        RbdImages.Remove(pool, name);
    }

    [Fact]
    public void A_served_volume_gives_up_its_lock_at_once_and_closes_its_image_later()
    {
        using var backend = ceph.OpenBackend();
        using var other = ceph.OpenBackend(); // another server on the same pool
        string name = CephCluster.UniqueName("servedclose");
        backend.CreateVolume(name, 4L << 20);
        RbdImage.WaitForDeferredCloses(); // earlier tests' read-only images

        // Opened and closed within a moment, as an nbdinfo or a probing client does: librbd may still be inside the
        // image right after rbd_open and rbd_lock_acquire returned, so the image must not be freed now (issue 10's
        // abort in CI) -- but its lock must be free now.
        backend.OpenVolumeHandle(name).Dispose();
        Assert.True(DeferredImageClose.PendingCount >= 1, "the served image must be closed later, not at once");

        // The next writer, another server here, gets the lock at once, while the first image may still be open.
        using (other.OpenVolumeHandle(name)) { }

        // A delete straight after waits for the deferred close of the watch rbd_remove would refuse.
        backend.OpenVolumeHandle(name).Dispose();
        backend.DeleteVolume(name, recursive: false);
        Assert.DoesNotContain(backend.ListVolumes(), v => v.Name == name);
    }
}
