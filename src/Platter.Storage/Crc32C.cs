using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics.X86;

namespace Platter.Storage;

/// <summary>
/// CRC32C (Castagnoli), the checksum kept with every 4 KiB block. Uses the SSE4.2 CRC32 instruction when the CPU has it
/// (about 8 bytes per cycle), a table otherwise. System.IO.Hashing would do this, but it is not available to the build.
/// </summary>
public static class Crc32C
{
    private const uint Polynomial = 0x82F63B78; // reflected Castagnoli polynomial
    private static readonly uint[] Table = BuildTable();

    /// <summary>CRC32C of <paramref name="data"/> (initial value and final xor 0xFFFFFFFF, as in iSCSI and ext4).</summary>
    public static uint Compute(ReadOnlySpan<byte> data) => ~Append(0xFFFFFFFFu, data);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static uint Append(uint crc, ReadOnlySpan<byte> data)
    {
        if (Sse42.X64.IsSupported)
        {
            ulong c = crc;
            int i = 0;
            for (; i + 8 <= data.Length; i += 8)
                c = Sse42.X64.Crc32(c, BinaryPrimitives.ReadUInt64LittleEndian(data[i..]));
            crc = (uint)c;
            for (; i < data.Length; i++)
                crc = Sse42.Crc32(crc, data[i]);
            return crc;
        }
        foreach (byte b in data)
            crc = Table[(crc ^ b) & 0xFF] ^ (crc >> 8);
        return crc;
    }

    private static uint[] BuildTable()
    {
        var table = new uint[256];
        for (uint i = 0; i < 256; i++)
        {
            uint c = i;
            for (int k = 0; k < 8; k++)
                c = (c & 1) != 0 ? (c >> 1) ^ Polynomial : c >> 1;
            table[i] = c;
        }
        return table;
    }
}
