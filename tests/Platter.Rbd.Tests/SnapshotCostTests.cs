using System.Text.Json;
using Platter.Ceph;
using Platter.Testing;
using Platter.Volumes;
using Xunit;

namespace Platter.Rbd.Tests;

/// <summary>
/// Taking, listing, cloning and opening snapshots, and listing and looking up volumes, must not walk the image: a walk
/// (<c>rbd_diff_iterate2</c> over the object map) costs one step per 4 MiB object, which made a snapshot create take
/// seconds on a 1 TiB volume, and a volume list one walk per image. The walks are counted through the binding (per
/// thread: the backend's catalog calls run on the caller's thread), not timed.
/// </summary>
[Collection(CephCollection.Name)]
public sealed class SnapshotCostTests(CephCluster ceph)
{
    private const long Mi = 1L << 20;

    [Fact]
    public async Task Snapshot_catalog_calls_do_not_walk_the_image_and_allocation_is_counted_when_asked()
    {
        using var backend = ceph.OpenBackend();
        string name = CephCluster.UniqueName("snapcost");
        backend.CreateVolume(name, 1L << 40); // 1 TiB, thin: 262,144 objects, two of them written
        using (var handle = backend.OpenVolumeHandle(name))
        {
            var data = new byte[4096];
            Array.Fill(data, (byte)0x5a);
            await handle.WriteAsync(0, data, fua: false);
            await handle.WriteAsync(512L << 30, data, fua: true);
        }

        long walks = RbdImage.DiffIteratesOnThisThread;
        var created = backend.CreateSnapshot(name, "s1");
        Assert.Equal(walks, RbdImage.DiffIteratesOnThisThread);
        Assert.Null(created.AllocatedBytes); // not computed, and not claimed to be 0
        Assert.Equal((name, "s1", 1L << 40), (created.Volume, created.Name, created.SizeBytes));
        Assert.Empty(created.Clones);

        var listed = Assert.Single(backend.ListSnapshots(name));
        Assert.Contains(backend.ListSnapshots(), s => s.FullName == $"{name}@s1");
        Assert.Equal((created.Id, created.CreatedUtc, (long?)null), (listed.Id, listed.CreatedUtc, listed.AllocatedBytes));
        Assert.Equal(walks, RbdImage.DiffIteratesOnThisThread);
        var clone = backend.CloneSnapshot(name, "s1", name + "-c"); // checks the snapshot exists: no walk for that
        Assert.Equal((0L, $"{name}@s1"), (clone.AllocatedBytes, clone.Origin)); // a new clone holds no object of its own
        Assert.Equal([name + "-c"], Assert.Single(backend.ListSnapshots(name)).Clones);
        Assert.Equal(walks, RbdImage.DiffIteratesOnThisThread);
        using (backend.OpenSnapshotHandle(name, "s1"))
        {
        }
        Assert.Equal(walks, RbdImage.DiffIteratesOnThisThread);
        Assert.Empty(backend.Diff(name, "s1", null)); // the diff itself is one walk, its argument checks none
        Assert.Equal(walks + 1, RbdImage.DiffIteratesOnThisThread);

        // Asked for: one snapshot's description and the space report count it (two objects of 4 MiB).
        var described = backend.GetSnapshotInfo(name, "s1");
        Assert.Equal(walks + 2, RbdImage.DiffIteratesOnThisThread);
        Assert.Equal(8 * Mi, described.AllocatedBytes);
        Assert.Equal(8 * Mi, backend.GetSpaceUsage().Single(u => u.Name == $"{name}@s1").AllocatedBytes);

        backend.DeleteVolume(name + "-c", recursive: false);
        walks = RbdImage.DiffIteratesOnThisThread;
        backend.DeleteSnapshot(name, "s1");
        backend.DeleteVolume(name, recursive: true);
        Assert.Equal(walks, RbdImage.DiffIteratesOnThisThread);
    }

    [Fact]
    public async Task Volume_list_and_lookups_do_not_walk_the_images_and_usage_agrees_with_rbd_du()
    {
        using var backend = ceph.OpenBackend();
        string big = CephCluster.UniqueName("volcost"), small = CephCluster.UniqueName("volcost");
        backend.CreateVolume(big, 1L << 40); // 1 TiB, thin: 262,144 objects, three of them written
        backend.CreateVolume(small, 64 * Mi);
        using (var handle = backend.OpenVolumeHandle(big))
        {
            var data = new byte[8192];
            Array.Fill(data, (byte)0x77);
            await handle.WriteAsync(0, data, fua: false);
            await handle.WriteAsync(6 * Mi, data, fua: false);
            await handle.WriteAsync(700L << 30, data, fua: true);
        }

        long walks = RbdImage.DiffIteratesOnThisThread;
        var listed = backend.ListVolumes().Where(v => v.Name == big || v.Name == small).ToList();
        Assert.Equal(new[] { big, small }.Order(StringComparer.Ordinal), listed.Select(v => v.Name).Order(StringComparer.Ordinal)); // the names are random
        Assert.All(listed, v => Assert.Null(v.AllocatedBytes)); // not counted, and not claimed to be 0
        Assert.Equal(1L << 40, listed.Single(v => v.Name == big).SizeBytes);
        var looked = backend.GetVolumeInfo(big);
        Assert.True(backend.TryGetVolumeInfo(small, out var found));
        Assert.Equal((listed.Single(v => v.Name == big).Id, (long?)null, (long?)null), (looked.Id, looked.AllocatedBytes, found!.AllocatedBytes));
        backend.GetUsage(); // the store's totals list the volumes: no walk for that either
        backend.ResizeVolume(small, 128 * Mi);
        backend.RenameVolume(small, small + "-r");
        Assert.Equal(walks, RbdImage.DiffIteratesOnThisThread);

        // Asked for: one walk, whole objects as `rbd du` counts them (objects 0, 1 and 179,200: 12 MiB).
        var counted = backend.GetVolumeInfo(big, withAllocation: true);
        Assert.Equal(walks + 1, RbdImage.DiffIteratesOnThisThread);
        Assert.Equal(12 * Mi, counted.AllocatedBytes);
        var du = JsonDocument.Parse(ceph.ExecOk("rbd", "du", "--format", "json", $"{ceph.Pool}/{big}")).RootElement
            .GetProperty("images").EnumerateArray().Single();
        Assert.Equal(counted.AllocatedBytes, du.GetProperty("used_size").GetInt64());
        Assert.Equal(counted.AllocatedBytes, backend.GetSpaceUsage().Single(u => u.Name == big).AllocatedBytes);

        // `rbd ls -l` sees the volumes the list shows, with their sizes.
        var rbdLs = JsonDocument.Parse(ceph.ExecOk("rbd", "ls", "-l", "--format", "json", ceph.Pool)).RootElement.EnumerateArray()
            .Where(i => !i.TryGetProperty("snapshot", out _)).ToDictionary(i => i.GetProperty("image").GetString()!, i => i.GetProperty("size").GetInt64());
        Assert.All(backend.ListVolumes(), v => Assert.Equal(rbdLs[v.Name], v.SizeBytes));
        Assert.Equal(128 * Mi, rbdLs[small + "-r"]);

        backend.DeleteVolume(big, recursive: false);
        backend.DeleteVolume(small + "-r", recursive: false);
    }
}
