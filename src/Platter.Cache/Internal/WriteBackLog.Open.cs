using System.Buffers;
using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;

namespace Platter.Cache.Internal;

internal sealed partial class WriteBackLog
{
    /// <summary>What opening a log found.</summary>
    /// <param name="Replayed">Records found in the log that the backend does not have yet.</param>
    /// <param name="LostFlushedRecords">Records that were flushed but could not be read back (the log is damaged).</param>
    /// <param name="Damage">A description of the damage, or null.</param>
    public readonly record struct OpenReport(long Replayed, long LostFlushedRecords, string? Damage);

    /// <summary>
    /// Opens the log at <paramref name="path"/> for the volume <paramref name="identity"/>, creating it with
    /// <paramref name="capacityBytes"/> when missing, and replays it: every intact record in order becomes dirty data
    /// again, to be written back. The log is not started; call <see cref="Start"/>.
    /// </summary>
    /// <exception cref="StorageException">
    /// BadStore when the file belongs to another volume or is not a log; IoError (with the damage described) when
    /// flushed records cannot be read back and <paramref name="acceptLoss"/> is false — nothing is written back then,
    /// so the backend keeps its consistent, older image.
    /// </exception>
    public static WriteBackLog Open(string path, string identity, long capacityBytes, int atomicUnitBytes, IVolumeHandle backend,
        ILogger logger, bool acceptLoss, TimeSpan headIdleDelay, int waveOpsMax, int waveBytesMax, out OpenReport report)
    {
        if (!LogFormat.IdentityFits(identity))
            throw new StorageException(StorageError.InvalidArgument, $"volume identity '{identity}' is too long for a cache log");
        bool exists = File.Exists(path);
        var file = File.OpenHandle(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
        try
        {
            LogFormat.Super super;
            if (!exists || RandomAccess.GetLength(file) == 0)
            {
                long capacity = LogFormat.DataStart + (Math.Max(capacityBytes - LogFormat.DataStart, 4L << 20) & ~(LogFormat.SectorBytes - 1L));
                RandomAccess.SetLength(file, capacity);
                WriteRingOnce(file, capacity);
                super = new LogFormat.Super(Guid.NewGuid(), identity, capacity, Generation: 0, Incarnation: 0, HeadSeq: 1, HeadPos: LogFormat.DataStart, FlushedSeq: 0);
            }
            else
            {
                super = ReadSuper(file, path);
                if (super.Identity != identity)
                    throw new StorageException(StorageError.BadStore, $"cache log {path} belongs to volume '{super.Identity}', not '{identity}'");
                if (RandomAccess.GetLength(file) != super.Capacity)
                    throw new StorageException(StorageError.BadStore, $"cache log {path} is {RandomAccess.GetLength(file)} bytes; its superblock says {super.Capacity}");
            }
            // A new incarnation for every open: records this run writes carry it, so replay never mistakes a stale
            // record left past a torn tail by an earlier run for the continuation of this one.
            super = super with { Incarnation = super.Incarnation + 1 };
            var log = new WriteBackLog(file, backend, logger, path, super, atomicUnitBytes, headIdleDelay, waveOpsMax, waveBytesMax);
            report = log.Replay(acceptLoss);
            return log;
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    // Writes the whole ring once (zeros) when the log is made; Replay's first sync makes it durable. From then on every
    // record overwrites blocks the file system has already allocated and written, so a flush's fdatasync carries the
    // records and the device flush only: appending into a hole (a sparse file, or fallocate's unwritten extents) made
    // each first-lap sync also write the inode and the allocation metadata, one device write more before the flush
    // (docs/PERFORMANCE.md, "Node cache", session 11). Zeros read as no record, so replay of a new log stops where it did.
    private static void WriteRingOnce(SafeFileHandle file, long capacity)
    {
        const int ChunkBytes = 1 << 20;
        var zeros = ArrayPool<byte>.Shared.Rent(ChunkBytes);
        try
        {
            Array.Clear(zeros, 0, ChunkBytes);
            for (long pos = LogFormat.DataStart; pos < capacity; pos += ChunkBytes)
                RandomAccess.Write(file, zeros.AsSpan(0, (int)Math.Min(ChunkBytes, capacity - pos)), pos);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(zeros);
        }
    }

    /// <summary>The id of the log at <paramref name="path"/>, or null when there is no file or no valid superblock in it.</summary>
    public static Guid? TryReadLogId(string path)
    {
        if (!File.Exists(path)) return null;
        try
        {
            using var file = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            return ReadSuper(file, path).LogId;
        }
        catch (StorageException)
        {
            return null;
        }
    }

    private static LogFormat.Super ReadSuper(SafeFileHandle file, string path)
    {
        Span<byte> slots = stackalloc byte[2 * LogFormat.SectorBytes];
        if (RandomAccess.Read(file, slots, 0) != slots.Length)
            throw new StorageException(StorageError.BadStore, $"cache log {path} is too short to be a log");
        bool a = LogFormat.TryDecodeSuper(slots[..LogFormat.SectorBytes], out var sa);
        bool b = LogFormat.TryDecodeSuper(slots[LogFormat.SectorBytes..], out var sb);
        if (!a && !b) throw new StorageException(StorageError.BadStore, $"cache log {path} has no valid superblock (not a Platter cache log, or both copies damaged)");
        if (a && b) return sa.Generation >= sb.Generation ? sa : sb;
        return a ? sa : sb;
    }

    private OpenReport Replay(bool acceptLoss)
    {
        long seq = _headSeq, pos = _headPos;
        long replayed = 0;
        string? stop = null;
        var sums = new ulong[LogFormat.RecordBlocksMax];
        var header = new byte[LogFormat.HeaderBytes(LogFormat.RecordBlocksMax)];
        var block = new byte[LogFormat.BlockBytes];
        long used = 0;
        long lastIncarnation = 0;
        while (used < _dataBytes)
        {
            if (pos == _capacity) pos = LogFormat.DataStart;
            if (RandomAccess.Read(_file, header.AsSpan(0, LogFormat.SectorBytes), pos) != LogFormat.SectorBytes) break;
            if (!LogFormat.TryDecodeHeader(header.AsSpan(0, LogFormat.SectorBytes), _logTag, out var h, out int need, sums))
            {
                if (need <= LogFormat.SectorBytes || need > header.Length || pos + need > _capacity) break;
                if (RandomAccess.Read(_file, header.AsSpan(0, need), pos) != need) break;
                if (!LogFormat.TryDecodeHeader(header.AsSpan(0, need), _logTag, out h, out _, sums))
                {
                    stop = $"record {seq} at {pos}: header fails its checksum";
                    break;
                }
            }
            if (h.Seq != seq || h.Incarnation < lastIncarnation || h.Incarnation >= _incarnation) break;
            lastIncarnation = h.Incarnation;
            if (h.Kind == LogFormat.KindWrap)
            {
                long waste = _capacity - pos;
                _slots[seq % _slots.Length] = new RecordSlot { Seq = seq, Pos = pos, Bytes = waste, Kind = LogFormat.KindWrap, Written = true, Entered = long.MaxValue, Acked = long.MinValue };
                used += waste;
                seq++;
                pos = LogFormat.DataStart;
                continue;
            }
            long bytes = h.HeaderBytes + (long)h.Blocks * LogFormat.BlockBytes;
            if (pos + bytes > _capacity) break;
            bool intact = true;
            for (int i = 0; i < h.Blocks && intact; i++)
            {
                long at = pos + h.HeaderBytes + (long)i * LogFormat.BlockBytes;
                if (RandomAccess.Read(_file, block, at) != block.Length || LogFormat.Hash(block) != sums[i])
                {
                    intact = false;
                    stop = $"record {seq} at {pos}: the block for volume offset {h.VolumeOffset + (long)i * LogFormat.BlockBytes} fails its checksum";
                }
            }
            if (!intact) break;

            _slots[seq % _slots.Length] = new RecordSlot
            {
                Seq = seq, Pos = pos, Bytes = bytes, VolumeOffset = h.VolumeOffset, Blocks = h.Blocks, Kind = LogFormat.KindWrite, Written = true,
                Entered = long.MaxValue, Acked = long.MinValue, // replayed: ordered after everything before it
            };
            long firstBlock = h.VolumeOffset / LogFormat.BlockBytes;
            for (int i = 0; i < h.Blocks; i++)
                _index[firstBlock + i] = new DirtyBlock(pos + h.HeaderBytes + (long)i * LogFormat.BlockBytes, seq, sums[i]);
            used += bytes;
            replayed++;
            seq++;
            pos += bytes;
        }

        long lost = Math.Max(0, _flushedSeq - (seq - 1));
        string? damage = lost > 0
            ? $"cache log {_path} is damaged ({stop ?? "records missing"}): {lost} flushed write record(s) from {seq} on cannot be read back; " +
              $"the backend holds the writes before record {seq}"
            : null;
        if (damage is not null && !acceptLoss)
        {
            // Write back nothing: the backend keeps a consistent, older image until someone decides.
            throw new StorageException(StorageError.IoError, damage + "; open with the loss accepted to serve that image and discard the rest of the log");
        }
        if (damage is not null) _logger.LogError("{Damage}; accepted: continuing from the intact records", damage);
        else if (stop is not null) _logger.LogWarning("cache log {Path}: replay stopped at an unflushed record ({Stop}); nothing flushed was lost", _path, stop);
        if (replayed > 0) _logger.LogInformation("cache log {Path}: {Records} record(s) not yet written back replayed", _path, replayed);

        _nextSeq = seq;
        _writtenThrough = seq - 1;
        _syncedThrough = seq - 1;
        _flushedSeq = seq - 1;
        _tailPos = pos == _capacity ? LogFormat.DataStart : pos;
        _usedBytes = used;
        // Make the new incarnation durable before any record of it exists, and the replayed records before the
        // superblock says they were flushed (after a SIGKILL they may be in the page cache only).
        Sync();
        WriteSuperLocked(_headSeq, _headPos);
        Sync();
        return new OpenReport(replayed, lost, damage);
    }
}
