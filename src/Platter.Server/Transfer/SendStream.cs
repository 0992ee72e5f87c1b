using System.Buffers.Binary;
using System.IO.Hashing;
using System.Text;

namespace Platter.Server.Transfer;

/// <summary>
/// The send stream (docs/SEND_STREAM.md): a header, data and zero records each with its own checksum, and an end
/// record with totals. Everything little-endian. Each record's checksum is XXH3-64 of the record's bytes seeded
/// with the record's sequence number, so a dropped, repeated or reordered record fails its own check, not only the
/// totals at the end.
/// </summary>
public static class SendStream
{
    /// <summary>First 8 bytes of every stream.</summary>
    public static ReadOnlySpan<byte> Magic => "PLTRSEND"u8;

    /// <summary>The format version this build writes and the only one it reads.</summary>
    public const ushort Version = 1;

    /// <summary>Header flag: the stream holds only the changes since a base snapshot.</summary>
    public const ushort FlagIncremental = 1;

    /// <summary>
    /// Largest data record payload. It bounds the buffer a receiver allocates per stream (one record is verified
    /// before any of it is written); 1 MiB is the size at which the engine's sequential writes reach full speed.
    /// </summary>
    public const int RecordPayloadBytesMax = 1024 * 1024;

    /// <summary>Largest header: the fixed part plus three names of at most <see cref="VolumeNames.NameBytesMax"/> bytes.</summary>
    public const int HeaderBytesMax = HeaderFixedBytes + 3 * (2 + VolumeNames.NameBytesMax) + 8;

    /// <summary>magic 8, version 2, flags 2, header length 4, volume size 8, snapshot id 16, base id 16, created 8.</summary>
    internal const int HeaderFixedBytes = 8 + 2 + 2 + 4 + 8 + 16 + 16 + 8;

    /// <summary>type 4, offset 8, length 8.</summary>
    internal const int RecordHeadBytes = 4 + 8 + 8;

    /// <summary>The end record's payload: zero bytes total 8, volume size 8.</summary>
    internal const int EndPayloadBytes = 16;

    internal const int ChecksumBytes = 8;

    /// <summary>Content type of the stream on the management API.</summary>
    public const string ContentType = Api.TransferMediaTypes.SendStream;

    internal static ulong Checksum(ReadOnlySpan<byte> head, ReadOnlySpan<byte> payload, long sequence)
    {
        var hash = new XxHash3(sequence);
        hash.Append(head);
        hash.Append(payload);
        return hash.GetCurrentHashAsUInt64();
    }
}

/// <summary>What a record is.</summary>
public enum SendRecordType : uint
{
    /// <summary>Bytes to write at an offset (the payload follows the record head).</summary>
    Data = 1,
    /// <summary>The range reads as zeros (trimmed or zeroed since the base); no payload.</summary>
    Zero = 2,
    /// <summary>The last record: offset = number of data and zero records, length = payload bytes, then totals.</summary>
    End = 0xE0F,
}

/// <summary>The stream header: which snapshot it carries, and for an incremental stream the base it applies to.</summary>
/// <param name="VolumeSizeBytes">The snapshot's size: the target's size after the stream is applied.</param>
/// <param name="Snapshot">The snapshot's name; the receiver creates it.</param>
/// <param name="SnapshotId">The snapshot's identity (see docs/decisions/0007): kept by the receiver for later increments.</param>
/// <param name="BaseSnapshot">For an incremental stream, the base snapshot's name; null for a full stream.</param>
/// <param name="BaseSnapshotId">The base's identity; the target's snapshot of that name must carry the same.</param>
/// <param name="SourceVolume">The sending volume's name (informational).</param>
/// <param name="SnapshotCreatedUtc">When the snapshot was taken on the sender (informational).</param>
public sealed record SendStreamHeader(long VolumeSizeBytes, string Snapshot, Guid SnapshotId, string? BaseSnapshot, Guid BaseSnapshotId,
    string SourceVolume, DateTimeOffset SnapshotCreatedUtc)
{
    /// <summary>True for a stream of the changes since <see cref="BaseSnapshot"/>.</summary>
    public bool IsIncremental => BaseSnapshot is not null;
}

/// <summary>A stream that is damaged, cut short, from another version, or that does not fit the target.</summary>
public sealed class SendStreamException(string message) : Exception(message);

/// <summary>Writes a send stream to a <see cref="Stream"/>; one instance per stream, not thread-safe.</summary>
public sealed class SendStreamWriter(Stream output)
{
    private readonly byte[] _head = new byte[SendStream.RecordHeadBytes + SendStream.EndPayloadBytes + SendStream.ChecksumBytes];
    private long _sequence;
    private long _records;
    private long _dataBytes;
    private long _zeroBytes;
    private long _volumeSize;

    /// <summary>Bytes written so far, for progress.</summary>
    public long BytesWritten { get; private set; }

    /// <summary>Writes the header; call once, first.</summary>
    public async ValueTask WriteHeaderAsync(SendStreamHeader header, CancellationToken cancellationToken)
    {
        _volumeSize = header.VolumeSizeBytes;
        var buffer = new byte[SendStream.HeaderBytesMax];
        var span = buffer.AsSpan();
        SendStream.Magic.CopyTo(span);
        BinaryPrimitives.WriteUInt16LittleEndian(span[8..], SendStream.Version);
        BinaryPrimitives.WriteUInt16LittleEndian(span[10..], header.IsIncremental ? SendStream.FlagIncremental : (ushort)0);
        BinaryPrimitives.WriteInt64LittleEndian(span[16..], header.VolumeSizeBytes);
        header.SnapshotId.TryWriteBytes(span[24..]);
        (header.IsIncremental ? header.BaseSnapshotId : Guid.Empty).TryWriteBytes(span[40..]);
        BinaryPrimitives.WriteInt64LittleEndian(span[56..], header.SnapshotCreatedUtc.ToUnixTimeMilliseconds());
        int at = SendStream.HeaderFixedBytes;
        at += WriteName(span[at..], header.Snapshot);
        at += WriteName(span[at..], header.BaseSnapshot ?? "");
        at += WriteName(span[at..], header.SourceVolume);
        int length = at + SendStream.ChecksumBytes;
        BinaryPrimitives.WriteInt32LittleEndian(span[12..], length);
        BinaryPrimitives.WriteUInt64LittleEndian(span[at..], SendStream.Checksum(span[..at], default, -1));
        await output.WriteAsync(buffer.AsMemory(0, length), cancellationToken).ConfigureAwait(false);
        BytesWritten += length;
    }

    private static int WriteName(Span<byte> span, string name)
    {
        int bytes = Encoding.UTF8.GetBytes(name, span[2..(2 + VolumeNames.NameBytesMax)]);
        BinaryPrimitives.WriteUInt16LittleEndian(span, (ushort)bytes);
        return 2 + bytes;
    }

    /// <summary>A data record: <paramref name="payload"/> (at most <see cref="SendStream.RecordPayloadBytesMax"/>) at <paramref name="offset"/>.</summary>
    public async ValueTask WriteDataAsync(long offset, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken)
    {
        if (payload.Length is 0 or > SendStream.RecordPayloadBytesMax) throw new ArgumentOutOfRangeException(nameof(payload));
        Head(SendRecordType.Data, offset, payload.Length);
        ulong checksum = SendStream.Checksum(_head.AsSpan(0, SendStream.RecordHeadBytes), payload.Span, _sequence++);
        await output.WriteAsync(_head.AsMemory(0, SendStream.RecordHeadBytes), cancellationToken).ConfigureAwait(false);
        await output.WriteAsync(payload, cancellationToken).ConfigureAwait(false);
        BinaryPrimitives.WriteUInt64LittleEndian(_head, checksum);
        await output.WriteAsync(_head.AsMemory(0, SendStream.ChecksumBytes), cancellationToken).ConfigureAwait(false);
        _records++;
        _dataBytes += payload.Length;
        BytesWritten += SendStream.RecordHeadBytes + payload.Length + SendStream.ChecksumBytes;
    }

    /// <summary>A zero record: the range reads as zeros in the snapshot.</summary>
    public async ValueTask WriteZeroAsync(long offset, long length, CancellationToken cancellationToken)
    {
        if (length <= 0) throw new ArgumentOutOfRangeException(nameof(length));
        Head(SendRecordType.Zero, offset, length);
        ulong checksum = SendStream.Checksum(_head.AsSpan(0, SendStream.RecordHeadBytes), default, _sequence++);
        BinaryPrimitives.WriteUInt64LittleEndian(_head.AsSpan(SendStream.RecordHeadBytes), checksum);
        await output.WriteAsync(_head.AsMemory(0, SendStream.RecordHeadBytes + SendStream.ChecksumBytes), cancellationToken).ConfigureAwait(false);
        _records++;
        _zeroBytes += length;
        BytesWritten += SendStream.RecordHeadBytes + SendStream.ChecksumBytes;
    }

    /// <summary>The end record with the totals; the stream is complete once it is written and flushed.</summary>
    public async ValueTask WriteEndAsync(CancellationToken cancellationToken)
    {
        Head(SendRecordType.End, _records, _dataBytes);
        BinaryPrimitives.WriteInt64LittleEndian(_head.AsSpan(SendStream.RecordHeadBytes), _zeroBytes);
        BinaryPrimitives.WriteInt64LittleEndian(_head.AsSpan(SendStream.RecordHeadBytes + 8), _volumeSize);
        int body = SendStream.RecordHeadBytes + SendStream.EndPayloadBytes;
        ulong checksum = SendStream.Checksum(_head.AsSpan(0, body), default, _sequence++);
        BinaryPrimitives.WriteUInt64LittleEndian(_head.AsSpan(body), checksum);
        await output.WriteAsync(_head.AsMemory(0, body + SendStream.ChecksumBytes), cancellationToken).ConfigureAwait(false);
        await output.FlushAsync(cancellationToken).ConfigureAwait(false);
        BytesWritten += body + SendStream.ChecksumBytes;
    }

    private void Head(SendRecordType type, long offset, long length)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(_head, (uint)type);
        BinaryPrimitives.WriteInt64LittleEndian(_head.AsSpan(4), offset);
        BinaryPrimitives.WriteInt64LittleEndian(_head.AsSpan(12), length);
    }
}

/// <summary>One verified record from <see cref="SendStreamReader"/>.</summary>
/// <param name="Type">Data, Zero or End.</param>
/// <param name="Offset">Byte offset in the volume (Data and Zero).</param>
/// <param name="Length">Byte length.</param>
/// <param name="Payload">For Data: the bytes, valid until the next read.</param>
public readonly record struct SendRecord(SendRecordType Type, long Offset, long Length, ReadOnlyMemory<byte> Payload);

/// <summary>
/// Reads and verifies a send stream: the header, then records until the end record. Every record is checked (its
/// checksum, its range inside the volume, its place in the sequence) before it is returned; the end record's totals
/// are checked against what was read. Any failure is a <see cref="SendStreamException"/> naming what is wrong.
/// </summary>
public sealed class SendStreamReader(Stream input)
{
    private readonly byte[] _buffer = new byte[SendStream.RecordHeadBytes + SendStream.RecordPayloadBytesMax + SendStream.ChecksumBytes];
    private long _sequence;
    private long _records;
    private long _dataBytes;
    private long _zeroBytes;
    private bool _ended;

    /// <summary>The header, once <see cref="ReadHeaderAsync"/> has returned.</summary>
    public SendStreamHeader? Header { get; private set; }

    /// <summary>Bytes consumed so far, for progress and messages.</summary>
    public long BytesRead { get; private set; }

    /// <summary>Reads and verifies the header.</summary>
    public async ValueTask<SendStreamHeader> ReadHeaderAsync(CancellationToken cancellationToken)
    {
        var buffer = new byte[SendStream.HeaderBytesMax];
        await ReadExactlyAsync(buffer.AsMemory(0, SendStream.HeaderFixedBytes), "the header", cancellationToken).ConfigureAwait(false);
        if (!buffer.AsSpan(0, 8).SequenceEqual(SendStream.Magic))
            throw new SendStreamException("not a Platter send stream (it does not start with PLTRSEND)");
        ushort version = BinaryPrimitives.ReadUInt16LittleEndian(buffer.AsSpan(8));
        if (version != SendStream.Version)
            throw new SendStreamException($"send stream format version {version} is not supported (this Platter reads version {SendStream.Version})");
        ushort flags = BinaryPrimitives.ReadUInt16LittleEndian(buffer.AsSpan(10));
        int length = BinaryPrimitives.ReadInt32LittleEndian(buffer.AsSpan(12));
        if (length < SendStream.HeaderFixedBytes + 6 + SendStream.ChecksumBytes || length > SendStream.HeaderBytesMax)
            throw new SendStreamException($"damaged send stream: header length {length} is impossible");
        await ReadExactlyAsync(buffer.AsMemory(SendStream.HeaderFixedBytes, length - SendStream.HeaderFixedBytes), "the header", cancellationToken).ConfigureAwait(false);
        int body = length - SendStream.ChecksumBytes;
        if (BinaryPrimitives.ReadUInt64LittleEndian(buffer.AsSpan(body)) != SendStream.Checksum(buffer.AsSpan(0, body), default, -1))
            throw new SendStreamException("damaged send stream: the header's checksum does not match");
        if ((flags & ~SendStream.FlagIncremental) != 0)
            throw new SendStreamException($"send stream header has unknown flags 0x{flags:x} (written by a newer Platter?)");

        long size = BinaryPrimitives.ReadInt64LittleEndian(buffer.AsSpan(16));
        var snapshotId = new Guid(buffer.AsSpan(24, 16));
        var baseId = new Guid(buffer.AsSpan(40, 16));
        var created = DateTimeOffset.FromUnixTimeMilliseconds(BinaryPrimitives.ReadInt64LittleEndian(buffer.AsSpan(56)));
        int at = SendStream.HeaderFixedBytes;
        string snapshot = ReadName(buffer, ref at, body, "snapshot");
        string baseName = ReadName(buffer, ref at, body, "base snapshot");
        string volume = ReadName(buffer, ref at, body, "volume");
        if (at != body) throw new SendStreamException("damaged send stream: the header's length does not match its names");
        bool incremental = (flags & SendStream.FlagIncremental) != 0;
        if (size <= 0 || size % 512 != 0) throw new SendStreamException($"send stream header has an impossible volume size {size}");
        if (VolumeNames.Validate(snapshot) is { } reason) throw new SendStreamException($"send stream names an invalid snapshot '{snapshot}': {reason}");
        if (incremental != (baseName.Length > 0)) throw new SendStreamException("damaged send stream: the incremental flag and the base snapshot disagree");
        if (incremental && VolumeNames.Validate(baseName) is { } baseReason)
            throw new SendStreamException($"send stream names an invalid base snapshot '{baseName}': {baseReason}");
        Header = new SendStreamHeader(size, snapshot, snapshotId, incremental ? baseName : null, baseId, volume, created);
        return Header;
    }

    private static string ReadName(byte[] buffer, ref int at, int end, string what)
    {
        if (at + 2 > end) throw new SendStreamException($"damaged send stream: the header ends inside the {what} name");
        int length = BinaryPrimitives.ReadUInt16LittleEndian(buffer.AsSpan(at));
        if (length > VolumeNames.NameBytesMax || at + 2 + length > end)
            throw new SendStreamException($"damaged send stream: the {what} name's length {length} is impossible");
        string name = Encoding.UTF8.GetString(buffer, at + 2, length);
        at += 2 + length;
        return name;
    }

    /// <summary>
    /// The next verified record. After the End record (whose totals have been checked) the stream must end: bytes
    /// after it are an error too, since they mean the stream is not what the sender wrote.
    /// </summary>
    public async ValueTask<SendRecord> ReadRecordAsync(CancellationToken cancellationToken)
    {
        var header = Header ?? throw new InvalidOperationException("read the header first");
        if (_ended) throw new InvalidOperationException("the stream has ended");
        await ReadExactlyAsync(_buffer.AsMemory(0, SendStream.RecordHeadBytes), "a record", cancellationToken).ConfigureAwait(false);
        var type = (SendRecordType)BinaryPrimitives.ReadUInt32LittleEndian(_buffer);
        long offset = BinaryPrimitives.ReadInt64LittleEndian(_buffer.AsSpan(4));
        long length = BinaryPrimitives.ReadInt64LittleEndian(_buffer.AsSpan(12));
        int payload = type switch
        {
            SendRecordType.Data when length is > 0 and <= SendStream.RecordPayloadBytesMax => (int)length,
            SendRecordType.Data => throw Damaged($"a data record of {length} bytes (at most {SendStream.RecordPayloadBytesMax})"),
            SendRecordType.Zero => 0,
            SendRecordType.End => SendStream.EndPayloadBytes,
            _ => throw Damaged($"an unknown record type 0x{(uint)type:x}"),
        };
        await ReadExactlyAsync(_buffer.AsMemory(SendStream.RecordHeadBytes, payload + SendStream.ChecksumBytes), "a record", cancellationToken).ConfigureAwait(false);
        int body = SendStream.RecordHeadBytes + payload;
        ulong expected = SendStream.Checksum(_buffer.AsSpan(0, SendStream.RecordHeadBytes), _buffer.AsSpan(SendStream.RecordHeadBytes, payload), _sequence);
        if (BinaryPrimitives.ReadUInt64LittleEndian(_buffer.AsSpan(body)) != expected)
            throw Damaged($"record {_sequence} fails its checksum (a changed, missing or reordered byte)");
        _sequence++;
        if (type == SendRecordType.End)
        {
            long zeroBytes = BinaryPrimitives.ReadInt64LittleEndian(_buffer.AsSpan(SendStream.RecordHeadBytes));
            long size = BinaryPrimitives.ReadInt64LittleEndian(_buffer.AsSpan(SendStream.RecordHeadBytes + 8));
            if (offset != _records || length != _dataBytes || zeroBytes != _zeroBytes || size != header.VolumeSizeBytes)
                throw Damaged($"the end record's totals ({offset} records, {length} data bytes) do not match the stream ({_records}, {_dataBytes})");
            _ended = true;
            if (await input.ReadAsync(_buffer.AsMemory(0, 1), cancellationToken).ConfigureAwait(false) != 0)
                throw Damaged("bytes follow the end record");
            return new SendRecord(type, 0, 0, default);
        }
        if (length <= 0 || offset < 0 || offset > header.VolumeSizeBytes - length)
            throw Damaged($"record {_sequence - 1} ({offset}+{length}) reaches outside the {header.VolumeSizeBytes}-byte volume");
        _records++;
        if (type == SendRecordType.Data) _dataBytes += length;
        else _zeroBytes += length;
        return new SendRecord(type, offset, length, _buffer.AsMemory(SendStream.RecordHeadBytes, payload));
    }

    private SendStreamException Damaged(string what) => new($"damaged send stream at byte {BytesRead}: {what}");

    private async ValueTask ReadExactlyAsync(Memory<byte> destination, string what, CancellationToken cancellationToken)
    {
        int done = 0;
        while (done < destination.Length)
        {
            int n = await input.ReadAsync(destination[done..], cancellationToken).ConfigureAwait(false);
            if (n == 0)
                throw new SendStreamException($"the send stream ends early, inside {what} at byte {BytesRead + done} (interrupted or cut short)");
            done += n;
        }
        BytesRead += done;
    }
}
