using System.Buffers;
using System.Buffers.Binary;
using Platter.Storage.Devices;

namespace Platter.Storage.Internal;

/// <summary>
/// The metadata journal: committed batches of operations appended to a preallocated device and made durable with one
/// sync per group commit. Durable commits of random keys straight into the KV store cost several syncs each; the
/// journal costs one, and the KV store takes the batches later in one large transaction (a checkpoint), after which
/// the journal starts again at offset 0.
///
/// Record: 32-byte header {magic u32, version u16, reserved u16, payload length u32, crc32c u32, sequence u64,
/// reserved u64} then the payload. The CRC covers the header (with the crc field zero) and the payload. Replay reads
/// records from offset 0 while each is intact and its sequence follows the previous one; a torn or stale record ends it.
/// Sequences only grow, so stale records from an earlier cycle can never continue the current one.
/// </summary>
internal sealed class Journal : IDisposable
{
    private const uint Magic = 0x4E524A50; // "PJRN"
    private const ushort Version = 1;
    public const int HeaderBytes = 32;

    private readonly IDataDevice _device;
    private long _position;

    public Journal(IDataDevice device)
    {
        _device = device;
        if (_device.Length < Layout.JournalBytesInitial)
        {
            // Write real zeros once: appends into never-written (unwritten-extent) space would make every journal
            // sync also commit file-system metadata.
            long start = _device.Length;
            _device.Grow(Layout.JournalBytesInitial);
            var zeros = new byte[1 << 20];
            for (long off = start; off < Layout.JournalBytesInitial; off += zeros.Length)
                _device.Write(off, zeros.AsSpan(0, (int)Math.Min(zeros.Length, Layout.JournalBytesInitial - off)));
            _device.Sync();
        }
    }

    /// <summary>Bytes used since the last reset.</summary>
    public long Position => _position;

    /// <summary>
    /// Reads the journal from the start, calling <paramref name="apply"/> for each intact record whose sequence is
    /// greater than <paramref name="appliedSequence"/>. Returns the last sequence seen (or appliedSequence).
    /// </summary>
    public long Replay(long appliedSequence, ReplayAction apply)
    {
        long position = 0;
        long previous = -1;
        long last = appliedSequence;
        Span<byte> header = stackalloc byte[HeaderBytes];
        while (position + HeaderBytes <= _device.Length)
        {
            _device.Read(position, header);
            if (BinaryPrimitives.ReadUInt32LittleEndian(header) != Magic) break;
            if (BinaryPrimitives.ReadUInt16LittleEndian(header[4..]) != Version) break;
            int length = BinaryPrimitives.ReadInt32LittleEndian(header[8..]);
            uint crc = BinaryPrimitives.ReadUInt32LittleEndian(header[12..]);
            long sequence = BinaryPrimitives.ReadInt64LittleEndian(header[16..]);
            if (length < 0 || position + HeaderBytes + length > _device.Length) break;
            if (previous >= 0 && sequence != previous + 1) break;
            var record = ArrayPool<byte>.Shared.Rent(HeaderBytes + length);
            try
            {
                var span = record.AsSpan(0, HeaderBytes + length);
                header.CopyTo(span);
                _device.Read(position + HeaderBytes, span[HeaderBytes..]);
                BinaryPrimitives.WriteUInt32LittleEndian(span[12..], 0);
                if (Crc32C.Compute(span) != crc) break;
                if (sequence > appliedSequence)
                {
                    apply(sequence, span[HeaderBytes..]);
                    last = sequence;
                }
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(record);
            }
            previous = sequence;
            position += HeaderBytes + length;
        }
        return last;
    }

    /// <summary>True when a record with this payload fits without a reset.</summary>
    public bool Fits(int payloadBytes) => _position + HeaderBytes + payloadBytes <= _device.Length;

    /// <summary>Appends a record (not yet durable: call <see cref="Sync"/>). Grows the device when even an empty journal is too small.</summary>
    public void Append(long sequence, ReadOnlySpan<byte> payload)
    {
        int total = HeaderBytes + payload.Length;
        if (_position + total > _device.Length) _device.Grow(_position + total + Layout.JournalBytesInitial);
        var record = ArrayPool<byte>.Shared.Rent(total);
        try
        {
            var span = record.AsSpan(0, total);
            span[..HeaderBytes].Clear();
            BinaryPrimitives.WriteUInt32LittleEndian(span, Magic);
            BinaryPrimitives.WriteUInt16LittleEndian(span[4..], Version);
            BinaryPrimitives.WriteInt32LittleEndian(span[8..], payload.Length);
            BinaryPrimitives.WriteInt64LittleEndian(span[16..], sequence);
            payload.CopyTo(span[HeaderBytes..]);
            BinaryPrimitives.WriteUInt32LittleEndian(span[12..], Crc32C.Compute(span));
            _device.Write(_position, span);
            _position += total;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(record);
        }
    }

    public void Sync() => _device.Sync();

    /// <summary>Starts the next cycle at offset 0; call only after every record is in the KV store durably.</summary>
    public void Reset() => _position = 0;

    public void Dispose() => _device.Dispose();
}

internal delegate void ReplayAction(long sequence, ReadOnlySpan<byte> payload);
