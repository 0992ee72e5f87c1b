using Platter.Testing;
using Xunit;

namespace Platter.Rbd.Tests;

/// <summary>
/// A flush on a volume whose writes librbd completes only once they are durable on every replica (no librbd cache)
/// is answered without a librbd round trip; a cache turned on for the image, by the client's options or by a pool or
/// image override that librbd applies at open, sends every flush to librbd again (decision 0006).
/// </summary>
[Collection(CephCollection.Name)]
public sealed class FlushTests(CephCluster ceph)
{
    [Fact]
    public async Task Writes_count_as_durable_on_completion_only_while_no_librbd_cache_is_configured_for_the_image()
    {
        using var backend = ceph.OpenBackend();
        string name = CephCluster.UniqueName("flush");
        backend.CreateVolume(name, 16L << 20);
        try
        {
            using (var plain = (RbdVolumeHandle)backend.OpenVolumeHandle(name))
            {
                Assert.True(plain.Volume.WritesDurableOnCompletion);
                await WriteFlushReadAsync(plain, 0x11);
            }

            // What `rbd config image set` stores (image metadata conf_rbd_cache), read back as librbd applies it.
            ceph.ExecOk("rbd", "config", "image", "set", $"{ceph.Pool}/{name}", "rbd_cache", "true");
            using (var cached = (RbdVolumeHandle)backend.OpenVolumeHandle(name))
            {
                Assert.False(cached.Volume.WritesDurableOnCompletion);
                await WriteFlushReadAsync(cached, 0x22); // the flush goes to librbd, which writes its cache back
            }
            ceph.ExecOk("rbd", "config", "image", "remove", $"{ceph.Pool}/{name}", "rbd_cache");

            using (var optioned = RbdBackend.Open(new RbdBackendOptions
            {
                Pool = ceph.Pool,
                ConfFile = ceph.ConfFile,
                CephOptions = new Dictionary<string, string> { ["rbd_cache"] = "true" },
            }))
            using (var handle = (RbdVolumeHandle)optioned.OpenVolumeHandle(name))
            {
                Assert.False(handle.Volume.WritesDurableOnCompletion);
            }
        }
        finally
        {
            backend.DeleteVolume(name, recursive: false);
        }
    }

    /// <summary>
    /// What the Contract tests did when the answered flush first landed (a native abort, std::system_error EINVAL):
    /// a write, a flush answered at once, and the volume closed while librbd may still be finishing the write's
    /// completion. Many rounds, because the window is narrow.
    /// </summary>
    [Fact]
    public async Task A_volume_closed_right_after_a_write_and_an_answered_flush_closes_cleanly()
    {
        using var backend = ceph.OpenBackend();
        string name = CephCluster.UniqueName("flushclose");
        backend.CreateVolume(name, 16L << 20);
        try
        {
            for (int round = 0; round < 40; round++)
            {
                using var handle = (RbdVolumeHandle)backend.OpenVolumeHandle(name);
                Assert.True(handle.Volume.WritesDurableOnCompletion);
                var data = new byte[4096];
                Array.Fill(data, (byte)round);
                await handle.WriteAsync(4096L * round, data, fua: round % 2 == 0);
                await handle.FlushAsync();
            }
            using var check = backend.OpenVolumeHandle(name);
            var back = new byte[4096];
            for (int round = 0; round < 40; round++)
            {
                await check.ReadAsync(4096L * round, back);
                Assert.All(back, b => Assert.Equal((byte)round, b));
            }
        }
        finally
        {
            backend.DeleteVolume(name, recursive: false);
        }
    }

    [Theory]
    [InlineData("false", null, true)]
    [InlineData("false", "disabled", true)]
    [InlineData("true", "disabled", false)]
    [InlineData("false", "ssd", false)]
    [InlineData("false", "rwl", false)]
    [InlineData(null, null, false)] // not known to be off: counts as on
    public void Only_a_cache_known_to_be_off_counts_as_none(string? cache, string? persistent, bool without)
    {
        var config = new Dictionary<string, string>();
        if (cache is not null) config["rbd_cache"] = cache;
        if (persistent is not null) config["rbd_persistent_cache_mode"] = persistent;
        Assert.Equal(without, RbdVolume.WithoutWriteCache(config));
    }

    private static async Task WriteFlushReadAsync(RbdVolumeHandle handle, byte value)
    {
        var data = new byte[4096];
        Array.Fill(data, value);
        await handle.WriteAsync(8192, data, fua: false);
        await handle.FlushAsync();
        var back = new byte[4096];
        await handle.ReadAsync(8192, back);
        Assert.Equal(data, back);
    }
}
