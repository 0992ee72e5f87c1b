using System.Text;
using Platter.Storage;
using Xunit;

namespace Platter.Storage.Tests;

public class Crc32CTests
{
    [Fact]
    public void Matches_the_published_check_value()
    {
        // The CRC-32C check value from the catalogue of CRC parameters (iSCSI, RFC 3720).
        Assert.Equal(0xE3069283u, Crc32C.Compute(Encoding.ASCII.GetBytes("123456789")));
        Assert.Equal(0x00000000u, Crc32C.Compute([]));
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    [InlineData(7)]
    [InlineData(256)]
    public void Block_batches_equal_one_block_at_a_time(int blocks)
    {
        var data = new byte[blocks * 4096];
        new Random(blocks).NextBytes(data);
        var crcs = new uint[blocks];
        Crc32C.ComputeBlocks(data, 4096, crcs);
        for (int i = 0; i < blocks; i++)
            Assert.Equal(Crc32C.Compute(data.AsSpan(i * 4096, 4096)), crcs[i]);
    }

    [Fact]
    public void A_flipped_bit_changes_the_checksum()
    {
        var data = new byte[4096];
        uint before = Crc32C.Compute(data);
        data[1234] ^= 0x10;
        Assert.NotEqual(before, Crc32C.Compute(data));
    }
}
