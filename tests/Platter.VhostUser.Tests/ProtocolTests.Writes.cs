using Platter.VhostUser.Internal;

namespace Platter.VhostUser.Tests;

public sealed partial class ProtocolTests
{
    /// <summary>
    /// A write's data is copied out of guest memory before the engine sees it, so a guest changing its buffer while the
    /// write is in flight cannot make the engine store one version of a block under the checksum of another: the hook
    /// scribbles over the guest bytes of each piece as it reaches the engine, and what is stored is what the guest
    /// posted. Small (a pooled array), large (an aligned buffer) and longer than one write buffer (in pieces).
    /// </summary>
    [Fact]
    public void Writes_store_what_the_guest_posted_even_when_it_changes_its_buffer_under_the_write()
    {
        var (kick, call) = StartQueue();
        const ulong dataGpa = 1 << 20;
        long sectorBase = 0;
        foreach (uint bytes in new uint[] { 8192, VhostUserLimits.AlignedWriteBytesMin, 2 * VhostUserLimits.WriteBufferBytes + 4096 })
        {
            var data = new byte[bytes];
            new Random((int)bytes).NextBytes(data);
            data.CopyTo(_guest.Bytes(dataGpa, data.Length));
            long volumeOffset = sectorBase * 512;
            int calls = 0;
            _served.BeforeWrite = (offset, source) =>
            {
                calls++;
                // The guest rewrites the pages this piece came from.
                _guest.Bytes(dataGpa + (ulong)(offset - volumeOffset), source.Length).Fill(0xee);
            };
            Assert.Equal(VirtioBlk.StatusOk, Request(kick, call, VirtioBlk.TypeOut, (ulong)sectorBase, dataGpa, bytes, writable: false));
            _served.BeforeWrite = null;
            Assert.Equal((int)((bytes + VhostUserLimits.WriteBufferBytes - 1) / VhostUserLimits.WriteBufferBytes), calls);
            var back = new byte[bytes];
            ReadVolume(volumeOffset, back);
            Assert.Equal(data, back);
            sectorBase += bytes / 512;
        }
        Native.close(kick);
        Native.close(call);
    }
}
