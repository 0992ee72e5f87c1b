using Platter.Testing;
using Xunit;

namespace Platter.Rbd.Tests;

/// <summary>
/// <see cref="RbdBackendOptions.ZeroCopyWrites"/> (off in `platter serve`: decision 0006): librbd then writes from the
/// caller's buffer, and a buffer is the caller's again as soon as its write completes.
/// </summary>
[Collection(CephCollection.Name)]
public sealed class ZeroCopyWriteTests(CephCluster ceph)
{
    [Fact]
    public void The_option_reaches_librados_and_the_copy_stays_the_default()
    {
        using (var copying = RbdBackend.Open(new RbdBackendOptions { Pool = ceph.Pool, ConfFile = ceph.ConfFile }))
        {
            using var connection = copying.Connect();
            Assert.Equal("true", connection.GetOption("rbd_disable_zero_copy_writes"));
        }
        using var zeroCopy = ceph.OpenBackend(zeroCopyWrites: true);
        using var zc = zeroCopy.Connect();
        Assert.Equal("false", zc.GetOption("rbd_disable_zero_copy_writes"));
    }

    [Fact]
    public async Task A_buffer_reused_right_after_its_write_completes_leaves_that_write_intact()
    {
        using var backend = ceph.OpenBackend(zeroCopyWrites: true);
        string name = CephCluster.UniqueName("zerocopy");
        backend.CreateVolume(name, 64L << 20);
        using var volume = backend.OpenVolumeHandle(name);
        const int Size = 1 << 20;
        var buffer = new byte[Size];
        var expected = new byte[16][];
        var writes = new List<Task>();
        // One buffer per round, rewritten the moment its write completes, eight writes of 1 MiB in flight at a time.
        for (int round = 0; round < 2; round++)
        {
            var buffers = Enumerable.Range(0, 8).Select(_ => new byte[Size]).ToArray();
            for (int i = 0; i < 8; i++)
            {
                int slot = round * 8 + i;
                new Random(slot).NextBytes(buffers[i]);
                expected[slot] = (byte[])buffers[i].Clone();
                var mine = buffers[i];
                writes.Add(volume.WriteAsync((long)slot * Size * 4, mine, fua: false).AsTask()
                    .ContinueWith(t => { t.GetAwaiter().GetResult(); Array.Fill(mine, (byte)0xEE); }, TaskScheduler.Default));
            }
            await Task.WhenAll(writes);
        }
        for (int slot = 0; slot < 16; slot++)
        {
            await volume.ReadAsync((long)slot * Size * 4, buffer);
            Assert.True(buffer.AsSpan().SequenceEqual(expected[slot]), $"write {slot} changed after its buffer was reused");
        }
        volume.Dispose();
        backend.DeleteVolume(name, recursive: false);
    }
}
