using System.Buffers;
using System.Buffers.Binary;
using Microsoft.Extensions.Logging;
using Platter.Storage.Devices;

namespace Platter.Storage.Internal;

/// <summary>
/// The metadata journal: committed batches of operations appended to a preallocated region at the start of the data
/// file and made durable by the same fdatasync that makes the batch's data durable: one sync per group commit.
/// Durable commits of random keys straight into the KV store cost several syncs each; the KV store takes the batches
/// later in one large transaction (a checkpoint).
///
/// The region has two halves. Records go to the active half; when it fills (or ages) the store switches to the other
/// half, whose records are all in the KV store already, and a background thread checkpoints the half just left. So a
/// checkpoint never stalls a commit. Replay reads the record chain of both halves and applies, in sequence order, the
/// records newer than the KV store's applied sequence.
/// Because data and record share one sync, a crash during it can leave the record on disk without all of its data:
/// recovery checks the data of the last record against its checksums and drops the record when any block is missing
/// (that commit was never acknowledged).
///
/// Record: 32-byte header {magic u32, version u16, reserved u16, payload length u32, crc32c u32, sequence u64,
/// reserved u64} then the payload. The CRC covers the header (with the crc field zero) and the payload. Each half is read
/// from its start while records are intact and each sequence follows the previous one; a torn or stale record ends it.
/// Sequences only grow and a half is reused only once all its records are checkpointed, so a stale record can never
/// continue the current chain.
/// </summary>
internal sealed class Journal : IDisposable
{
    private const uint Magic = 0x4E524A50; // "PJRN"
    private const ushort Version = 1;
    public const int HeaderBytes = 32;

    private readonly IDataDevice _device;
    private readonly long _halfBytes;
    private int _active;
    private long _position;

    public Journal(IDataDevice device)
    {
        _device = device;
        _halfBytes = device.Length / 2;
    }

    /// <summary>
    /// Writes real zeros over the whole region once, when the store is created: appends into never-written
    /// (unwritten-extent) space would make every commit's sync also commit file-system metadata.
    /// </summary>
    public void Format()
    {
        _device.Grow(_device.Length);
        var zeros = new byte[1 << 20];
        for (long off = 0; off < _device.Length; off += zeros.Length)
            _device.Write(off, zeros.AsSpan(0, (int)Math.Min(zeros.Length, _device.Length - off)));
        _device.Sync();
    }

    /// <summary>Bytes used in the active half.</summary>
    public long Position => _position;

    /// <summary>Size of one journal half (metrics show how full the current one is).</summary>
    public long HalfBytes => _halfBytes;

    /// <summary>
    /// Reads the journal from the start and returns, in order, the payloads of the intact records whose sequence is
    /// greater than <paramref name="appliedSequence"/>. Reading stops at the first torn, stale or foreign record.
    /// A record dropped because it is damaged, or because it follows a gap in the sequence, is logged with what it
    /// held: a crash during a commit tears only a record that was never acknowledged, but damage on disk can hit
    /// one that was, and its writes are then lost — the log says which.
    /// </summary>
    public List<(long Sequence, byte[] Payload)> ReadRecords(long appliedSequence, ILogger? logger = null, Func<long, string?>? layerName = null)
    {
        var found = new List<(long Sequence, byte[] Payload)>();
        ReadHalf(0, appliedSequence, found, logger, layerName);
        ReadHalf(_halfBytes, appliedSequence, found, logger, layerName);
        found.Sort((a, b) => a.Sequence.CompareTo(b.Sequence));
        // Only an unbroken run from the applied sequence on is history; anything after a gap never committed.
        var records = new List<(long, byte[])>();
        long expected = appliedSequence + 1;
        foreach (var (sequence, payload) in found)
        {
            if (sequence != expected)
            {
                logger?.LogWarning("Dropped journal record {Sequence}: it follows a gap (record {Expected} is missing or damaged); it held {Contents}",
                    sequence, expected, Describe(payload, layerName));
                continue;
            }
            records.Add((sequence, payload));
            expected++;
        }
        return records;
    }

    private void ReadHalf(long start, long appliedSequence, List<(long, byte[])> records, ILogger? logger, Func<long, string?>? layerName)
    {
        long end = start + _halfBytes;
        long position = start;
        long previous = -1;
        Span<byte> header = stackalloc byte[HeaderBytes];
        while (position + HeaderBytes <= end)
        {
            _device.Read(position, header);
            if (BinaryPrimitives.ReadUInt32LittleEndian(header) != Magic) break;
            if (BinaryPrimitives.ReadUInt16LittleEndian(header[4..]) != Version) break;
            int length = BinaryPrimitives.ReadInt32LittleEndian(header[8..]);
            uint crc = BinaryPrimitives.ReadUInt32LittleEndian(header[12..]);
            long sequence = BinaryPrimitives.ReadInt64LittleEndian(header[16..]);
            // A record that would continue the chain but fails its checks was torn by a crash or damaged since.
            bool continues = previous >= 0 ? sequence == previous + 1 : sequence > appliedSequence;
            if (length < 0 || position + HeaderBytes + length > end)
            {
                if (continues) LogDamaged(logger, sequence, position, $"its length {length} runs past the journal half", ReadOnlySpan<byte>.Empty, layerName);
                break;
            }
            if (previous >= 0 && sequence != previous + 1) break;
            var record = new byte[HeaderBytes + length];
            header.CopyTo(record);
            _device.Read(position + HeaderBytes, record.AsSpan(HeaderBytes));
            BinaryPrimitives.WriteUInt32LittleEndian(record.AsSpan(12), 0);
            if (Crc32C.Compute(record) != crc)
            {
                if (continues) LogDamaged(logger, sequence, position, "its checksum does not match", record.AsSpan(HeaderBytes), layerName);
                break;
            }
            if (sequence > appliedSequence) records.Add((sequence, record[HeaderBytes..]));
            previous = sequence;
            position += HeaderBytes + length;
        }
    }

    private static void LogDamaged(ILogger? logger, long sequence, long position, string why, ReadOnlySpan<byte> payload, Func<long, string?>? layerName) =>
        logger?.LogWarning(
            "Dropped journal record {Sequence} at journal offset {Offset}: {Why}. Either a crash tore it during its commit (then it was " +
            "never acknowledged) or it was damaged since (then these acknowledged writes are lost); as far as it can be read it held {Contents}",
            sequence, position, why, payload.IsEmpty ? "nothing readable" : Describe(payload, layerName));

    /// <summary>
    /// What a journal payload holds, in one line for a log: blocks written and unmapped per layer, and every catalog
    /// change. Reads as far as the payload decodes (a damaged record may decode only in part).
    /// </summary>
    public static string Describe(ReadOnlySpan<byte> payload, Func<long, string?>? layerName = null)
    {
        var written = new SortedDictionary<long, (long Blocks, long First, long End)>();
        var unmapped = new SortedDictionary<long, long>();
        var catalog = new List<string>();
        string tail = "";
        var reader = new OpReader(payload);
        try
        {
            while (reader.TryRead(out var op))
            {
                switch (op.Kind)
                {
                    case OpKind.MapExtent:
                        var w = written.GetValueOrDefault(op.LayerId, (0, long.MaxValue, 0));
                        written[op.LayerId] = (w.Blocks + op.Count, Math.Min(w.First, op.Block), Math.Max(w.End, op.Block + op.Count));
                        break;
                    case OpKind.Unmap:
                    case OpKind.Tombstone:
                        unmapped[op.LayerId] = unmapped.GetValueOrDefault(op.LayerId) + 1;
                        break;
                    case OpKind.CreateVolume: catalog.Add($"create volume '{op.Name}' (id {op.VolumeId})"); break;
                    case OpKind.DeleteVolume: catalog.Add($"delete volume {op.VolumeId}"); break;
                    case OpKind.ResizeVolume: catalog.Add($"resize volume {op.VolumeId} to {op.SizeBytes} bytes"); break;
                    case OpKind.RenameVolume: catalog.Add($"rename volume {op.VolumeId} to '{op.Name}'"); break;
                    case OpKind.CreateSnapshot: catalog.Add($"snapshot '{op.Name}' of volume {op.VolumeId}"); break;
                    case OpKind.DeleteSnapshot: catalog.Add($"delete snapshot {op.SnapshotId} of volume {op.VolumeId}"); break;
                    case OpKind.Rollback: catalog.Add($"roll volume {op.VolumeId} back to snapshot {op.SnapshotId}"); break;
                }
            }
        }
        catch (InvalidDataException e)
        {
            tail = $"; the rest does not decode ({e.Message})";
        }
        var parts = written.Select(kv => $"{kv.Value.Blocks} blocks written to {Owner(kv.Key)} at offsets {kv.Value.First << EngineLimits.BlockShift}..{(kv.Value.End << EngineLimits.BlockShift) - 1}")
            .Concat(unmapped.Select(kv => $"{kv.Value} unmaps in {Owner(kv.Key)}"))
            .Concat(catalog)
            .ToList();
        return (parts.Count == 0 ? "no operations" : string.Join(", ", parts)) + tail;

        string Owner(long layer) => layerName?.Invoke(layer) is { } name ? $"'{name}'" : $"layer {layer}";
    }

    /// <summary>True when a record with this payload fits in the active half.</summary>
    public bool Fits(int payloadBytes) => _position + HeaderBytes + payloadBytes <= _halfBytes;

    /// <summary>Appends a record; it is durable once the device below is synced. The caller checks <see cref="Fits"/> first.</summary>
    public void Append(long sequence, ReadOnlySpan<byte> payload)
    {
        int total = HeaderBytes + payload.Length;
        if (_position + total > _halfBytes)
            throw new InvalidOperationException($"journal record of {total} bytes does not fit at {_position} in a half of {_halfBytes}");
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
            _device.Write(_active * _halfBytes + _position, span);
            _position += total;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(record);
        }
    }

    /// <summary>Moves to the other half; call only when every record there is in the KV store durably.</summary>
    public void SwitchHalves()
    {
        _active ^= 1;
        _position = 0;
    }

    /// <summary>Starts again in the first half; call only when every record of both halves is in the KV store durably.</summary>
    public void Reset()
    {
        _active = 0;
        _position = 0;
    }

    public void Dispose() => _device.Dispose();
}
