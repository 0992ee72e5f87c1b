using Platter.Testing;
using Xunit;

namespace Platter.Rbd.Tests;

/// <summary>
/// Closing a volume right after its last write and flush completed: what the Contract tests do in many places, and
/// where they aborted in native code (std::system_error EINVAL) while flushes were answered without librbd
/// (session 8's shortcut, dropped again in session 10: docs/PERFORMANCE.md). Many rounds, because any window there is
/// narrow; the data must read back after every close.
/// </summary>
[Collection(CephCollection.Name)]
public sealed class FlushTests(CephCluster ceph)
{
    private const int Rounds = 40;

    [Fact]
    public async Task A_volume_closed_right_after_a_write_and_a_flush_closes_cleanly_and_keeps_the_data()
    {
        using var backend = ceph.OpenBackend();
        string name = CephCluster.UniqueName("flushclose");
        backend.CreateVolume(name, 16L << 20);
        try
        {
            for (int round = 0; round < Rounds; round++)
            {
                using var handle = backend.OpenVolumeHandle(name);
                var data = new byte[4096];
                Array.Fill(data, (byte)round);
                await handle.WriteAsync(4096L * round, data, fua: round % 2 == 0);
                await handle.FlushAsync();
            }
            using var check = backend.OpenVolumeHandle(name);
            var back = new byte[4096];
            for (int round = 0; round < Rounds; round++)
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
}
