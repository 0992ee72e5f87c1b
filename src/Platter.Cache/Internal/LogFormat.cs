using System.Buffers.Binary;
using System.IO.Hashing;
using System.Text;

namespace Platter.Cache.Internal;

/// <summary>
/// The write-back log's on-disk format (docs/ON_DISK_FORMAT.md, "Write-back cache log").
/// <para>A log file is two 512-byte superblock slots (at 0 and 512), then a ring of records from
/// <see cref="DataStart"/> to the file's end. Superblocks alternate so a torn superblock write leaves the other one
/// valid; the one with the higher generation wins. Records start on 512-byte boundaries: a header (kind, sequence
/// number, the incarnation (open count) that wrote it, volume offset, block count, one XXH3-64 per 4 KiB payload block, and the header's own XXH3-64), padded to
/// 512 bytes, then the payload. Sequence numbers are consecutive, so a reader knows where the log ends: at the first
/// record that is missing, torn, from an older lap of the ring, or damaged.</para>
/// </summary>
internal static class LogFormat
{
    public const int BlockBytes = 4096;
    public const int SectorBytes = 512;

    /// <summary>Records start here: after the two superblock slots, on a 4 KiB boundary.</summary>
    public const long DataStart = 4096;

    /// <summary>
    /// Largest payload of one record, in blocks (1 MiB). Bigger writes become several records (an NBD write is not
    /// atomic anyway); the bound keeps a header within 2.5 KiB and a write-back read within one pooled buffer.
    /// </summary>
    public const int RecordBlocksMax = 256;

    public const uint RecordMagic = 0x52425750; // "PWBR"
    public const ulong SuperMagic = 0x314C42575254_4C50; // "PLTRWBL1" little-endian
    public const uint Version = 1;

    public const ushort KindWrite = 1;
    /// <summary>The rest of the ring up to its end is unused; the next record is at <see cref="DataStart"/>.</summary>
    public const ushort KindWrap = 2;

    private const int HeaderFixedBytes = 48;
    private const int IdentityBytesMax = 400;

    /// <summary>Header bytes of a record of <paramref name="blocks"/> blocks, padded to a sector.</summary>
    public static int HeaderBytes(int blocks) => AlignUp(HeaderFixedBytes + 8 * blocks + 8, SectorBytes);

    public static int AlignUp(int value, int alignment) => (value + alignment - 1) & ~(alignment - 1);

    public static ulong Hash(ReadOnlySpan<byte> data) => XxHash3.HashToUInt64(data);

    /// <summary>Encodes a record header into <paramref name="header"/> (HeaderBytes(sums.Length) long).</summary>
    public static void EncodeHeader(Span<byte> header, ushort kind, ulong logTag, long incarnation, long seq, long volumeOffset, ReadOnlySpan<ulong> sums)
    {
        header.Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(header, RecordMagic);
        BinaryPrimitives.WriteUInt16LittleEndian(header[4..], kind);
        BinaryPrimitives.WriteInt64LittleEndian(header[8..], seq);
        BinaryPrimitives.WriteInt64LittleEndian(header[16..], volumeOffset);
        BinaryPrimitives.WriteInt32LittleEndian(header[24..], sums.Length);
        BinaryPrimitives.WriteInt32LittleEndian(header[28..], header.Length);
        BinaryPrimitives.WriteUInt64LittleEndian(header[32..], logTag);
        BinaryPrimitives.WriteInt64LittleEndian(header[40..], incarnation);
        for (int i = 0; i < sums.Length; i++) BinaryPrimitives.WriteUInt64LittleEndian(header[(HeaderFixedBytes + 8 * i)..], sums[i]);
        int hashAt = HeaderFixedBytes + 8 * sums.Length;
        BinaryPrimitives.WriteUInt64LittleEndian(header[hashAt..], Hash(header[..hashAt]));
    }

    /// <summary>A decoded record header.</summary>
    public readonly record struct RecordHeader(ushort Kind, long Incarnation, long Seq, long VolumeOffset, int Blocks, int HeaderBytes);

    /// <summary>
    /// Decodes the header in <paramref name="bytes"/> (at least one sector; the whole header when it is longer).
    /// Returns false when it is not a valid header of this log (wrong magic or tag, bad hash, impossible sizes); the
    /// caller treats that as the end of the log. <paramref name="needBytes"/> says how many bytes the full header has,
    /// so a caller with only the first sector reads the rest and calls again.
    /// </summary>
    public static bool TryDecodeHeader(ReadOnlySpan<byte> bytes, ulong logTag, out RecordHeader header, out int needBytes, Span<ulong> sums)
    {
        header = default;
        needBytes = SectorBytes;
        if (bytes.Length < SectorBytes) return false;
        if (BinaryPrimitives.ReadUInt32LittleEndian(bytes) != RecordMagic) return false;
        if (BinaryPrimitives.ReadUInt64LittleEndian(bytes[32..]) != logTag) return false;
        ushort kind = BinaryPrimitives.ReadUInt16LittleEndian(bytes[4..]);
        int blocks = BinaryPrimitives.ReadInt32LittleEndian(bytes[24..]);
        int headerBytes = BinaryPrimitives.ReadInt32LittleEndian(bytes[28..]);
        if (kind is not (KindWrite or KindWrap)) return false;
        if (blocks < 0 || blocks > RecordBlocksMax || (kind == KindWrap && blocks != 0) || (kind == KindWrite && blocks == 0)) return false;
        if (headerBytes != HeaderBytes(blocks)) return false;
        needBytes = headerBytes;
        if (bytes.Length < headerBytes) return false;
        int hashAt = HeaderFixedBytes + 8 * blocks;
        if (BinaryPrimitives.ReadUInt64LittleEndian(bytes[hashAt..]) != Hash(bytes[..hashAt])) return false;
        for (int i = 0; i < blocks; i++) sums[i] = BinaryPrimitives.ReadUInt64LittleEndian(bytes[(HeaderFixedBytes + 8 * i)..]);
        header = new RecordHeader(kind, BinaryPrimitives.ReadInt64LittleEndian(bytes[40..]), BinaryPrimitives.ReadInt64LittleEndian(bytes[8..]), BinaryPrimitives.ReadInt64LittleEndian(bytes[16..]), blocks, headerBytes);
        return true;
    }

    /// <summary>The state a superblock slot records.</summary>
    public readonly record struct Super(Guid LogId, string Identity, long Capacity, long Generation, long Incarnation, long HeadSeq, long HeadPos, long FlushedSeq);

    public static void EncodeSuper(Span<byte> slot, in Super s)
    {
        slot[..SectorBytes].Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(slot, SuperMagic);
        BinaryPrimitives.WriteUInt32LittleEndian(slot[8..], Version);
        BinaryPrimitives.WriteInt32LittleEndian(slot[12..], BlockBytes);
        BinaryPrimitives.WriteInt64LittleEndian(slot[16..], s.Capacity);
        s.LogId.TryWriteBytes(slot[24..40]);
        BinaryPrimitives.WriteInt64LittleEndian(slot[40..], s.Generation);
        BinaryPrimitives.WriteInt64LittleEndian(slot[48..], s.HeadSeq);
        BinaryPrimitives.WriteInt64LittleEndian(slot[56..], s.HeadPos);
        BinaryPrimitives.WriteInt64LittleEndian(slot[64..], s.FlushedSeq);
        BinaryPrimitives.WriteInt64LittleEndian(slot[72..], s.Incarnation);
        int n = Encoding.UTF8.GetBytes(s.Identity, slot[82..(82 + IdentityBytesMax)]);
        BinaryPrimitives.WriteUInt16LittleEndian(slot[80..], (ushort)n);
        BinaryPrimitives.WriteUInt64LittleEndian(slot[(SectorBytes - 8)..], Hash(slot[..(SectorBytes - 8)]));
    }

    public static bool TryDecodeSuper(ReadOnlySpan<byte> slot, out Super s)
    {
        s = default;
        if (BinaryPrimitives.ReadUInt64LittleEndian(slot) != SuperMagic) return false;
        if (BinaryPrimitives.ReadUInt64LittleEndian(slot[(SectorBytes - 8)..]) != Hash(slot[..(SectorBytes - 8)])) return false;
        if (BinaryPrimitives.ReadUInt32LittleEndian(slot[8..]) != Version) return false;
        if (BinaryPrimitives.ReadInt32LittleEndian(slot[12..]) != BlockBytes) return false;
        int n = BinaryPrimitives.ReadUInt16LittleEndian(slot[80..]);
        if (n > IdentityBytesMax) return false;
        s = new Super(
            new Guid(slot[24..40]),
            Encoding.UTF8.GetString(slot.Slice(82, n)),
            BinaryPrimitives.ReadInt64LittleEndian(slot[16..]),
            BinaryPrimitives.ReadInt64LittleEndian(slot[40..]),
            BinaryPrimitives.ReadInt64LittleEndian(slot[72..]),
            BinaryPrimitives.ReadInt64LittleEndian(slot[48..]),
            BinaryPrimitives.ReadInt64LittleEndian(slot[56..]),
            BinaryPrimitives.ReadInt64LittleEndian(slot[64..]));
        return true;
    }

    /// <summary>Checks that an identity fits a superblock.</summary>
    public static bool IdentityFits(string identity) => Encoding.UTF8.GetByteCount(identity) <= IdentityBytesMax;
}
