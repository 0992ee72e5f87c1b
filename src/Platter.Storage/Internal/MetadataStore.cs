using System.Buffers.Binary;
using System.Text;
using Platter.Lmdb;

namespace Platter.Storage.Internal;

/// <summary>A volume as the catalog stores it: its writes go to <see cref="LayerId"/>; a clone names its origin snapshot.</summary>
internal sealed record CatalogVolume(long Id, string Name, long SizeBytes, DateTimeOffset Created, long LayerId, long OriginId);

/// <summary>A snapshot as the catalog stores it. A volume's snapshots in id order form its chain (oldest first).</summary>
internal sealed record CatalogSnapshot(long Id, long VolumeId, string Name, long SizeBytes, DateTimeOffset Created, long LayerId);

/// <summary>
/// The durable metadata in LMDB: the catalog and every layer's extent records as of the last checkpoint.
/// A version of a volume (the volume itself or a snapshot) is its parent's content overlaid with its own layer:
/// a volume's chain is its origin snapshot (for a clone), its snapshots oldest first, then the volume.
/// Databases:
///   meta:      "format" -> u32, "applied-sequence" -> u64, "next-id" -> u64, "journal-bytes" -> u64
///   volumes:   id (u64 BE) -> {size u64, created ticks i64, layer u64, origin snapshot u64, name length u16, name utf8}
///   snapshots: id (u64 BE) -> {volume u64, layer u64, size u64, created ticks i64, name length u16, name utf8}
///   extents:   layer (u64 BE) ++ first block (u64 BE) -> {pba i64, count u32, birth u64, crc32c u32 x count}
///              a tombstone (the range reads as zeros although the parent maps it) has pba -1 and no CRCs.
/// Keys are big-endian so LMDB's byte order is numeric order: one layer's records are one contiguous, sorted range.
/// Records never overlap within a layer; extents hold at most <see cref="EngineLimits.ExtentBlocksMax"/> blocks, and
/// adjacent ones that continue each other physically (same birth) are merged as they are written.
/// Ids of volumes, snapshots and layers come from one counter and are never reused.
/// </summary>
internal sealed class MetadataStore : IDisposable
{
    public const uint FormatVersion = 2;
    private const int KeyBytes = 16;
    private const int ExtentHeaderBytes = 20;
    /// <summary>Physical block recorded for a tombstone.</summary>
    public const long TombstonePba = -1;
    private const int TombstoneBlocksMax = 1 << 30;

    private static readonly byte[] FormatKey = "format"u8.ToArray();
    private static readonly byte[] AppliedSequenceKey = "applied-sequence"u8.ToArray();
    private static readonly byte[] NextIdKey = "next-id"u8.ToArray();
    private static readonly byte[] JournalBytesKey = "journal-bytes"u8.ToArray();

    private readonly LmdbEnvironment _env;
    private readonly string _directory;
    private readonly LmdbDatabase _meta;
    private readonly LmdbDatabase _volumes;
    private readonly LmdbDatabase _snapshots;
    private readonly LmdbDatabase _extents;

    /// <summary>Opens the metadata; a new store records <paramref name="journalRegionBytes"/>, an existing one reports its own.</summary>
    public MetadataStore(string directory, bool create, long journalRegionBytes)
    {
        _directory = directory;
        _env = LmdbEnvironment.Open(directory, EngineLimits.MetadataMapBytes, maxDatabases: 8);
        using var txn = _env.BeginTransaction(readOnly: false);
        _meta = txn.OpenDatabase("meta", create: true);
        _volumes = txn.OpenDatabase("volumes", create: true);
        _snapshots = txn.OpenDatabase("snapshots", create: true);
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

    /// <summary>True when nothing was ever committed to this metadata: no volume, nothing applied from a journal.</summary>
    public bool IsEmpty()
    {
        using var view = new View(this);
        return view.AppliedSequence == 0 && view.NextId == 1 && view.CountEntries() == (0, 0, 0);
    }
    public long AppliedSequence { get; private set; }
    public long NextId { get; private set; } = 1;

    /// <summary>A consistent read-only view of the durable catalog and layers.</summary>
    public sealed class View : IDisposable
    {
        private readonly MetadataStore _store;
        private readonly LmdbTransaction _txn;

        internal View(MetadataStore store)
        {
            _store = store;
            _txn = store._env.BeginTransaction(readOnly: true);
        }

        public long AppliedSequence => _txn.TryGet(_store._meta, AppliedSequenceKey, out var v) ? BinaryPrimitives.ReadInt64LittleEndian(v) : 0;
        public long NextId => _txn.TryGet(_store._meta, NextIdKey, out var v) ? BinaryPrimitives.ReadInt64LittleEndian(v) : 1;

        /// <summary>The catalog's volumes. Without <paramref name="damage"/> a damaged record throws; with it, it is reported and skipped.</summary>
        public List<CatalogVolume> Volumes(MetadataDamage? damage = null) => _store.ReadVolumes(_txn, damage);

        /// <summary>The catalog's snapshots. Without <paramref name="damage"/> a damaged record throws; with it, it is reported and skipped.</summary>
        public List<CatalogSnapshot> Snapshots(MetadataDamage? damage = null) => _store.ReadSnapshots(_txn, damage);

        /// <summary>Entries LMDB counts in the volumes, snapshots and extents databases (see <see cref="LmdbTransaction.CountEntries"/>).</summary>
        public (long Volumes, long Snapshots, long Extents) CountEntries() =>
            (_txn.CountEntries(_store._volumes), _txn.CountEntries(_store._snapshots), _txn.CountEntries(_store._extents));

        /// <summary>
        /// Streams one layer's records in block order (tombstones have pba -1 and no CRCs). Without
        /// <paramref name="damage"/> a record that does not decode throws; with it, it is reported and skipped.
        /// </summary>
        public void VisitLayer(long layerId, ExtentVisitor visitor, MetadataDamage? damage = null)
        {
            using var cursor = _txn.OpenCursor(_store._extents);
            Span<byte> key = stackalloc byte[KeyBytes];
            WriteKey(key, layerId, 0);
            for (bool ok = cursor.SeekAtOrAfter(key); ok && cursor.Key.Length >= 8 && BinaryPrimitives.ReadInt64BigEndian(cursor.Key) == layerId; ok = cursor.Next())
            {
                if (damage is not null && !IsWellFormed(cursor.Key, cursor.Value))
                {
                    damage.Add(layerId, $"layer {layerId}: {DescribeDamage(cursor.Key, cursor.Value)}");
                    continue;
                }
                var e = DecodeExtent(cursor.Key, cursor.Value);
                visitor(e.LayerId, e.Block, e.Count, e.Pba, e.Birth, e.Crcs);
            }
        }

        /// <summary>
        /// Streams the records of <paramref name="layerId"/> that overlap blocks [<paramref name="from"/>,
        /// <paramref name="to"/>), in block order; a record that does not decode throws. The map pager's lookup
        /// (decision 0013): one seek, not a walk of the layer.
        /// </summary>
        public void VisitLayerRange(long layerId, long from, long to, ExtentVisitor visitor)
        {
            using var cursor = _txn.OpenCursor(_store._extents);
            Span<byte> key = stackalloc byte[KeyBytes];
            WriteKey(key, layerId, from);
            bool ok = cursor.SeekAtOrAfter(key);
            // A record that starts before `from` may reach into the range (records of a layer never overlap, so only
            // the one just before can): start there when it belongs to the layer.
            bool back = ok ? cursor.Previous() : cursor.Last();
            if (!back || !InLayer(cursor.Key, layerId)) ok = cursor.SeekAtOrAfter(key);
            else ok = true;
            for (; ok && InLayer(cursor.Key, layerId); ok = cursor.Next())
            {
                var e = DecodeExtent(cursor.Key, cursor.Value);
                if (e.Block >= to) break;
                if (e.Block + e.Count > from) visitor(e.LayerId, e.Block, e.Count, e.Pba, e.Birth, e.Crcs);
            }
        }

        /// <summary>The first layer at or after <paramref name="layerId"/> that holds a record, or -1.</summary>
        public long NextLayer(long layerId)
        {
            using var cursor = _txn.OpenCursor(_store._extents);
            Span<byte> key = stackalloc byte[KeyBytes];
            WriteKey(key, layerId, 0);
            return cursor.SeekAtOrAfter(key) && cursor.Key.Length >= 8 ? BinaryPrimitives.ReadInt64BigEndian(cursor.Key) : -1;
        }

        private static bool InLayer(ReadOnlySpan<byte> key, long layerId) => key.Length >= 8 && BinaryPrimitives.ReadInt64BigEndian(key) == layerId;

        /// <summary>Records a cursor walk finds in the volumes and snapshots databases (compare with <see cref="CountEntries"/>).</summary>
        public (long Volumes, long Snapshots) CountCatalogRecords() => (Walk(_store._volumes), Walk(_store._snapshots));

        private long Walk(LmdbDatabase db)
        {
            using var cursor = _txn.OpenCursor(db);
            long n = 0;
            for (bool ok = cursor.First(); ok; ok = cursor.Next()) n++;
            return n;
        }

        /// <summary>
        /// Streams every record as stored, without decoding (the verifier checks what the decoder would throw on).
        /// </summary>
        public void ScanRaw(RawRecordVisitor visitor)
        {
            using var cursor = _txn.OpenCursor(_store._extents);
            for (bool ok = cursor.First(); ok; ok = cursor.Next()) visitor(cursor.Key, cursor.Value);
        }

        /// <summary>
        /// The raw records with keys from <paramref name="from"/> (inclusive; empty: from the first) to
        /// <paramref name="until"/> (exclusive; empty: to the end), in key order: one slice of open's walk (decision 0020).
        /// </summary>
        public void ScanRaw(ReadOnlySpan<byte> from, ReadOnlySpan<byte> until, RawRecordVisitor visitor)
        {
            using var cursor = _txn.OpenCursor(_store._extents);
            for (bool ok = from.IsEmpty ? cursor.First() : cursor.SeekAtOrAfter(from); ok; ok = cursor.Next())
            {
                var key = cursor.Key;
                if (!until.IsEmpty && key.SequenceCompareTo(until) >= 0) return;
                visitor(key, cursor.Value);
            }
        }

        /// <summary>The smallest and largest keys of the extents table, or nulls when it is empty.</summary>
        public (byte[]? First, byte[]? Last) ExtentKeyBounds()
        {
            using var cursor = _txn.OpenCursor(_store._extents);
            if (!cursor.First()) return (null, null);
            var first = cursor.Key.ToArray();
            return cursor.Last() ? (first, cursor.Key.ToArray()) : (first, null);
        }

        /// <summary>Another read-only view of the same store (its own LMDB read transaction, for another thread).</summary>
        public View Sibling() => new(_store);

        /// <summary>Streams every record of every layer.</summary>
        public void VisitAll(ExtentVisitor visitor)
        {
            using var cursor = _txn.OpenCursor(_store._extents);
            for (bool ok = cursor.First(); ok; ok = cursor.Next())
            {
                var e = DecodeExtent(cursor.Key, cursor.Value);
                visitor(e.LayerId, e.Block, e.Count, e.Pba, e.Birth, e.Crcs);
            }
        }

        public void Dispose() => _txn.Dispose();
    }

    /// <summary>Reads the metadata file into the page cache while a walk over every record runs; dispose when it ends.</summary>
    public MetadataReadAhead ReadAheadForWalk() => new(Path.Combine(_directory, "data.mdb"));

    /// <summary>A read-only view for lookups from any thread (unlike <see cref="OpenView"/>, it records nothing on the store).</summary>
    public View OpenLookupView() => new(this);

    public View OpenView()
    {
        var view = new View(this);
        AppliedSequence = view.AppliedSequence;
        NextId = view.NextId;
        return view;
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
        long nextId = NextId;
        foreach (var (sequence, payload, length) in batches)
        {
            var reader = new OpReader(payload.AsSpan(0, length));
            while (reader.TryRead(out var op))
            {
                switch (op.Kind)
                {
                    case OpKind.MapExtent:
                        RemoveRange(txn, cursor, op.LayerId, op.Block, op.Count);
                        InsertExtent(txn, cursor, op.LayerId, op.Block, op.Count, op.Pba, sequence, op.Crcs);
                        break;
                    case OpKind.Unmap:
                        RemoveRange(txn, cursor, op.LayerId, op.Block, op.Count);
                        break;
                    case OpKind.Tombstone:
                        RemoveRange(txn, cursor, op.LayerId, op.Block, op.Count);
                        InsertTombstone(txn, cursor, op.LayerId, op.Block, op.Count, sequence);
                        break;
                    case OpKind.CreateVolume:
                        PutVolume(txn, new CatalogVolume(op.VolumeId, op.Name, op.SizeBytes, new DateTimeOffset(op.CreatedTicks, TimeSpan.Zero), op.LayerId, op.SnapshotId));
                        nextId = Math.Max(nextId, Math.Max(op.VolumeId, op.LayerId) + 1);
                        break;
                    case OpKind.DeleteVolume:
                    {
                        var v = GetVolume(txn, op.VolumeId);
                        foreach (var snap in ReadSnapshots(txn).Where(x => x.VolumeId == v.Id))
                        {
                            RemoveRange(txn, cursor, snap.LayerId, 0, long.MaxValue);
                            txn.Delete(_snapshots, IdKey(snap.Id));
                        }
                        RemoveRange(txn, cursor, v.LayerId, 0, long.MaxValue);
                        txn.Delete(_volumes, IdKey(op.VolumeId));
                        break;
                    }
                    case OpKind.ResizeVolume:
                        PutVolume(txn, GetVolume(txn, op.VolumeId) with { SizeBytes = op.SizeBytes });
                        break;
                    case OpKind.RenameVolume:
                        PutVolume(txn, GetVolume(txn, op.VolumeId) with { Name = op.Name });
                        break;
                    case OpKind.CreateSnapshot:
                    {
                        var v = GetVolume(txn, op.VolumeId);
                        PutSnapshot(txn, new CatalogSnapshot(op.SnapshotId, v.Id, op.Name, v.SizeBytes, new DateTimeOffset(op.CreatedTicks, TimeSpan.Zero), v.LayerId));
                        PutVolume(txn, v with { LayerId = op.LayerId });
                        nextId = Math.Max(nextId, Math.Max(op.SnapshotId, op.LayerId) + 1);
                        break;
                    }
                    case OpKind.DeleteSnapshot:
                        DeleteSnapshot(txn, cursor, op.VolumeId, op.SnapshotId, sequence);
                        break;
                    case OpKind.Flatten:
                        // The layer already holds a record for every block the volume maps (copied before this
                        // operation): dropping the origin leaves the content as it was. Its tombstones now hide
                        // nothing and stay as harmless records (they load as no-ops).
                        PutVolume(txn, GetVolume(txn, op.VolumeId) with { OriginId = 0 });
                        break;
                    case OpKind.Rollback:
                    {
                        var v = GetVolume(txn, op.VolumeId);
                        var target = GetSnapshot(txn, op.SnapshotId);
                        foreach (var newer in ReadSnapshots(txn).Where(x => x.VolumeId == v.Id && x.Id > target.Id))
                        {
                            RemoveRange(txn, cursor, newer.LayerId, 0, long.MaxValue);
                            txn.Delete(_snapshots, IdKey(newer.Id));
                        }
                        RemoveRange(txn, cursor, v.LayerId, 0, long.MaxValue);
                        PutVolume(txn, v with { LayerId = op.LayerId, SizeBytes = target.SizeBytes });
                        nextId = Math.Max(nextId, op.LayerId + 1);
                        break;
                    }
                }
            }
        }
        long last = batches[^1].Sequence;
        Span<byte> value = stackalloc byte[8];
        BinaryPrimitives.WriteInt64LittleEndian(value, last);
        txn.Put(_meta, AppliedSequenceKey, value);
        BinaryPrimitives.WriteInt64LittleEndian(value, nextId);
        txn.Put(_meta, NextIdKey, value);
        cursor.Dispose();
        beforeCommit?.Invoke();
        txn.Commit();
        AppliedSequence = last;
        NextId = nextId;
    }

    // The version derived from the snapshot (its volume's next snapshot, or the volume) takes over the snapshot's
    // layer with its own records merged in: what it overrides there was the snapshot's alone and disappears.
    // Work is proportional to the child's records, i.e. to what changed since the snapshot.
    private void DeleteSnapshot(LmdbTransaction txn, LmdbCursor cursor, long volumeId, long snapshotId, long sequence)
    {
        var snap = GetSnapshot(txn, snapshotId);
        var v = GetVolume(txn, volumeId);
        var chain = ReadSnapshots(txn).Where(x => x.VolumeId == volumeId).OrderBy(x => x.Id).ToList();
        int index = chain.FindIndex(x => x.Id == snapshotId);
        bool hasParent = index > 0 || v.OriginId != 0;
        long childLayer = index + 1 < chain.Count ? chain[index + 1].LayerId : v.LayerId;

        Span<byte> key = stackalloc byte[KeyBytes];
        var crcs = new byte[EngineLimits.ExtentBlocksMax * 4];
        while (true)
        {
            WriteKey(key, childLayer, 0);
            if (!cursor.SeekAtOrAfter(key) || BinaryPrimitives.ReadInt64BigEndian(cursor.Key) != childLayer) break;
            var e = DecodeExtent(cursor.Key, cursor.Value);
            long block = e.Block, pba = e.Pba, birth = e.Birth;
            int count = e.Count;
            e.Crcs.CopyTo(crcs);
            int crcBytes = e.Crcs.Length;
            cursor.DeleteCurrent();
            RemoveRange(txn, cursor, snap.LayerId, block, count);
            if (pba != TombstonePba) InsertExtent(txn, cursor, snap.LayerId, block, count, pba, birth, crcs.AsSpan(0, crcBytes));
            else if (hasParent) InsertTombstone(txn, cursor, snap.LayerId, block, count, sequence);
        }
        if (index + 1 < chain.Count) PutSnapshot(txn, chain[index + 1] with { LayerId = snap.LayerId });
        else PutVolume(txn, v with { LayerId = snap.LayerId });
        txn.Delete(_snapshots, IdKey(snapshotId));
    }

    // Removes [block, block+count) from a layer, trimming or splitting records that straddle its edges.
    private void RemoveRange(LmdbTransaction txn, LmdbCursor cursor, long layerId, long block, long count)
    {
        long end = count >= long.MaxValue - block ? long.MaxValue : block + count;
        Span<byte> key = stackalloc byte[KeyBytes];

        // A record starting before the range may reach into it.
        if (SeekRecordBefore(cursor, layerId, block))
        {
            var e = DecodeExtent(cursor.Key, cursor.Value);
            long eEnd = e.Block + e.Count;
            if (eEnd > block)
            {
                var crcs = e.Crcs.ToArray();
                long pba = e.Pba, birth = e.Birth, eBlock = e.Block;
                // Keep the head [e.Block, block).
                PutRecord(txn, layerId, eBlock, pba, (int)(block - eBlock), birth, Crcs(crcs, pba, 0, block - eBlock));
                if (eEnd > end)
                {
                    long skip = end - eBlock;
                    PutRecord(txn, layerId, end, Advance(pba, skip), (int)(eEnd - end), birth, Crcs(crcs, pba, skip, eEnd - end));
                    return;
                }
            }
        }

        // Records starting inside the range: delete, keeping the tail of the last one if it reaches past the end.
        while (true)
        {
            WriteKey(key, layerId, block);
            if (!cursor.SeekAtOrAfter(key)) return;
            if (BinaryPrimitives.ReadInt64BigEndian(cursor.Key) != layerId) return;
            var e = DecodeExtent(cursor.Key, cursor.Value);
            if (e.Block >= end) return;
            long eEnd = e.Block + e.Count;
            long pba = e.Pba, birth = e.Birth, eBlock = e.Block;
            byte[]? tail = eEnd > end ? Crcs(e.Crcs.ToArray(), pba, end - eBlock, eEnd - end).ToArray() : null;
            cursor.DeleteCurrent();
            if (tail is not null)
            {
                PutRecord(txn, layerId, end, Advance(pba, end - eBlock), (int)(eEnd - end), birth, tail);
                return;
            }
            block = eEnd;
        }
    }

    private static long Advance(long pba, long blocks) => pba == TombstonePba ? pba : pba + blocks;

    private static ReadOnlySpan<byte> Crcs(byte[] crcs, long pba, long skip, long count) =>
        pba == TombstonePba ? ReadOnlySpan<byte>.Empty : crcs.AsSpan((int)(skip * 4), (int)(count * 4));

    // Inserts a new mapping (the range is already empty), merging with the record before it when it continues it.
    private void InsertExtent(LmdbTransaction txn, LmdbCursor cursor, long layerId, long block, long count, long pba, long birth, ReadOnlySpan<byte> crcs)
    {
        if (SeekRecordBefore(cursor, layerId, block))
        {
            var prev = DecodeExtent(cursor.Key, cursor.Value);
            if (prev.Pba != TombstonePba && prev.Block + prev.Count == block && prev.Pba + prev.Count == pba && prev.Birth == birth && prev.Count < EngineLimits.ExtentBlocksMax)
            {
                int take = (int)Math.Min(EngineLimits.ExtentBlocksMax - prev.Count, count);
                var merged = new byte[(prev.Count + take) * 4];
                prev.Crcs.CopyTo(merged);
                crcs[..(take * 4)].CopyTo(merged.AsSpan(prev.Count * 4));
                PutRecord(txn, layerId, prev.Block, prev.Pba, prev.Count + take, birth, merged);
                block += take;
                pba += take;
                count -= take;
                crcs = crcs[(take * 4)..];
            }
        }
        while (count > 0)
        {
            int n = (int)Math.Min(EngineLimits.ExtentBlocksMax, count);
            PutRecord(txn, layerId, block, pba, n, birth, crcs[..(n * 4)]);
            block += n;
            pba += n;
            count -= n;
            crcs = crcs[(n * 4)..];
        }
    }

    // Inserts a tombstone (the range is already empty), extending the one before it when adjacent.
    private void InsertTombstone(LmdbTransaction txn, LmdbCursor cursor, long layerId, long block, long count, long birth)
    {
        if (SeekRecordBefore(cursor, layerId, block))
        {
            var prev = DecodeExtent(cursor.Key, cursor.Value);
            if (prev.Pba == TombstonePba && prev.Block + prev.Count == block && prev.Count < TombstoneBlocksMax)
            {
                int take = (int)Math.Min(TombstoneBlocksMax - prev.Count, count);
                PutRecord(txn, layerId, prev.Block, TombstonePba, prev.Count + take, prev.Birth, default);
                block += take;
                count -= take;
            }
        }
        while (count > 0)
        {
            int n = (int)Math.Min(TombstoneBlocksMax, count);
            PutRecord(txn, layerId, block, TombstonePba, n, birth, default);
            block += n;
            count -= n;
        }
    }

    // Positions the cursor on the layer's last record that starts before `block`; false when there is none.
    private static bool SeekRecordBefore(LmdbCursor cursor, long layerId, long block)
    {
        Span<byte> key = stackalloc byte[KeyBytes];
        WriteKey(key, layerId, block);
        bool found = cursor.SeekAtOrAfter(key);
        bool havePrev = found ? cursor.Previous() : cursor.Last();
        return havePrev && BinaryPrimitives.ReadInt64BigEndian(cursor.Key) == layerId;
    }

    private void PutRecord(LmdbTransaction txn, long layerId, long block, long pba, int count, long birth, ReadOnlySpan<byte> crcs)
    {
        Span<byte> key = stackalloc byte[KeyBytes];
        WriteKey(key, layerId, block);
        Span<byte> value = stackalloc byte[ExtentHeaderBytes + EngineLimits.ExtentBlocksMax * 4];
        BinaryPrimitives.WriteInt64LittleEndian(value, pba);
        BinaryPrimitives.WriteInt32LittleEndian(value[8..], count);
        BinaryPrimitives.WriteInt64LittleEndian(value[12..], birth);
        crcs.CopyTo(value[ExtentHeaderBytes..]);
        txn.Put(_extents, key, value[..(ExtentHeaderBytes + crcs.Length)]);
    }

    private readonly ref struct ExtentRecord(long layerId, long block, long pba, int count, long birth, ReadOnlySpan<byte> crcs)
    {
        public readonly long LayerId = layerId;
        public readonly long Block = block;
        public readonly long Pba = pba;
        public readonly int Count = count;
        public readonly long Birth = birth;
        public readonly ReadOnlySpan<byte> Crcs = crcs;
    }

    /// <summary>True when an extent record has the shape <see cref="DecodeExtent"/> accepts.</summary>
    public static bool IsWellFormed(ReadOnlySpan<byte> key, ReadOnlySpan<byte> value)
    {
        if (key.Length != KeyBytes || value.Length < ExtentHeaderBytes) return false;
        long pba = BinaryPrimitives.ReadInt64LittleEndian(value);
        int count = BinaryPrimitives.ReadInt32LittleEndian(value[8..]);
        // Every record lies inside the largest volume (tombstones too: they only hide a parent's blocks).
        long block = BinaryPrimitives.ReadInt64BigEndian(key[8..]);
        if (block < 0 || block > (EngineLimits.VolumeBytesMax >> EngineLimits.BlockShift) - Math.Max(count, 0)) return false;
        return pba == TombstonePba
            ? count > 0 && value.Length == ExtentHeaderBytes
            : pba >= 0 && count > 0 && count <= EngineLimits.ExtentBlocksMax && value.Length == ExtentHeaderBytes + 4 * count;
    }

    /// <summary>One line naming what is wrong with a record <see cref="IsWellFormed"/> refuses (key as hex).</summary>
    public static string DescribeDamage(ReadOnlySpan<byte> key, ReadOnlySpan<byte> value)
    {
        string where = key.Length == KeyBytes
            ? $"extent record at block {BinaryPrimitives.ReadInt64BigEndian(key[8..])}"
            : $"extent record with a {key.Length}-byte key {Convert.ToHexString(key[..Math.Min(key.Length, 32)])}";
        if (value.Length < ExtentHeaderBytes) return $"corrupt {where}: {value.Length}-byte value";
        return $"corrupt {where}: physical block {BinaryPrimitives.ReadInt64LittleEndian(value)}, " +
            $"{BinaryPrimitives.ReadInt32LittleEndian(value[8..])} blocks, {value.Length}-byte value";
    }

    /// <summary>Decodes a record's fields (the caller checked <see cref="IsWellFormed"/>).</summary>
    public static (long Layer, long Block, long Pba, int Count) DecodeFields(ReadOnlySpan<byte> key, ReadOnlySpan<byte> value) =>
        (BinaryPrimitives.ReadInt64BigEndian(key), BinaryPrimitives.ReadInt64BigEndian(key[8..]),
         BinaryPrimitives.ReadInt64LittleEndian(value), BinaryPrimitives.ReadInt32LittleEndian(value[8..]));

    /// <summary>The CRCs of a well-formed extent record's blocks (4 bytes each; none for a tombstone).</summary>
    public static ReadOnlySpan<byte> CrcsOf(ReadOnlySpan<byte> value) => value[ExtentHeaderBytes..];

    private static ExtentRecord DecodeExtent(ReadOnlySpan<byte> key, ReadOnlySpan<byte> value)
    {
        if (!IsWellFormed(key, value))
            throw new StorageException(StorageError.BadStore, $"the metadata store holds a {DescribeDamage(key, value)}");
        long pba = BinaryPrimitives.ReadInt64LittleEndian(value);
        int count = BinaryPrimitives.ReadInt32LittleEndian(value[8..]);
        return new ExtentRecord(
            BinaryPrimitives.ReadInt64BigEndian(key), BinaryPrimitives.ReadInt64BigEndian(key[8..]),
            pba, count, BinaryPrimitives.ReadInt64LittleEndian(value[12..]), value[ExtentHeaderBytes..]);
    }

    private static void WriteKey(Span<byte> key, long layerId, long block)
    {
        BinaryPrimitives.WriteInt64BigEndian(key, layerId);
        BinaryPrimitives.WriteInt64BigEndian(key[8..], block);
    }

    private static byte[] IdKey(long id)
    {
        var key = new byte[8];
        BinaryPrimitives.WriteInt64BigEndian(key, id);
        return key;
    }

    private CatalogVolume GetVolume(LmdbTransaction txn, long id)
    {
        if (!txn.TryGet(_volumes, IdKey(id), out var value))
            throw new StorageException(StorageError.BadStore, $"journal names volume {id}, which the catalog does not hold");
        return DecodeVolume(id, value);
    }

    private CatalogSnapshot GetSnapshot(LmdbTransaction txn, long id)
    {
        if (!txn.TryGet(_snapshots, IdKey(id), out var value))
            throw new StorageException(StorageError.BadStore, $"journal names snapshot {id}, which the catalog does not hold");
        return DecodeSnapshot(id, value);
    }

    private List<CatalogVolume> ReadVolumes(LmdbTransaction txn, MetadataDamage? damage = null) =>
        ReadCatalog(txn, _volumes, "volume", DecodeVolume, damage);

    private List<CatalogSnapshot> ReadSnapshots(LmdbTransaction txn, MetadataDamage? damage = null) =>
        ReadCatalog(txn, _snapshots, "snapshot", DecodeSnapshot, damage);

    private delegate T CatalogDecoder<T>(long id, ReadOnlySpan<byte> value);

    private static List<T> ReadCatalog<T>(LmdbTransaction txn, LmdbDatabase db, string what, CatalogDecoder<T> decode, MetadataDamage? damage)
    {
        var list = new List<T>();
        using var cursor = txn.OpenCursor(db);
        for (bool ok = cursor.First(); ok; ok = cursor.Next())
        {
            if (cursor.Key.Length != 8)
            {
                var problem = $"corrupt {what} record with a {cursor.Key.Length}-byte key";
                if (damage is null) throw new StorageException(StorageError.BadStore, $"the metadata store holds a {problem}");
                damage.AddUnattributed(problem);
                continue;
            }
            long id = BinaryPrimitives.ReadInt64BigEndian(cursor.Key);
            try
            {
                list.Add(decode(id, cursor.Value));
            }
            catch (StorageException e) when (damage is not null)
            {
                damage.AddUnattributed(e.Message);
            }
        }
        return list;
    }

    private void PutVolume(LmdbTransaction txn, CatalogVolume v)
    {
        int nameBytes = Encoding.UTF8.GetByteCount(v.Name);
        var value = new byte[34 + nameBytes];
        BinaryPrimitives.WriteInt64LittleEndian(value, v.SizeBytes);
        BinaryPrimitives.WriteInt64LittleEndian(value.AsSpan(8), v.Created.UtcTicks);
        BinaryPrimitives.WriteInt64LittleEndian(value.AsSpan(16), v.LayerId);
        BinaryPrimitives.WriteInt64LittleEndian(value.AsSpan(24), v.OriginId);
        BinaryPrimitives.WriteUInt16LittleEndian(value.AsSpan(32), (ushort)nameBytes);
        Encoding.UTF8.GetBytes(v.Name, value.AsSpan(34));
        txn.Put(_volumes, IdKey(v.Id), value);
    }

    private static CatalogVolume DecodeVolume(long id, ReadOnlySpan<byte> value)
    {
        if (value.Length < 34 || value.Length != 34 + BinaryPrimitives.ReadUInt16LittleEndian(value[32..]))
            throw new StorageException(StorageError.BadStore, $"corrupt catalog record for volume {id}");
        return new CatalogVolume(id, Encoding.UTF8.GetString(value[34..]), BinaryPrimitives.ReadInt64LittleEndian(value),
            new DateTimeOffset(BinaryPrimitives.ReadInt64LittleEndian(value[8..]), TimeSpan.Zero),
            BinaryPrimitives.ReadInt64LittleEndian(value[16..]), BinaryPrimitives.ReadInt64LittleEndian(value[24..]));
    }

    private void PutSnapshot(LmdbTransaction txn, CatalogSnapshot s)
    {
        int nameBytes = Encoding.UTF8.GetByteCount(s.Name);
        var value = new byte[34 + nameBytes];
        BinaryPrimitives.WriteInt64LittleEndian(value, s.VolumeId);
        BinaryPrimitives.WriteInt64LittleEndian(value.AsSpan(8), s.LayerId);
        BinaryPrimitives.WriteInt64LittleEndian(value.AsSpan(16), s.SizeBytes);
        BinaryPrimitives.WriteInt64LittleEndian(value.AsSpan(24), s.Created.UtcTicks);
        BinaryPrimitives.WriteUInt16LittleEndian(value.AsSpan(32), (ushort)nameBytes);
        Encoding.UTF8.GetBytes(s.Name, value.AsSpan(34));
        txn.Put(_snapshots, IdKey(s.Id), value);
    }

    private static CatalogSnapshot DecodeSnapshot(long id, ReadOnlySpan<byte> value)
    {
        if (value.Length < 34 || value.Length != 34 + BinaryPrimitives.ReadUInt16LittleEndian(value[32..]))
            throw new StorageException(StorageError.BadStore, $"corrupt catalog record for snapshot {id}");
        return new CatalogSnapshot(id, BinaryPrimitives.ReadInt64LittleEndian(value), Encoding.UTF8.GetString(value[34..]),
            BinaryPrimitives.ReadInt64LittleEndian(value[16..]), new DateTimeOffset(BinaryPrimitives.ReadInt64LittleEndian(value[24..]), TimeSpan.Zero),
            BinaryPrimitives.ReadInt64LittleEndian(value[8..]));
    }

    public void Dispose() => _env.Dispose();
}

/// <summary>Receives one extent record as stored (key and value bytes, not decoded).</summary>
internal delegate void RawRecordVisitor(ReadOnlySpan<byte> key, ReadOnlySpan<byte> value);

/// <summary>Receives one record of a layer: an extent, or a tombstone when <paramref name="pba"/> is -1 (then no CRCs).</summary>
internal delegate void ExtentVisitor(long layerId, long block, int count, long pba, long birth, ReadOnlySpan<byte> crcs);
