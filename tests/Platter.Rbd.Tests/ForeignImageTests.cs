using Platter.Testing;
using Platter.Volumes;
using Xunit;

namespace Platter.Rbd.Tests;

/// <summary>
/// Images Platter did not make (<c>rbd create</c> in the pool): served and managed as they are, or refused with one
/// line that names the fix.
/// </summary>
[Collection(CephCollection.Name)]
public sealed class ForeignImageTests(CephCluster ceph)
{
    [Fact]
    public async Task Image_without_exclusive_lock_is_refused_naming_the_fix_and_served_once_enabled()
    {
        string name = CephCluster.UniqueName("nolock");
        ceph.ExecOk("rbd", "create", "--size", "16M", "--image-feature", "layering", $"{ceph.Pool}/{name}");
        using var backend = ceph.OpenBackend();

        var refused = Assert.Throws<StorageException>(() => backend.OpenVolumeHandle(name));
        Assert.Equal(StorageError.InvalidArgument, refused.Error);
        Assert.Contains($"rbd feature enable {ceph.Pool}/{name} exclusive-lock", refused.Message);
        Assert.DoesNotContain('\n', refused.Message);
        // The catalog still works on it (no lock needed to look), and snapshots are still readable.
        Assert.Equal(16L << 20, backend.GetVolumeInfo(name).SizeBytes);

        ceph.ExecOk("rbd", "feature", "enable", $"{ceph.Pool}/{name}", "exclusive-lock");
        using (var handle = backend.OpenVolumeHandle(name))
        {
            var data = new byte[4096];
            Array.Fill(data, (byte)0x5a);
            await handle.WriteAsync(8192, data, fua: false);
            await handle.FlushAsync();
            var back = new byte[4096];
            await handle.ReadAsync(8192, back);
            Assert.Equal(data, back);
        }
        backend.DeleteVolume(name, recursive: false);
    }

    [Fact]
    public async Task Image_under_an_odd_existing_name_is_served_and_managed()
    {
        // A leading '-' is legal in RBD; names refer to existing images are checked by VolumeNames.ValidateExisting
        // (the rules existing names keep), not by the rules for new names.
        string name = "-" + CephCluster.UniqueName("odd");
        ceph.ExecOk("rbd", "create", "--size", "8M", $"{ceph.Pool}/{name}");
        Assert.Null(VolumeNames.ValidateExisting(name));
        using var backend = ceph.OpenBackend();

        Assert.Contains(backend.ListVolumes(), v => v.Name == name);
        using (var handle = backend.OpenVolumeHandle(name))
        {
            await handle.WriteAsync(0, new byte[4096], fua: true);
        }
        backend.CreateSnapshot(name, "s1");
        Assert.Single(backend.ListSnapshots(name));
        // A new name meets today's rules (VolumeNames.Validate refuses the leading '-'); renaming away from the odd
        // name is how a user gets out of it.
        Assert.Equal(StorageError.InvalidName,
            Assert.Throws<StorageException>(() => backend.RenameVolume(name, name + "x")).Error);
        string renamed = name.TrimStart('-');
        backend.RenameVolume(name, renamed);
        backend.DeleteVolume(renamed, recursive: true);
        Assert.DoesNotContain(backend.ListVolumes(), v => v.Name == name || v.Name == renamed);
    }
}
