using System.Text.Json;
using Platter.Testing;
using Platter.Volumes;
using Xunit;

namespace Platter.Rbd.Tests;

/// <summary>
/// Flatten on an RBD store: through the backend seam (<c>rbd_flatten</c>), then through a real
/// <c>platter serve --store rbd:POOL</c> and the CLI, with the <c>rbd</c> CLI and qemu-img as witnesses.
/// </summary>
[Collection(CephCollection.Name)]
public sealed class FlattenTests(CephCluster ceph)
{
    private string Rbd(params string[] args) => ceph.ExecOk("rbd", args);

    [Fact]
    public async Task Backend_flatten_detaches_the_clone_keeps_its_content_and_the_origin_can_be_deleted()
    {
        using var backend = ceph.OpenBackend();
        string origin = CephCluster.UniqueName("forig"), clone = CephCluster.UniqueName("fclone");
        backend.CreateVolume(origin, 8 << 20);
        var pattern = new byte[1 << 20];
        Random.Shared.NextBytes(pattern);
        using (var h = backend.OpenVolumeHandle(origin))
        {
            await h.WriteAsync(0, pattern, fua: true);
            await h.WriteAsync(4 << 20, pattern, fua: true);
        }
        backend.CreateSnapshot(origin, "s1");
        backend.CloneSnapshot(origin, "s1", clone);
        var changed = new byte[4096];
        changed.AsSpan().Fill(0x5a);
        using (var h = backend.OpenVolumeHandle(clone)) await h.WriteAsync(4096, changed, fua: true);

        var e = Assert.Throws<StorageException>(() => backend.FlattenVolume(origin));
        Assert.Equal(StorageError.InvalidArgument, e.Error);
        Assert.Throws<StorageException>(() => backend.DeleteVolume(origin, recursive: true));

        var result = backend.FlattenVolume(clone);
        Assert.Equal($"{origin}@s1", result.Origin);
        Assert.Null(result.CopiedBytes);
        Assert.Null(backend.GetVolumeInfo(clone).Origin);
        Assert.Empty(backend.GetSnapshotInfo(origin, "s1").Clones);
        Assert.DoesNotContain("parent", Rbd("info", $"{ceph.Pool}/{clone}"));

        backend.DeleteVolume(origin, recursive: true);
        using (var h = backend.OpenVolumeHandle(clone))
        {
            var read = new byte[1 << 20];
            await h.ReadAsync(4 << 20, read);
            Assert.True(read.AsSpan().SequenceEqual(pattern), "the clone lost data its origin held after the origin was deleted");
            await h.ReadAsync(0, read);
            var expected = (byte[])pattern.Clone();
            changed.CopyTo(expected, 4096);
            Assert.True(read.AsSpan().SequenceEqual(expected), "the clone's own write or the inherited data around it changed");
        }
        backend.DeleteVolume(clone, recursive: false);
    }

    [Fact]
    public async Task Cli_flatten_on_an_rbd_store_then_origin_delete_and_qemu_img_compare()
    {
        string origin = CephCluster.UniqueName("cforig"), clone = CephCluster.UniqueName("cfclone");
        await using var server = ceph.CreateServer();
        await server.StartAsync();
        await server.CliOkAsync("volume", "create", origin, "--size", "16M");
        (await ProcessRunner.RunAsync("qemu-io", ["-f", "raw", "-c", "write -P 0x11 0 4M", "-c", "write -P 0x22 8M 1M", "-c", "flush", server.Uri(origin)])).EnsureSuccess();
        await server.CliOkAsync("snapshot", "create", $"{origin}@s1");
        await server.CliOkAsync("clone", $"{origin}@s1", clone);
        (await ProcessRunner.RunAsync("qemu-io", ["-f", "raw", "-c", "write -P 0x33 1M 64k", "-c", "flush", server.Uri(clone)])).EnsureSuccess();

        using var files = new TempDirectory("prbdflat");
        string reference = files.Combine("before.raw");
        (await ProcessRunner.RunAsync("qemu-img", ["convert", "-f", "raw", "-O", "raw", server.Uri(clone), reference])).EnsureSuccess();

        var json = await server.CliOkAsync("volume", "flatten", clone, "--json");
        using (var doc = JsonDocument.Parse(json))
        {
            Assert.Equal($"{origin}@s1", doc.RootElement.GetProperty("origin").GetString());
            Assert.Equal(JsonValueKind.Null, doc.RootElement.GetProperty("copiedBytes").ValueKind);
        }
        await server.CliOkAsync("volume", "delete", origin, "--recursive");
        var compare = await ProcessRunner.RunAsync("qemu-img", ["compare", "-f", "raw", "-F", "raw", reference, server.Uri(clone)]);
        Assert.True(compare.ExitCode == 0, $"the clone's content changed after flatten and origin delete\n{compare.Describe()}");
        await server.CliOkAsync("volume", "delete", clone);
    }
}
