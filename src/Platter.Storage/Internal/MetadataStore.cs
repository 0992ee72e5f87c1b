using System.Buffers.Binary;
using System.Text;
using Platter.Lmdb;

namespace Platter.Storage.Internal;

/// <summary>A volume as the catalog stores it.</summary>
internal sealed record CatalogVolume(long Id, string Name, long SizeBytes, DateTimeOffset Created);

/// <summary>
/// The durable metadata in LMDB: the catalog and every volume's extent map as of the last checkpoint.
/// Databases:
///   meta:    "format" -> u32, "applied-sequence" -> u64, "next-volume-id" -> u64
///   volumes: id (u64 BE) -> {size u64, created ticks i64, name length u16, name utf8}
///   extents: volume id (u64 BE) ++ first block (u64 BE) -> {pba u64, count u32, birth u64, crc32c u32 x count}
/// Keys are big-endian so LMDB's byte order is numeric order: one volume's extents are one contiguous, sorted range.
/// Extents never overlap, never exceed <see cref="Layout.ExtentBlocksMax"/> blocks, and adjacent ones that continue each
/// other physically (same birth) are merged as they are written.
/// </summary>
internal sealed class MetadataStore : IDisposable
{
    public const uint FormatVersion = 1;
    private const int KeyBytes = 16;
    private const int ExtentHeaderBytes = 20;

    private static readonly byte[] FormatKey = "format"u8.ToArray();
    private static readonly byte[] AppliedSequenceKey = "applied-sequence"u8.ToArray();
    private static readonly byte[] NextVolumeIdKey = "next-volume-id"u8.ToArray();
    private static readonly byte[] JournalBytesKey = "journal-bytes"u8.ToArray();

    private readonly LmdbEnvironment _env;
    private readonly LmdbDatabase _meta;
    private readonly LmdbDatabase _volumes;
    private readonly LmdbDatabase _extents;

    /// <summary>Opens the metadata; a new store records <paramref name="journalRegionBytes"/>, an existing one reports its own.</summary>
    public MetadataStore(string directory, bool create, long journalRegionBytes)
    {
        _env = LmdbEnvironment.Open(directory, Layout.MetadataMapBytes, maxDatabases: 8);
        using var txn = _env.BeginTransaction(readOnly: false);
        _meta = txn.OpenDatabase("meta", create: true);
        _volumes = txn.OpenDatabase("volumes", create: true);
        _extents = txn.OpenDatabase("extents", create: true);
        if (txn.TryGet(_meta, FormatKey, out var format))
        {
            uint version = BinaryPrimitives.ReadUInt32LittleEndian(format);
            if (version != FormatVersion)
                throw new StorageException(StorageError.BadStore, $"store metadata format {version} is not supported (this build reads format {FormatVersion})");
        }
        else
        {
            if (!create) throw new StorageException(StorageError.BadStore, $"{directory} holds no Platter metadata");
            Span<byte> v = stackalloc byte[8];
            BinaryPrimitives.WriteUInt32LittleEndian(v, FormatVersion);
            txn.Put(_meta, FormatKey, v[..4]);
            BinaryPrimitives.WriteInt64LittleEndian(v, journalRegionBytes);
            txn.Put(_meta, JournalBytesKey, v);
        }
        JournalRegionBytes = txn.TryGet(_meta, JournalBytesKey, out var journalBytes)
            ? BinaryPrimitives.ReadInt64LittleEndian(journalBytes)
            : throw new StorageException(StorageError.BadStore, $"{directory}: metadata does not record the journal size");
        txn.Commit();
    }

    public long JournalRegionBytes { get; }
    public long AppliedSequence { get; private set; }
    public long NextVolumeId { get; private set; } = 1;

    /// <summary>Reads the catalog (to <paramref name="onVolume"/>) and then streams every extent to <paramref name="onExtent"/>.</summary>
    public void Load(Action<CatalogVolume> onVolume, ExtentVisitor onExtent)
    {
        using var txn = _env.BeginTransaction(readOnly: true);
        AppliedSequence = txn.TryGet(_meta, AppliedSequenceKey, out var applied) ? BinaryPrimitives.ReadInt64LittleEndian(applied) : 0;
        NextVolumeId = txn.TryGet(_meta, NextVolumeIdKey, out var next) ? BinaryPrimitives.ReadInt64LittleEndian(next) : 1;
        using (var cursor = txn.OpenCursor(_volumes))
        {
            for (bool ok = cursor.First(); ok; ok = cursor.Next())
                onVolume(DecodeVolume(BinaryPrimitives.ReadInt64BigEndian(cursor.Key), cursor.Value));
        }
        using (var cursor = txn.OpenCursor(_extents))
        {
            for (bool ok = cursor.First(); ok; ok = cursor.Next())
            {
                var e = DecodeExtent(cursor.Key, cursor.Value);
                onExtent(e.VolumeId, e.Block, e.Count, e.Pba, e.Birth, e.Crcs);
            }
        }
    }

    /// <summary>
    /// Applies journaled batches in one durable transaction and records the last sequence applied.
    /// <paramref name="beforeCommit"/> is a test hook that may throw to simulate a failed commit.
    /// </summary>
    public void Checkpoint(IReadOnlyList<(long Sequence, byte[] Payload, int Length)> batches, Action? beforeCommit)
    {
        if (batches.Count == 0) return;
        using var txn = _env.BeginTransaction(readOnly: false);
        using var cursor = txn.OpenCursor(_extents);
        long nextVolumeId = NextVolumeId;
        foreach (var (sequence, payload, length) in batches)
        {
            var reader = new OpReader(payload.AsSpan(0, length));
            while (reader.TryRead(out var op))
            {
                switch (op.Kind)
                {
                    case OpKind.MapExtent:
                        RemoveRange(txn, cursor, op.VolumeId, op.Block, op.Count);
                        InsertExtent(txn, cursor, op.VolumeId, op.Block, op.Count, op.Pba, sequence, op.Crcs);
                        break;
                    case OpKind.Unmap:
                        RemoveRange(txn, cursor, op.VolumeId, op.Block, op.Count);
                        break;
                    case OpKind.CreateVolume:
                        PutVolume(txn, new CatalogVolume(op.VolumeId, op.Name, op.SizeBytes, new DateTimeOffset(op.CreatedTicks, TimeSpan.Zero)));
                        nextVolumeId = Math.Max(nextVolumeId, op.VolumeId + 1);
                        break;
                    case OpKind.DeleteVolume:
                        RemoveRange(txn, cursor, op.VolumeId, 0, long.MaxValue);
                        txn.Delete(_volumes, VolumeKey(op.VolumeId));
                        break;
                    case OpKind.ResizeVolume:
                    {
                        var v = GetVolume(txn, op.VolumeId);
                        PutVolume(txn, v with { SizeBytes = op.SizeBytes });
                        break;
                    }
                    case OpKind.RenameVolume:
                    {
                        var v = GetVolume(txn, op.VolumeId);
                        PutVolume(txn, v with { Name = op.Name });
                        break;
                    }
                }
            }
        }
        long last = batches[^1].Sequence;
        Span<byte> value = stackalloc byte[8];
        BinaryPrimitives.WriteInt64LittleEndian(value, last);
        txn.Put(_meta, AppliedSequenceKey, value);
        BinaryPrimitives.WriteInt64LittleEndian(value, nextVolumeId);
        txn.Put(_meta, NextVolumeIdKey, value);
        cursor.Dispose();
        beforeCommit?.Invoke();
        txn.Commit();
        AppliedSequence = last;
        NextVolumeId = nextVolumeId;
    }

    /// <summary>Streams the durable extents (for the consistency check).</summary>
    public void VisitExtents(ExtentVisitor visitor)
    {
        using var txn = _env.BeginTransaction(readOnly: true);
        using var cursor = txn.OpenCursor(_extents);
        for (bool ok = cursor.First(); ok; ok = cursor.Next())
        {
            var e = DecodeExtent(cursor.Key, cursor.Value);
            visitor(e.VolumeId, e.Block, e.Count, e.Pba, e.Birth, e.Crcs);
        }
    }

    /// <summary>Number of extent records (how well extents coalesce).</summary>
    public long CountExtents()
    {
        long n = 0;
        VisitExtents((_, _, _, _, _, _) => n++);
        return n;
    }

    // Removes [block, block+count) from a volume's map, trimming or splitting records that straddle its edges.
    private void RemoveRange(LmdbTransaction txn, LmdbCursor cursor, long volumeId, long block, long count)
    {
        long end = count >= long.MaxValue - block ? long.MaxValue : block + count;
        Span<byte> key = stackalloc byte[KeyBytes];

        // A record starting before the range may reach into it.
        if (SeekRecordBefore(cursor, volumeId, block))
        {
            var e = DecodeExtent(cursor.Key, cursor.Value);
            long eEnd = e.Block + e.Count;
            if (eEnd > block)
            {
                var crcs = e.Crcs.ToArray();
                // Keep the head [e.Block, block).
                PutExtent(txn, volumeId, e.Block, e.Pba, (int)(block - e.Block), e.Birth, crcs.AsSpan(0, (int)(block - e.Block) * 4));
                if (eEnd > end)
                {
                    int skip = (int)(end - e.Block);
                    PutExtent(txn, volumeId, end, e.Pba + skip, (int)(eEnd - end), e.Birth, crcs.AsSpan(skip * 4));
                    return;
                }
            }
        }

        // Records starting inside the range: delete, keeping the tail of the last one if it reaches past the end.
        while (true)
        {
            WriteKey(key, volumeId, block);
            if (!cursor.SeekAtOrAfter(key)) return;
            if (BinaryPrimitives.ReadInt64BigEndian(cursor.Key) != volumeId) return;
            var e = DecodeExtent(cursor.Key, cursor.Value);
            if (e.Block >= end) return;
            long eEnd = e.Block + e.Count;
            byte[]? tail = eEnd > end ? e.Crcs[(int)((end - e.Block) * 4)..].ToArray() : null;
            cursor.DeleteCurrent();
            if (tail is not null)
            {
                PutExtent(txn, volumeId, end, e.Pba + (end - e.Block), (int)(eEnd - end), e.Birth, tail);
                return;
            }
            block = eEnd;
        }
    }

    // Inserts a new mapping (the range is already empty), merging with the record before it when it continues it.
    private void InsertExtent(LmdbTransaction txn, LmdbCursor cursor, long volumeId, long block, long count, long pba, long birth, ReadOnlySpan<byte> crcs)
    {
        if (SeekRecordBefore(cursor, volumeId, block))
        {
            var prev = DecodeExtent(cursor.Key, cursor.Value);
            if (prev.Block + prev.Count == block && prev.Pba + prev.Count == pba && prev.Birth == birth && prev.Count < Layout.ExtentBlocksMax)
            {
                int take = (int)Math.Min(Layout.ExtentBlocksMax - prev.Count, count);
                var merged = new byte[(prev.Count + take) * 4];
                prev.Crcs.CopyTo(merged);
                crcs[..(take * 4)].CopyTo(merged.AsSpan(prev.Count * 4));
                PutExtent(txn, volumeId, prev.Block, prev.Pba, prev.Count + take, birth, merged);
                block += take;
                pba += take;
                count -= take;
                crcs = crcs[(take * 4)..];
            }
        }
        while (count > 0)
        {
            int n = (int)Math.Min(Layout.ExtentBlocksMax, count);
            PutExtent(txn, volumeId, block, pba, n, birth, crcs[..(n * 4)]);
            block += n;
            pba += n;
            count -= n;
            crcs = crcs[(n * 4)..];
        }
    }

    // Positions the cursor on the volume's last record that starts before `block`; false when there is none.
    private static bool SeekRecordBefore(LmdbCursor cursor, long volumeId, long block)
    {
        Span<byte> key = stackalloc byte[KeyBytes];
        WriteKey(key, volumeId, block);
        bool found = cursor.SeekAtOrAfter(key);
        bool havePrev = found ? cursor.Previous() : cursor.Last();
        return havePrev && BinaryPrimitives.ReadInt64BigEndian(cursor.Key) == volumeId;
    }

    private void PutExtent(LmdbTransaction txn, long volumeId, long block, long pba, int count, long birth, ReadOnlySpan<byte> crcs)
    {
        Span<byte> key = stackalloc byte[KeyBytes];
        WriteKey(key, volumeId, block);
        Span<byte> value = stackalloc byte[ExtentHeaderBytes + Layout.ExtentBlocksMax * 4];
        BinaryPrimitives.WriteInt64LittleEndian(value, pba);
        BinaryPrimitives.WriteInt32LittleEndian(value[8..], count);
        BinaryPrimitives.WriteInt64LittleEndian(value[12..], birth);
        crcs.CopyTo(value[ExtentHeaderBytes..]);
        txn.Put(_extents, key, value[..(ExtentHeaderBytes + count * 4)]);
    }

    private readonly ref struct ExtentRecord(long volumeId, long block, long pba, int count, long birth, ReadOnlySpan<byte> crcs)
    {
        public readonly long VolumeId = volumeId;
        public readonly long Block = block;
        public readonly long Pba = pba;
        public readonly int Count = count;
        public readonly long Birth = birth;
        public readonly ReadOnlySpan<byte> Crcs = crcs;
    }

    private static ExtentRecord DecodeExtent(ReadOnlySpan<byte> key, ReadOnlySpan<byte> value)
    {
        if (key.Length != KeyBytes || value.Length < ExtentHeaderBytes)
            throw new StorageException(StorageError.BadStore, "corrupt extent record in the metadata store");
        int count = BinaryPrimitives.ReadInt32LittleEndian(value[8..]);
        if (count <= 0 || count > Layout.ExtentBlocksMax || value.Length != ExtentHeaderBytes + 4 * count)
            throw new StorageException(StorageError.BadStore, "corrupt extent record in the metadata store");
        return new ExtentRecord(
            BinaryPrimitives.ReadInt64BigEndian(key), BinaryPrimitives.ReadInt64BigEndian(key[8..]),
            BinaryPrimitives.ReadInt64LittleEndian(value), count, BinaryPrimitives.ReadInt64LittleEndian(value[12..]),
            value[ExtentHeaderBytes..]);
    }

    private static void WriteKey(Span<byte> key, long volumeId, long block)
    {
        BinaryPrimitives.WriteInt64BigEndian(key, volumeId);
        BinaryPrimitives.WriteInt64BigEndian(key[8..], block);
    }

    private static byte[] VolumeKey(long id)
    {
        var key = new byte[8];
        BinaryPrimitives.WriteInt64BigEndian(key, id);
        return key;
    }

    private CatalogVolume GetVolume(LmdbTransaction txn, long id)
    {
        if (!txn.TryGet(_volumes, VolumeKey(id), out var value))
            throw new StorageException(StorageError.BadStore, $"journal names volume {id}, which the catalog does not hold");
        return DecodeVolume(id, value);
    }

    private void PutVolume(LmdbTransaction txn, CatalogVolume v)
    {
        int nameBytes = Encoding.UTF8.GetByteCount(v.Name);
        var value = new byte[18 + nameBytes];
        BinaryPrimitives.WriteInt64LittleEndian(value, v.SizeBytes);
        BinaryPrimitives.WriteInt64LittleEndian(value.AsSpan(8), v.Created.UtcTicks);
        BinaryPrimitives.WriteUInt16LittleEndian(value.AsSpan(16), (ushort)nameBytes);
        Encoding.UTF8.GetBytes(v.Name, value.AsSpan(18));
        txn.Put(_volumes, VolumeKey(v.Id), value);
    }

    private static CatalogVolume DecodeVolume(long id, ReadOnlySpan<byte> value)
    {
        if (value.Length < 18) throw new StorageException(StorageError.BadStore, $"corrupt catalog record for volume {id}");
        int nameBytes = BinaryPrimitives.ReadUInt16LittleEndian(value[16..]);
        if (value.Length != 18 + nameBytes) throw new StorageException(StorageError.BadStore, $"corrupt catalog record for volume {id}");
        return new CatalogVolume(id, Encoding.UTF8.GetString(value.Slice(18, nameBytes)),
            BinaryPrimitives.ReadInt64LittleEndian(value), new DateTimeOffset(BinaryPrimitives.ReadInt64LittleEndian(value[8..]), TimeSpan.Zero));
    }

    public void Dispose() => _env.Dispose();
}

internal delegate void ExtentVisitor(long volumeId, long block, int count, long pba, long birth, ReadOnlySpan<byte> crcs);
