using System.Buffers;
using System.Buffers.Binary;
using System.Text;

namespace Platter.Storage.Internal;

/// <summary>Kinds of metadata operation. Values are on-disk (journal) format: never renumber.</summary>
internal enum OpKind : byte
{
    /// <summary>Map [block, block+count) of a layer (a volume's writes) to physical blocks [pba, pba+count) with per-block CRCs.</summary>
    MapExtent = 1,
    /// <summary>Remove [block, block+count) from a layer (trim, write-zeroes, shrink): it shows what the parent holds there.</summary>
    Unmap = 2,
    /// <summary>A new volume with its first layer; a clone names its origin snapshot.</summary>
    CreateVolume = 3,
    /// <summary>Delete a volume, its snapshots and all their layers.</summary>
    DeleteVolume = 4,
    ResizeVolume = 5,
    RenameVolume = 6,
    /// <summary>The volume's layer becomes the snapshot's; the volume continues in a new, empty layer on top of it.</summary>
    CreateSnapshot = 7,
    /// <summary>Delete a snapshot: the layer of the version derived from it is merged into the snapshot's layer, which that version takes over.</summary>
    DeleteSnapshot = 8,
    /// <summary>The volume drops its layer and newer snapshots, and continues in a new, empty layer on top of the snapshot.</summary>
    Rollback = 9,
    /// <summary>Record in a layer that [block, block+count) reads as zeros although the parent maps it.</summary>
    Tombstone = 10,
    /// <summary>
    /// A clone stops depending on its origin snapshot: its layer (filled beforehand, by ordinary MapExtent records,
    /// with copies of every block it inherited) is now its whole content. Decision 0008.
    /// </summary>
    Flatten = 11,
}

/// <summary>
/// An append-only buffer of encoded metadata operations: the in-memory overlay of changes not yet journaled.
/// Operations are encoded once, when they happen, and the same bytes go to the journal and later to the KV store,
/// so the write path allocates no objects per operation. Little-endian throughout.
/// </summary>
internal sealed class OpLog : IDisposable
{
    private byte[] _buffer;
    private int _length;

    public OpLog(int initialBytes = 4096) => _buffer = ArrayPool<byte>.Shared.Rent(initialBytes);

    public int Length => _length;
    public ReadOnlySpan<byte> Span => _buffer.AsSpan(0, _length);

    /// <summary>Encoded size of a MapExtent of <paramref name="blocks"/> blocks.</summary>
    public static int MapExtentBytes(int blocks) => 1 + 8 + 8 + 4 + 8 + 4 * blocks;

    public void AppendMapExtent(long layerId, long block, ReadOnlySpan<uint> crcs, long pba)
    {
        var s = Reserve(MapExtentBytes(crcs.Length));
        s[0] = (byte)OpKind.MapExtent;
        BinaryPrimitives.WriteInt64LittleEndian(s[1..], layerId);
        BinaryPrimitives.WriteInt64LittleEndian(s[9..], block);
        BinaryPrimitives.WriteInt32LittleEndian(s[17..], crcs.Length);
        BinaryPrimitives.WriteInt64LittleEndian(s[21..], pba);
        for (int i = 0; i < crcs.Length; i++)
            BinaryPrimitives.WriteUInt32LittleEndian(s[(29 + 4 * i)..], crcs[i]);
    }

    /// <summary>Encoded size of an Unmap or a Tombstone.</summary>
    public const int UnmapBytes = 1 + 8 + 8 + 8;

    public void AppendUnmap(long layerId, long block, long count) => AppendRange(OpKind.Unmap, layerId, block, count);

    public void AppendTombstone(long layerId, long block, long count) => AppendRange(OpKind.Tombstone, layerId, block, count);

    private void AppendRange(OpKind kind, long layerId, long block, long count)
    {
        var s = Reserve(UnmapBytes);
        s[0] = (byte)kind;
        BinaryPrimitives.WriteInt64LittleEndian(s[1..], layerId);
        BinaryPrimitives.WriteInt64LittleEndian(s[9..], block);
        BinaryPrimitives.WriteInt64LittleEndian(s[17..], count);
    }

    /// <summary>A volume (a clone when <paramref name="originSnapshotId"/> is not 0) whose writes go to layer <paramref name="layerId"/>.</summary>
    public void AppendCreateVolume(long volumeId, long sizeBytes, DateTimeOffset created, long layerId, long originSnapshotId, string name)
    {
        int nameBytes = Encoding.UTF8.GetByteCount(name);
        var s = Reserve(1 + 8 + 8 + 8 + 8 + 8 + 2 + nameBytes);
        s[0] = (byte)OpKind.CreateVolume;
        BinaryPrimitives.WriteInt64LittleEndian(s[1..], volumeId);
        BinaryPrimitives.WriteInt64LittleEndian(s[9..], sizeBytes);
        BinaryPrimitives.WriteInt64LittleEndian(s[17..], created.UtcTicks);
        BinaryPrimitives.WriteInt64LittleEndian(s[25..], layerId);
        BinaryPrimitives.WriteInt64LittleEndian(s[33..], originSnapshotId);
        BinaryPrimitives.WriteUInt16LittleEndian(s[41..], (ushort)nameBytes);
        Encoding.UTF8.GetBytes(name, s[43..]);
    }

    public void AppendCreateSnapshot(long volumeId, long snapshotId, long newLayerId, DateTimeOffset created, string name)
    {
        int nameBytes = Encoding.UTF8.GetByteCount(name);
        var s = Reserve(1 + 8 + 8 + 8 + 8 + 2 + nameBytes);
        s[0] = (byte)OpKind.CreateSnapshot;
        BinaryPrimitives.WriteInt64LittleEndian(s[1..], volumeId);
        BinaryPrimitives.WriteInt64LittleEndian(s[9..], snapshotId);
        BinaryPrimitives.WriteInt64LittleEndian(s[17..], newLayerId);
        BinaryPrimitives.WriteInt64LittleEndian(s[25..], created.UtcTicks);
        BinaryPrimitives.WriteUInt16LittleEndian(s[33..], (ushort)nameBytes);
        Encoding.UTF8.GetBytes(name, s[35..]);
    }

    public void AppendDeleteSnapshot(long volumeId, long snapshotId)
    {
        var s = Reserve(1 + 8 + 8);
        s[0] = (byte)OpKind.DeleteSnapshot;
        BinaryPrimitives.WriteInt64LittleEndian(s[1..], volumeId);
        BinaryPrimitives.WriteInt64LittleEndian(s[9..], snapshotId);
    }

    public void AppendRollback(long volumeId, long snapshotId, long newLayerId)
    {
        var s = Reserve(1 + 8 + 8 + 8);
        s[0] = (byte)OpKind.Rollback;
        BinaryPrimitives.WriteInt64LittleEndian(s[1..], volumeId);
        BinaryPrimitives.WriteInt64LittleEndian(s[9..], snapshotId);
        BinaryPrimitives.WriteInt64LittleEndian(s[17..], newLayerId);
    }

    public void AppendFlatten(long volumeId)
    {
        var s = Reserve(1 + 8);
        s[0] = (byte)OpKind.Flatten;
        BinaryPrimitives.WriteInt64LittleEndian(s[1..], volumeId);
    }

    public void AppendDeleteVolume(long volumeId)
    {
        var s = Reserve(1 + 8);
        s[0] = (byte)OpKind.DeleteVolume;
        BinaryPrimitives.WriteInt64LittleEndian(s[1..], volumeId);
    }

    public void AppendResizeVolume(long volumeId, long sizeBytes)
    {
        var s = Reserve(1 + 8 + 8);
        s[0] = (byte)OpKind.ResizeVolume;
        BinaryPrimitives.WriteInt64LittleEndian(s[1..], volumeId);
        BinaryPrimitives.WriteInt64LittleEndian(s[9..], sizeBytes);
    }

    public void AppendRenameVolume(long volumeId, string name)
    {
        int nameBytes = Encoding.UTF8.GetByteCount(name);
        var s = Reserve(1 + 8 + 2 + nameBytes);
        s[0] = (byte)OpKind.RenameVolume;
        BinaryPrimitives.WriteInt64LittleEndian(s[1..], volumeId);
        BinaryPrimitives.WriteUInt16LittleEndian(s[9..], (ushort)nameBytes);
        Encoding.UTF8.GetBytes(name, s[11..]);
    }

    public void Append(ReadOnlySpan<byte> encoded) => encoded.CopyTo(Reserve(encoded.Length));

    public void Clear() => _length = 0;

    private Span<byte> Reserve(int bytes)
    {
        if (_length + bytes > _buffer.Length)
        {
            var bigger = ArrayPool<byte>.Shared.Rent(Math.Max(_buffer.Length * 2, _length + bytes));
            _buffer.AsSpan(0, _length).CopyTo(bigger);
            ArrayPool<byte>.Shared.Return(_buffer);
            _buffer = bigger;
        }
        var span = _buffer.AsSpan(_length, bytes);
        _length += bytes;
        return span;
    }

    public void Dispose()
    {
        if (_buffer.Length > 0) ArrayPool<byte>.Shared.Return(_buffer);
        _buffer = [];
        _length = 0;
    }
}

/// <summary>One decoded operation. For MapExtent, <see cref="Crcs"/> holds the encoded CRCs (little-endian u32 each).</summary>
internal readonly ref struct Op
{
    public OpKind Kind { get; init; }
    public long VolumeId { get; init; }
    /// <summary>MapExtent, Unmap, Tombstone: the layer changed. CreateVolume, CreateSnapshot, Rollback: the volume's new layer.</summary>
    public long LayerId { get; init; }
    /// <summary>CreateSnapshot, DeleteSnapshot, Rollback: the snapshot. CreateVolume: the origin snapshot (0 = none).</summary>
    public long SnapshotId { get; init; }
    public long Block { get; init; }
    public long Count { get; init; }
    public long Pba { get; init; }
    public long SizeBytes { get; init; }
    public long CreatedTicks { get; init; }
    public ReadOnlySpan<byte> Crcs { get; init; }
    public ReadOnlySpan<byte> NameUtf8 { get; init; }

    public uint Crc(int i) => BinaryPrimitives.ReadUInt32LittleEndian(Crcs[(4 * i)..]);
    public string Name => Encoding.UTF8.GetString(NameUtf8);
}

/// <summary>Reads operations back from their encoding; throws <see cref="InvalidDataException"/> on malformed input.</summary>
internal ref struct OpReader(ReadOnlySpan<byte> data)
{
    private ReadOnlySpan<byte> _rest = data;

    public bool TryRead(out Op op)
    {
        if (_rest.IsEmpty)
        {
            op = default;
            return false;
        }
        var kind = (OpKind)_rest[0];
        var s = _rest[1..];
        int used;
        switch (kind)
        {
            case OpKind.MapExtent:
            {
                Need(s, 28);
                int count = BinaryPrimitives.ReadInt32LittleEndian(s[16..]);
                if (count <= 0 || count > 1 << 20) throw new InvalidDataException($"bad extent length {count}");
                Need(s, 28 + 4 * count);
                op = new Op
                {
                    Kind = kind, LayerId = BinaryPrimitives.ReadInt64LittleEndian(s), Block = BinaryPrimitives.ReadInt64LittleEndian(s[8..]),
                    Count = count, Pba = BinaryPrimitives.ReadInt64LittleEndian(s[20..]), Crcs = s.Slice(28, 4 * count),
                };
                used = 28 + 4 * count;
                break;
            }
            case OpKind.Unmap:
            case OpKind.Tombstone:
                Need(s, 24);
                op = new Op
                {
                    Kind = kind, LayerId = BinaryPrimitives.ReadInt64LittleEndian(s), Block = BinaryPrimitives.ReadInt64LittleEndian(s[8..]),
                    Count = BinaryPrimitives.ReadInt64LittleEndian(s[16..]),
                };
                used = 24;
                break;
            case OpKind.CreateVolume:
            {
                Need(s, 42);
                int nameBytes = BinaryPrimitives.ReadUInt16LittleEndian(s[40..]);
                Need(s, 42 + nameBytes);
                op = new Op
                {
                    Kind = kind, VolumeId = BinaryPrimitives.ReadInt64LittleEndian(s), SizeBytes = BinaryPrimitives.ReadInt64LittleEndian(s[8..]),
                    CreatedTicks = BinaryPrimitives.ReadInt64LittleEndian(s[16..]), LayerId = BinaryPrimitives.ReadInt64LittleEndian(s[24..]),
                    SnapshotId = BinaryPrimitives.ReadInt64LittleEndian(s[32..]), NameUtf8 = s.Slice(42, nameBytes),
                };
                used = 42 + nameBytes;
                break;
            }
            case OpKind.CreateSnapshot:
            {
                Need(s, 34);
                int nameBytes = BinaryPrimitives.ReadUInt16LittleEndian(s[32..]);
                Need(s, 34 + nameBytes);
                op = new Op
                {
                    Kind = kind, VolumeId = BinaryPrimitives.ReadInt64LittleEndian(s), SnapshotId = BinaryPrimitives.ReadInt64LittleEndian(s[8..]),
                    LayerId = BinaryPrimitives.ReadInt64LittleEndian(s[16..]), CreatedTicks = BinaryPrimitives.ReadInt64LittleEndian(s[24..]),
                    NameUtf8 = s.Slice(34, nameBytes),
                };
                used = 34 + nameBytes;
                break;
            }
            case OpKind.DeleteSnapshot:
                Need(s, 16);
                op = new Op { Kind = kind, VolumeId = BinaryPrimitives.ReadInt64LittleEndian(s), SnapshotId = BinaryPrimitives.ReadInt64LittleEndian(s[8..]) };
                used = 16;
                break;
            case OpKind.Rollback:
                Need(s, 24);
                op = new Op
                {
                    Kind = kind, VolumeId = BinaryPrimitives.ReadInt64LittleEndian(s), SnapshotId = BinaryPrimitives.ReadInt64LittleEndian(s[8..]),
                    LayerId = BinaryPrimitives.ReadInt64LittleEndian(s[16..]),
                };
                used = 24;
                break;
            case OpKind.DeleteVolume:
            case OpKind.Flatten:
                Need(s, 8);
                op = new Op { Kind = kind, VolumeId = BinaryPrimitives.ReadInt64LittleEndian(s) };
                used = 8;
                break;
            case OpKind.ResizeVolume:
                Need(s, 16);
                op = new Op { Kind = kind, VolumeId = BinaryPrimitives.ReadInt64LittleEndian(s), SizeBytes = BinaryPrimitives.ReadInt64LittleEndian(s[8..]) };
                used = 16;
                break;
            case OpKind.RenameVolume:
            {
                Need(s, 10);
                int nameBytes = BinaryPrimitives.ReadUInt16LittleEndian(s[8..]);
                Need(s, 10 + nameBytes);
                op = new Op { Kind = kind, VolumeId = BinaryPrimitives.ReadInt64LittleEndian(s), NameUtf8 = s.Slice(10, nameBytes) };
                used = 10 + nameBytes;
                break;
            }
            default:
                throw new InvalidDataException($"unknown metadata operation {(byte)kind}");
        }
        _rest = s[used..];
        return true;
    }

    private static void Need(ReadOnlySpan<byte> s, int bytes)
    {
        if (s.Length < bytes) throw new InvalidDataException("truncated metadata operation");
    }
}
