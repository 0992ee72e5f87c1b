using System.Buffers;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Platter.Cache.Internal;

namespace Platter.Cache;

/// <summary>What a write-back cache of one volume holds and how far write-back is behind.</summary>
/// <param name="DirtyBytes">Bytes the local log holds that the backend does not have yet.</param>
/// <param name="LogUsedBytes">Bytes of the log ring in use (dirty data, headers and padding).</param>
/// <param name="LogCapacityBytes">Size of the log ring.</param>
/// <param name="LagRecords">Records appended but not yet written back.</param>
/// <param name="Failure">Why write-back stopped, or null while it runs.</param>
public sealed record WriteBackStatus(long DirtyBytes, long LogUsedBytes, long LogCapacityBytes, long LagRecords, string? Failure);

/// <summary>Options of a write-back cache.</summary>
public sealed class WriteBackOptions
{
    /// <summary>Size of the log file (its ring holds at most this much dirty data, headers included).</summary>
    public long LogBytes { get; init; } = 1L << 30;

    /// <summary>
    /// The backend's unit of atomic writes: write-back never issues one write that crosses it, so a backend write is
    /// all-or-nothing. RBD's default object size, 4 MiB.
    /// </summary>
    public int AtomicUnitBytes { get; init; } = 4 << 20;

    /// <summary>
    /// Backend writes write-back keeps in flight together at most (records that no client can have ordered, decision
    /// 0014). 1 writes back one operation at a time.
    /// </summary>
    public int WriteBackOpsInFlight { get; init; } = 16;

    /// <summary>Bytes write-back keeps in flight together at most (its staging buffer; at least one atomic unit).</summary>
    public int WriteBackBytesInFlight { get; init; } = 16 << 20;

    /// <summary>
    /// Open even when the log is damaged and flushed records cannot be read back: the backend's older, consistent
    /// image is served and the unreadable rest of the log is discarded. False (the default) refuses to open.
    /// </summary>
    public bool AcceptLoss { get; init; }

    /// <summary>Size of the read cache file next to the log (0: no read cache). It starts empty on every open.</summary>
    public long ReadCacheBytes { get; init; }

    /// <summary>Where log messages go.</summary>
    public ILoggerFactory LoggerFactory { get; init; } = NullLoggerFactory.Instance;

    /// <summary>How long write-back waits for another record before it makes its head durable (WriteBackLog).</summary>
    internal TimeSpan HeadIdleDelay { get; init; } = TimeSpan.FromMilliseconds(20);
}

/// <summary>
/// A volume with a write-back cache: writes are acknowledged from an ordered, checksummed log on local disk; FLUSH
/// and FUA complete when the log is durable locally; a background task writes the log back to the backend volume in
/// order. One per volume per node, shared by every handle on it (<see cref="OpenHandle"/>).
/// </summary>
/// <remarks>
/// Guarantees (docs/decisions/0009-local-cache.md): nothing flushed is lost across a crash of the process or the node
/// (the log replays on open); if the cache is lost, the backend holds an ordered prefix of the acknowledged writes;
/// damaged log records are neither served nor written back. Trims and write-zeroes are ordered barriers: they wait
/// until everything logged before them is written back, then go to the backend directly (they are rare, and a trim
/// of a whole disk must not fill the log). Allocation queries see dirty blocks as allocated.
/// </remarks>
public sealed class WriteBackVolume : IAsyncDisposable
{
    private const int BlockBytes = LogFormat.BlockBytes;

    // Read-modify-write of partial blocks is serialised per block by one of these stripes, so two unaligned writes to
    // different bytes of one block cannot lose each other's bytes. Power of two; 64 keeps false sharing rare at the
    // queue depths NBD clients use.
    private const int RmwStripes = 64;

    // Above this many blocks a hole reported by the backend is not checked block by block against the dirty index:
    // it is reported as allocated instead (always a safe answer for block status), so one query's work stays bounded.
    private const long HoleCheckBlocksMax = 4096;

    private readonly IVolumeHandle _backend;
    private readonly WriteBackLog _log;
    private readonly ReadCache? _readCache;
    private readonly SemaphoreSlim[] _rmw = Enumerable.Range(0, RmwStripes).Select(_ => new SemaphoreSlim(1, 1)).ToArray();

    private WriteBackVolume(IVolumeHandle backend, WriteBackLog log, ReadCache? readCache)
    {
        _backend = backend;
        _log = log;
        _readCache = readCache;
    }

    /// <summary>
    /// Opens (or creates) the cache log at <paramref name="logPath"/> for <paramref name="backend"/>, replays what it
    /// holds and starts write-back. <paramref name="identity"/> names the volume durably (not its current name, which
    /// can change): a log is only ever written back to the volume it was made for. The cache owns
    /// <paramref name="backend"/> and disposes it.
    /// </summary>
    /// <exception cref="StorageException">BadStore: the log belongs to another volume; IoError: the log is damaged and loss was not accepted.</exception>
    public static WriteBackVolume Open(string logPath, string identity, IVolumeHandle backend, WriteBackOptions options)
    {
        var logger = options.LoggerFactory.CreateLogger("Platter.Cache");
        var log = WriteBackLog.Open(logPath, identity, options.LogBytes, options.AtomicUnitBytes, backend, logger, options.AcceptLoss,
            options.HeadIdleDelay, options.WriteBackOpsInFlight, options.WriteBackBytesInFlight, out var report);
        var readCache = options.ReadCacheBytes > 0 ? new ReadCache(logPath + ".rcache", options.ReadCacheBytes) : null;
        var volume = new WriteBackVolume(backend, log, readCache) { Replayed = report.Replayed, Damage = report.Damage };
        log.Start();
        return volume;
    }

    /// <summary>Records found in the log at open that the backend did not have yet (now being written back).</summary>
    public long Replayed { get; private init; }

    /// <summary>The damage found at open when it was accepted, or null.</summary>
    public string? Damage { get; private init; }

    /// <summary>Where the next record goes in the log file (for tests that cut power after a flush).</summary>
    internal long LogTailPosition => _log.TailPosition;

    /// <summary>The write-back log itself (tests read its sync counters).</summary>
    internal WriteBackLog Log => _log;

    /// <summary>The log's id, to record where the volume lives while this cache holds dirty data.</summary>
    public Guid LogId => _log.LogId;

    /// <summary>The backend volume's name.</summary>
    public string Name => _backend.Name;

    /// <summary>Current counters.</summary>
    public WriteBackStatus Status => new(_log.DirtyBlocks * BlockBytes, _log.UsedBytes, _log.CapacityBytes, _log.LagRecords, _log.Failure);

    /// <summary>Reads served by the read cache and reads that went to the backend (clean blocks only), or zeros without one.</summary>
    public (long Hits, long Misses) ReadCacheCounters => _readCache is null ? (0, 0) : (_readCache.Hits, _readCache.Misses);

    /// <summary>Forgets the read cache (the backend's content changed under it, e.g. a rollback).</summary>
    public void ClearReadCache() => _readCache?.Clear();

    /// <summary>A handle for one client; all handles share this cache. Disposing a handle leaves the cache open.</summary>
    public IVolumeHandle OpenHandle() => new Handle(this);

    /// <summary>Makes every write acknowledged so far durable in the local log (what a client's FLUSH does).</summary>
    public ValueTask FlushAsync(CancellationToken cancellationToken = default) => _log.FlushAsync(cancellationToken);

    /// <summary>
    /// The id of the log file at <paramref name="logPath"/>, or null when there is none (or nothing readable): what a
    /// node compares with a volume's dirty marker before it replays a log onto the volume.
    /// </summary>
    public static Guid? ReadLogId(string logPath) => WriteBackLog.TryReadLogId(logPath);

    /// <summary>Waits until everything written so far is on the backend (before a snapshot, a release or a migration).</summary>
    public ValueTask DrainAsync(CancellationToken cancellationToken = default) => _log.DrainAsync(cancellationToken);

    /// <summary>Stops write-back and closes the log; what is not written back stays in it for the next open.</summary>
    public async ValueTask DisposeAsync()
    {
        await _log.DisposeAsync().ConfigureAwait(false);
        _readCache?.Dispose();
        _backend.Dispose();
    }

    private static bool IsAligned(long offset, long length) => ((offset | length) & (BlockBytes - 1)) == 0;

    private void CheckRange(long offset, long length)
    {
        long size = _backend.SizeBytes;
        if (offset < 0 || length < 0 || offset > size || length > size - offset)
            throw new StorageException(StorageError.OutOfRange, $"range [{offset}, {offset + length}) is past the end of volume '{Name}' ({size} bytes)");
    }

    private async ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken cancellationToken)
    {
        CheckRange(offset, destination.Length);
        if (destination.IsEmpty) return;
        if (IsAligned(offset, destination.Length))
        {
            await ReadBlocksAsync(offset / BlockBytes, destination, cancellationToken).ConfigureAwait(false);
            return;
        }
        long first = offset / BlockBytes;
        long last = (offset + destination.Length - 1) / BlockBytes;
        int bytes = (int)(last - first + 1) * BlockBytes;
        var buffer = ArrayPool<byte>.Shared.Rent(bytes);
        try
        {
            await ReadBlocksAsync(first, buffer.AsMemory(0, bytes), cancellationToken).ConfigureAwait(false);
            buffer.AsSpan((int)(offset - first * BlockBytes), destination.Length).CopyTo(destination.Span);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    // Dirty blocks come from the log; runs of clean blocks from the backend in one read each. A block written back
    // between the check and the read is simply read from the backend, which has it by then.
    private async ValueTask ReadBlocksAsync(long firstBlock, Memory<byte> destination, CancellationToken cancellationToken)
    {
        int blocks = destination.Length / BlockBytes;
        int i = 0;
        while (i < blocks)
        {
            if (_log.IsDirty(firstBlock + i) && _log.TryReadBlock(firstBlock + i, destination.Span.Slice(i * BlockBytes, BlockBytes)))
            {
                i++;
                continue;
            }
            int start = i++;
            while (i < blocks && !_log.IsDirty(firstBlock + i)) i++;
            await ReadThrough.ReadAsync(_readCache, _backend, firstBlock + start, destination[(start * BlockBytes)..(i * BlockBytes)], cancellationToken).ConfigureAwait(false);
        }
    }

    private async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, bool fua, bool clocked, CancellationToken cancellationToken)
    {
        CheckRange(offset, source.Length);
        if (source.IsEmpty) return;
        if (IsAligned(offset, source.Length))
        {
            await AppendAsync(offset, source, clocked, cancellationToken).ConfigureAwait(false);
        }
        else
        {
            long first = offset / BlockBytes;
            long last = (offset + source.Length - 1) / BlockBytes;
            var stripe = _rmw[first & (RmwStripes - 1)];
            // Stripes are taken for the first block only: a write of several partial blocks spans at most the first and
            // last; taking both in block order could deadlock with nothing, but the last is taken too when it differs.
            var stripe2 = _rmw[last & (RmwStripes - 1)];
            await stripe.WaitAsync(cancellationToken).ConfigureAwait(false);
            bool second = stripe2 != stripe;
            if (second) await stripe2.WaitAsync(cancellationToken).ConfigureAwait(false);
            int bytes = (int)(last - first + 1) * BlockBytes;
            var buffer = ArrayPool<byte>.Shared.Rent(bytes);
            try
            {
                await ReadBlocksAsync(first, buffer.AsMemory(0, bytes), cancellationToken).ConfigureAwait(false);
                source.Span.CopyTo(buffer.AsSpan((int)(offset - first * BlockBytes)));
                await AppendAsync(first * BlockBytes, buffer.AsMemory(0, bytes), clocked, cancellationToken).ConfigureAwait(false);
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
                if (second) stripe2.Release();
                stripe.Release();
            }
        }
        if (fua) await _log.FlushAsync(cancellationToken).ConfigureAwait(false);
    }

    // The read cache must never outlive the log's newer copy of a block: it is invalidated before the append (no
    // racing reader inserts the old copy afterwards) and after it (none that looked in between does either).
    private async ValueTask AppendAsync(long offset, ReadOnlyMemory<byte> data, bool clocked, CancellationToken cancellationToken)
    {
        _readCache?.Invalidate(offset / BlockBytes, data.Length / BlockBytes);
        await _log.AppendAsync(offset, data, clocked, cancellationToken).ConfigureAwait(false);
        _readCache?.Invalidate(offset / BlockBytes, data.Length / BlockBytes);
    }

    private async ValueTask ZeroAsync(long offset, long length, bool trim, bool deallocate, bool fua, CancellationToken cancellationToken)
    {
        CheckRange(offset, length);
        // An ordered barrier: everything logged before goes to the backend first, then the zeroing itself.
        await _log.DrainAsync(cancellationToken).ConfigureAwait(false);
        long first = offset / BlockBytes, blocks = (offset + length + BlockBytes - 1) / BlockBytes - first;
        _readCache?.Invalidate(first, blocks);
        if (trim) await _backend.TrimAsync(offset, length, fua, cancellationToken).ConfigureAwait(false);
        else await _backend.WriteZeroesAsync(offset, length, deallocate, fua, cancellationToken).ConfigureAwait(false);
        _readCache?.Invalidate(first, blocks);
    }

    // Overlays dirty blocks on the backend's answer: a hole that holds dirty blocks is data (checked block by block up
    // to HoleCheckBlocksMax, reported as data beyond that).
    private int OverlayDirty(Span<VolumeExtent> destination, int count)
    {
        if (_log.DirtyBlocks == 0) return count;
        for (int i = 0; i < count; i++)
        {
            var run = destination[i];
            if (run.Allocated) continue;
            long first = run.Offset / BlockBytes, end = (run.Offset + run.Length + BlockBytes - 1) / BlockBytes;
            if (end - first > HoleCheckBlocksMax)
            {
                destination[i] = run with { Allocated = true };
                continue;
            }
            for (long b = first; b < end; b++)
            {
                if (!_log.IsDirty(b)) continue;
                // Report the hole up to the dirty block, and stop there: the caller asks again from where we stop.
                long dirtyAt = Math.Max(run.Offset, b * BlockBytes);
                if (dirtyAt > run.Offset)
                {
                    destination[i] = run with { Length = dirtyAt - run.Offset };
                    return i + 1;
                }
                destination[i] = new VolumeExtent(run.Offset, Math.Min(run.Offset + run.Length, (b + 1) * BlockBytes) - run.Offset, true);
                return i + 1;
            }
        }
        return count;
    }

    private sealed class Handle(WriteBackVolume cache) : IVolumeHandle, IClockedAcknowledgements
    {
        private volatile bool _disposed;
        private volatile bool _clocked; // the caller moves the log's clock before our acknowledgements reach a client

        public void AcknowledgeThroughClock() => _clocked = true;

        public void AcknowledgementsLeaving() => cache._log.AcknowledgementsLeaving();

        public string Name => cache._backend.Name;
        public long SizeBytes => cache._backend.SizeBytes;
        public bool IsReadOnly => false;
        public bool FlushCoversAllHandles => true; // one log per volume: a flush syncs every handle's records
        public bool ExtentsAreCheap => cache._backend.ExtentsAreCheap; // the overlay is in memory, the backend's map may not be

        private void ThrowIfClosed()
        {
            if (_disposed) throw new StorageException(StorageError.Closed, "the volume handle is closed");
        }

        public ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken cancellationToken = default)
        {
            ThrowIfClosed();
            return cache.ReadAsync(offset, destination, cancellationToken);
        }

        public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, bool fua, CancellationToken cancellationToken = default)
        {
            ThrowIfClosed();
            return cache.WriteAsync(offset, source, fua, _clocked, cancellationToken);
        }

        public ValueTask FlushAsync(CancellationToken cancellationToken = default)
        {
            ThrowIfClosed();
            return cache._log.FlushAsync(cancellationToken);
        }

        public ValueTask TrimAsync(long offset, long length, bool fua, CancellationToken cancellationToken = default)
        {
            ThrowIfClosed();
            return cache.ZeroAsync(offset, length, trim: true, deallocate: true, fua, cancellationToken);
        }

        public ValueTask WriteZeroesAsync(long offset, long length, bool deallocate, bool fua, CancellationToken cancellationToken = default)
        {
            ThrowIfClosed();
            return cache.ZeroAsync(offset, length, trim: false, deallocate, fua, cancellationToken);
        }

        public int GetExtents(long offset, long length, Span<VolumeExtent> destination)
        {
            ThrowIfClosed();
            return cache.OverlayDirty(destination, cache._backend.GetExtents(offset, length, destination));
        }

        public int GetChangedExtents(string sinceSnapshot, long offset, long length, Span<VolumeExtent> destination)
        {
            ThrowIfClosed();
            // Snapshots of a write-back volume are taken after a drain, so every dirty block is newer than any of them.
            return cache.OverlayDirty(destination, cache._backend.GetChangedExtents(sinceSnapshot, offset, length, destination));
        }

        public int GetAllocationDepth(long offset, long length, Span<DepthExtent> destination)
        {
            ThrowIfClosed();
            // Dirty blocks are the volume's own data (depth 1); only runs the backend calls absent need a look.
            int count = cache._backend.GetAllocationDepth(offset, length, destination);
            if (cache._log.DirtyBlocks == 0) return count;
            for (int i = 0; i < count; i++)
            {
                var run = destination[i];
                if (run.Depth == 1) continue;
                long first = run.Offset / BlockBytes, end = (run.Offset + run.Length + BlockBytes - 1) / BlockBytes;
                if (end - first > HoleCheckBlocksMax) continue;
                for (long b = first; b < end; b++)
                {
                    if (!cache._log.IsDirty(b)) continue;
                    long dirtyAt = Math.Max(run.Offset, b * BlockBytes);
                    destination[i] = dirtyAt > run.Offset
                        ? run with { Length = dirtyAt - run.Offset }
                        : new DepthExtent(run.Offset, Math.Min(run.Offset + run.Length, (b + 1) * BlockBytes) - run.Offset, 1);
                    return i + 1;
                }
            }
            return count;
        }

        public IReadOnlyList<string> DirtyBitmapSnapshots => cache._backend.DirtyBitmapSnapshots;

        public void Dispose() => _disposed = true;
    }
}
