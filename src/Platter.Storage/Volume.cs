using System.Buffers;
using Platter.Storage.Internal;

namespace Platter.Storage;

/// <summary>
/// An I/O handle on one volume. Thread-safe; concurrent requests are allowed. Offsets and lengths
/// are in bytes and need no alignment (unaligned writes read-modify-write their 4 KiB blocks).
/// </summary>
public sealed class Volume : IVolumeHandle
{
    // Source of the zeros a non-deallocating write-zeroes writes; shared and never modified.
    private static readonly byte[] ZeroChunk = new byte[1 << 20];

    private readonly VolumeStore _store;
    private readonly MapOwner _state;
    private volatile bool _disposed;

    internal Volume(VolumeStore store, MapOwner state)
    {
        _store = store;
        _state = state;
    }

    /// <summary>The volume's name, or <c>volume@snapshot</c> for a snapshot.</summary>
    public string Name => _state.DisplayName;
    public long SizeBytes => Volatile.Read(ref _state.SizeBytes);
    /// <summary>True for a snapshot: writes, trims and zeroing fail with ReadOnly.</summary>
    public bool IsReadOnly => _state is SnapshotState;

    // Only writable handles reach the write paths (CheckWritable runs first).
    private VolumeState Writable => (VolumeState)_state;

    /// <summary>Reads; unmapped ranges read as zeros. Throws ChecksumMismatch, IoError, OutOfRange, Closed.</summary>
    public void Read(long offset, Span<byte> destination)
    {
        CheckRange(offset, destination.Length);
        if (destination.IsEmpty) return;
        if (IsAligned(offset, destination.Length))
        {
            _store.ReadBlocks(_state, offset >> Layout.BlockShift, destination);
            return;
        }
        long first = offset >> Layout.BlockShift;
        long last = (offset + destination.Length - 1) >> Layout.BlockShift;
        int bytes = (int)(last - first + 1) << Layout.BlockShift;
        var buffer = ArrayPool<byte>.Shared.Rent(bytes);
        try
        {
            _store.ReadBlocks(_state, first, buffer.AsSpan(0, bytes));
            buffer.AsSpan((int)(offset - (first << Layout.BlockShift)), destination.Length).CopyTo(destination);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Writes (copy-on-write). Acknowledged on return, durable after the next flush. Throws NoSpace, IoError, StoreFailed, OutOfRange.</summary>
    public void Write(long offset, ReadOnlySpan<byte> source)
    {
        CheckWritable();
        CheckRange(offset, source.Length);
        if (source.IsEmpty) return;
        long end = offset + source.Length;
        long firstWhole = (offset + Layout.BlockBytes - 1) >> Layout.BlockShift;
        long endWhole = end >> Layout.BlockShift;
        if (firstWhole >= endWhole)
        {
            // No whole block: one or two partial blocks.
            WritePartial(offset, source);
            return;
        }
        long headBytes = (firstWhole << Layout.BlockShift) - offset;
        long wholeBytes = (endWhole - firstWhole) << Layout.BlockShift;
        if (headBytes > 0) _store.ReadModifyWrite(Writable, offset, source[..(int)headBytes]);
        _store.WriteBlocks(Writable, firstWhole, source.Slice((int)headBytes, (int)wholeBytes));
        var tail = source[(int)(headBytes + wholeBytes)..];
        if (!tail.IsEmpty) _store.ReadModifyWrite(Writable, endWhole << Layout.BlockShift, tail);
    }

    private void WritePartial(long offset, ReadOnlySpan<byte> source)
    {
        while (!source.IsEmpty)
        {
            int inBlock = (int)Math.Min(source.Length, Layout.BlockBytes - (offset & (Layout.BlockBytes - 1)));
            _store.ReadModifyWrite(Writable, offset, source[..inBlock]);
            offset += inBlock;
            source = source[inBlock..];
        }
    }

    /// <summary>Deallocates; the range reads as zeros.</summary>
    public void Trim(long offset, long length) => WriteZeroes(offset, length);

    /// <summary>Makes the range read as zeros (deallocates whole blocks, writes zeros into partial ones).</summary>
    public void WriteZeroes(long offset, long length)
    {
        CheckWritable();
        CheckRange(offset, length);
        _store.ZeroRange(Writable, offset, length);
    }

    /// <summary>Names of the snapshots a dirty-bitmap query may name: the volume's snapshots older than this handle's point in time.</summary>
    public IReadOnlyList<string> DirtyBitmapSnapshots
    {
        get
        {
            ThrowIfClosed();
            var volume = _state is SnapshotState s ? s.Volume : (VolumeState)_state;
            lock (volume.Lock)
                return [.. volume.Snapshots.TakeWhile(x => x != _state).Select(x => x.Name)];
        }
    }

    /// <summary>
    /// Changed-since map from <paramref name="offset"/>: consecutive runs covering at most <paramref name="length"/>
    /// bytes, Allocated meaning "differs from snapshot <paramref name="sinceSnapshot"/>". Returns how many.
    /// NotFound when the volume has no such snapshot (older than this handle's point in time).
    /// Time is proportional to the changes inside the range.
    /// </summary>
    public int GetChangedExtents(string sinceSnapshot, long offset, long length, Span<VolumeExtent> destination)
    {
        CheckRange(offset, length);
        if (length == 0 || destination.IsEmpty) return 0;
        var volume = _state is SnapshotState s ? s.Volume : (VolumeState)_state;
        long end = offset + length;
        long firstBlock = offset >> Layout.BlockShift, endBlock = (end + Layout.BlockBytes - 1) >> Layout.BlockShift;
        var changed = new List<(long Start, long End)>();
        int runsMax = destination.Length;
        bool truncated = false;
        lock (volume.Lock)
        {
            SnapshotState? since = null;
            foreach (var x in volume.Snapshots)
            {
                if (x == _state) break;
                if (x.Name == sinceSnapshot) since = x;
            }
            if (since is null) throw new StorageException(StorageError.NotFound, $"'{Name}' has no older snapshot named '{sinceSnapshot}'");
            lock (_state.Lock)
            {
                // Enough runs to fill the reply (and one to know where the last clean one ends), then stop; a run is
                // cut at MapQueryBlocksMax blocks so one call never walks a huge range under the lock.
                MapTree.DiffUntil(since.Map, _state.Map, firstBlock, endBlock, (block, _, _) =>
                {
                    if (changed.Count > 0 && changed[^1].End == block)
                    {
                        if (block - changed[^1].Start >= Layout.MapQueryBlocksMax)
                        {
                            truncated = true;
                            return false;
                        }
                        changed[^1] = (changed[^1].Start, block + 1);
                        return true;
                    }
                    if (changed.Count > runsMax) return false;
                    changed.Add((block, block + 1));
                    return true;
                });
            }
        }
        int count = 0;
        long pos = offset;
        foreach (var (start, stop) in changed)
        {
            long runStart = Math.Max(offset, start << Layout.BlockShift), runEnd = Math.Min(end, stop << Layout.BlockShift);
            if (runStart > pos)
            {
                if (count == destination.Length) return count;
                destination[count++] = new VolumeExtent(pos, runStart - pos, false);
            }
            if (count == destination.Length) return count;
            destination[count++] = new VolumeExtent(runStart, runEnd - runStart, true);
            pos = runEnd;
        }
        // After a cut run nothing is known beyond it: the caller asks again from there.
        if (!truncated && pos < end && count < destination.Length) destination[count++] = new VolumeExtent(pos, end - pos, false);
        return count;
    }

    /// <summary>Allocation depth map from <paramref name="offset"/> (see <see cref="DepthExtent"/>). Returns how many runs.</summary>
    public int GetAllocationDepth(long offset, long length, Span<DepthExtent> destination)
    {
        CheckRange(offset, length);
        if (length == 0 || destination.IsEmpty) return 0;
        long end = offset + length;
        long endBlock = (end + Layout.BlockBytes - 1) >> Layout.BlockShift;
        int count = 0;
        lock (_state.Lock)
        {
            var map = _state.Map;
            long pos = offset;
            long block = offset >> Layout.BlockShift;
            long scanned = 0; // mapped blocks looked at: the work bound of one call
            while (block < endBlock && count < destination.Length && scanned < Layout.MapQueryBlocksMax)
            {
                int depth;
                long next;
                var entry = map.Get(block);
                if (!entry.IsMapped)
                {
                    depth = 0;
                    long m = map.NextMapped(block + 1, endBlock);
                    next = m < 0 ? endBlock : m;
                }
                else
                {
                    depth = DepthOf(block, entry);
                    next = block + 1;
                    long cut = Math.Min(endBlock, block + Layout.MapQueryBlocksMax);
                    while (next < cut)
                    {
                        var e = map.Get(next);
                        if (!e.IsMapped || DepthOf(next, e) != depth) break;
                        next++;
                    }
                    scanned += next - block;
                }
                long runEnd = Math.Min(end, next << Layout.BlockShift);
                destination[count++] = new DepthExtent(pos, runEnd - pos, depth);
                pos = runEnd;
                block = next;
            }
        }
        return count;
    }

    // 1 when this volume wrote the block itself; one more for each origin snapshot up the clone chain that maps it too.
    private int DepthOf(long block, BlockEntry entry)
    {
        int depth = 1;
        for (var origin = _state.Origin; origin is not null && origin.Map.Get(block).PbaPlusOne == entry.PbaPlusOne; origin = origin.Origin)
            depth++;
        return depth;
    }

    /// <summary>True: a flush commits the whole store, so it covers writes acknowledged on every handle.</summary>
    public bool FlushCoversAllHandles => true;

    // The asynchronous surface of the backend seam. The engine's I/O completes inline (positional I/O into the page
    // cache, map updates in memory), so these run the synchronous calls and return completed tasks; failures travel
    // as faulted tasks, so callers on the network side have one error path. Only a flush truly waits.

    /// <inheritdoc />
    public ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken cancellationToken = default)
    {
        try
        {
            Read(offset, destination.Span);
            return default;
        }
        catch (StorageException e)
        {
            return ValueTask.FromException(e);
        }
    }

    /// <inheritdoc />
    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, bool fua, CancellationToken cancellationToken = default)
    {
        try
        {
            Write(offset, source.Span);
        }
        catch (StorageException e)
        {
            return ValueTask.FromException(e);
        }
        return fua ? FlushAsync(cancellationToken) : default;
    }

    /// <inheritdoc />
    public ValueTask TrimAsync(long offset, long length, bool fua, CancellationToken cancellationToken = default) =>
        WriteZeroesAsync(offset, length, deallocate: true, fua, cancellationToken);

    /// <inheritdoc />
    public ValueTask WriteZeroesAsync(long offset, long length, bool deallocate, bool fua, CancellationToken cancellationToken = default)
    {
        try
        {
            if (deallocate)
            {
                WriteZeroes(offset, length);
            }
            else
            {
                CheckWritable();
                CheckRange(offset, length);
                for (long done = 0; done < length; done += ZeroChunk.Length)
                    Write(offset + done, ZeroChunk.AsSpan(0, (int)Math.Min(ZeroChunk.Length, length - done)));
            }
        }
        catch (StorageException e)
        {
            return ValueTask.FromException(e);
        }
        return fua ? FlushAsync(cancellationToken) : default;
    }

    /// <summary>Makes every acknowledged write durable (group commit shared with all volumes of the store).</summary>
    public ValueTask FlushAsync(CancellationToken cancellationToken = default)
    {
        try
        {
            ThrowIfClosed();
        }
        catch (StorageException e)
        {
            return ValueTask.FromException(e);
        }
        return _store.FlushAsync(cancellationToken);
    }

    /// <summary>
    /// Allocation map from <paramref name="offset"/>: fills <paramref name="destination"/> with consecutive runs
    /// covering at most <paramref name="length"/> bytes and returns how many (at least one when length &gt; 0).
    /// </summary>
    public int GetExtents(long offset, long length, Span<VolumeExtent> destination)
    {
        ThrowIfClosed();
        CheckRange(offset, length);
        if (length == 0 || destination.IsEmpty) return 0;
        long end = offset + length;
        int count = 0;
        lock (_state.Lock)
        {
            long pos = offset;
            while (pos < end && count < destination.Length)
            {
                long block = pos >> Layout.BlockShift;
                long endBlock = (end + Layout.BlockBytes - 1) >> Layout.BlockShift;
                bool allocated = _state.Map.Get(block).IsMapped;
                long nextBlock = allocated ? _state.Map.NextUnmapped(block + 1, endBlock) : NextMappedOrEnd(block + 1, endBlock);
                long runEnd = Math.Min(end, nextBlock << Layout.BlockShift);
                destination[count++] = new VolumeExtent(pos, runEnd - pos, allocated);
                pos = runEnd;
            }
        }
        return count;
    }

    private long NextMappedOrEnd(long block, long endBlock)
    {
        long next = _state.Map.NextMapped(block, endBlock);
        return next < 0 ? endBlock : next;
    }

    private static bool IsAligned(long offset, long length) => ((offset | length) & (Layout.BlockBytes - 1)) == 0;

    private void CheckRange(long offset, long length)
    {
        ThrowIfClosed();
        if (offset < 0 || length < 0)
            throw new StorageException(StorageError.InvalidArgument, $"negative offset or length ({offset}, {length})");
        long size = SizeBytes;
        if (offset > size || length > size - offset)
            throw new StorageException(StorageError.OutOfRange, $"range [{offset}, {offset + length}) is past the end of volume '{Name}' ({size} bytes)");
    }

    private void CheckWritable()
    {
        if (IsReadOnly) throw new StorageException(StorageError.ReadOnly, $"volume '{Name}' is read-only");
    }

    private void ThrowIfClosed()
    {
        if (_disposed) throw new StorageException(StorageError.Closed, "the volume handle is closed");
        if (_state.Deleted) throw new StorageException(StorageError.Closed, $"volume '{Name}' was deleted");
        _store.ThrowIfDisposed();
    }

    public void Dispose() => _disposed = true;
}
