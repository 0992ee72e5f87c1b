using System.Buffers;
using Microsoft.Extensions.Logging;
using Platter.Storage.Internal;

namespace Platter.Storage;

/// <summary>
/// An I/O handle on one volume. Thread-safe; concurrent requests are allowed. Offsets and lengths
/// are in bytes and need no alignment (unaligned writes read-modify-write their 4 KiB blocks).
/// </summary>
public sealed partial class Volume : IVolumeHandle
{
    // Source of the zeros a non-deallocating write-zeroes writes; shared and never modified.
    private static readonly byte[] ZeroChunk = new byte[1 << 20];

    private readonly EngineParts _parts;
    private readonly MapOwner _state;
    private volatile bool _disposed;

    internal Volume(EngineParts parts, MapOwner state)
    {
        _parts = parts;
        _state = state;
    }

    /// <summary>The volume's name, or <c>volume@snapshot</c> for a snapshot.</summary>
    public string Name => _state.DisplayName;
    public long SizeBytes => Volatile.Read(ref _state.SizeBytes);
    /// <summary>True for a snapshot or a store opened for salvage: writes, trims and zeroing fail with ReadOnly.</summary>
    public bool IsReadOnly => _state is SnapshotState || _parts.Salvage;

    // Only writable handles reach the write paths (CheckWritable runs first).
    private VolumeState Writable => (VolumeState)_state;

    /// <summary>Reads; unmapped ranges read as zeros. Throws ChecksumMismatch, IoError, OutOfRange, Closed.</summary>
    public void Read(long offset, Span<byte> destination)
    {
        CheckRange(offset, destination.Length);
        if (destination.IsEmpty) return;
        if (IsAligned(offset, destination.Length))
        {
            ReadBlocks(offset >> EngineLimits.BlockShift, destination);
            return;
        }
        long first = offset >> EngineLimits.BlockShift;
        long last = (offset + destination.Length - 1) >> EngineLimits.BlockShift;
        int bytes = (int)(last - first + 1) << EngineLimits.BlockShift;
        var buffer = ArrayPool<byte>.Shared.Rent(bytes);
        try
        {
            ReadBlocks(first, buffer.AsSpan(0, bytes));
            buffer.AsSpan((int)(offset - (first << EngineLimits.BlockShift)), destination.Length).CopyTo(destination);
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
        try
        {
            WriteChecked(offset, source);
        }
        catch (Exception e) when (e is not StorageException)
        {
            throw _parts.Committer.FailStop(e, $"a write to '{Name}' at offset {offset}");
        }
    }

    private void WriteChecked(long offset, ReadOnlySpan<byte> source)
    {
        long end = offset + source.Length;
        long firstWhole = (offset + EngineLimits.BlockBytes - 1) >> EngineLimits.BlockShift;
        long endWhole = end >> EngineLimits.BlockShift;
        if (firstWhole >= endWhole)
        {
            // No whole block: one or two partial blocks.
            WritePartial(offset, source);
            return;
        }
        long headBytes = (firstWhole << EngineLimits.BlockShift) - offset;
        long wholeBytes = (endWhole - firstWhole) << EngineLimits.BlockShift;
        if (headBytes > 0) ReadModifyWrite(offset, source[..(int)headBytes]);
        WriteBlocks(firstWhole, source.Slice((int)headBytes, (int)wholeBytes));
        var tail = source[(int)(headBytes + wholeBytes)..];
        if (!tail.IsEmpty) ReadModifyWrite(endWhole << EngineLimits.BlockShift, tail);
    }

    private void WritePartial(long offset, ReadOnlySpan<byte> source)
    {
        while (!source.IsEmpty)
        {
            int inBlock = (int)Math.Min(source.Length, EngineLimits.BlockBytes - (offset & (EngineLimits.BlockBytes - 1)));
            ReadModifyWrite(offset, source[..inBlock]);
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
        try
        {
            ZeroRange(offset, length);
        }
        catch (Exception e) when (e is not StorageException)
        {
            throw _parts.Committer.FailStop(e, $"zeroing '{Name}' at offset {offset}");
        }
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
        long firstBlock = offset >> EngineLimits.BlockShift, endBlock = (end + EngineLimits.BlockBytes - 1) >> EngineLimits.BlockShift;
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
                        if (block - changed[^1].Start >= EngineLimits.MapQueryBlocksMax)
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
            long runStart = Math.Max(offset, start << EngineLimits.BlockShift), runEnd = Math.Min(end, stop << EngineLimits.BlockShift);
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
        long endBlock = (end + EngineLimits.BlockBytes - 1) >> EngineLimits.BlockShift;
        int count = 0;
        lock (_state.Lock)
        {
            var map = _state.Map;
            long pos = offset;
            long block = offset >> EngineLimits.BlockShift;
            long scanned = 0; // mapped blocks looked at: the work bound of one call
            while (block < endBlock && count < destination.Length && scanned < EngineLimits.MapQueryBlocksMax)
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
                    long cut = Math.Min(endBlock, block + EngineLimits.MapQueryBlocksMax);
                    while (next < cut)
                    {
                        var e = map.Get(next);
                        if (!e.IsMapped || DepthOf(next, e) != depth) break;
                        next++;
                    }
                    scanned += next - block;
                }
                long runEnd = Math.Min(end, next << EngineLimits.BlockShift);
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
        var start = _state is SnapshotState s ? s.Volume.Origin : ((VolumeState)_state).Origin;
        for (var origin = start; origin is not null && origin.Map.Get(block).PbaPlusOne == entry.PbaPlusOne; origin = origin.Volume.Origin)
            depth++;
        return depth;
    }

    /// <summary>True: a flush commits the whole store, so it covers writes acknowledged on every handle.</summary>
    public bool FlushCoversAllHandles => true;

    /// <summary>True: the map is in memory.</summary>
    public bool ExtentsAreCheap => true;

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
            return _parts.Committer.FlushAsync(cancellationToken);
        }
        catch (StorageException e)
        {
            return ValueTask.FromException(e);
        }
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
                long block = pos >> EngineLimits.BlockShift;
                long endBlock = (end + EngineLimits.BlockBytes - 1) >> EngineLimits.BlockShift;
                bool allocated = _state.Map.Get(block).IsMapped;
                long nextBlock = allocated ? _state.Map.NextUnmapped(block + 1, endBlock) : NextMappedOrEnd(block + 1, endBlock);
                long runEnd = Math.Min(end, nextBlock << EngineLimits.BlockShift);
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

    private static bool IsAligned(long offset, long length) => ((offset | length) & (EngineLimits.BlockBytes - 1)) == 0;

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
        _parts.ThrowIfClosed();
    }

    public void Dispose() => _disposed = true;

    // ---- The data path: copy-on-write writes, verified reads, unmapping. Offsets in blocks unless named bytes. ----

    /// <summary>Writes whole blocks to new space and maps them. <paramref name="data"/> is a multiple of the block size.</summary>
    private void WriteBlocks(long firstBlock, ReadOnlySpan<byte> data)
    {
        var state = Writable;
        _parts.Committer.ThrowIfFailed();
        int blocks = data.Length >> EngineLimits.BlockShift;
        Span<uint> crcs = stackalloc uint[EngineLimits.ExtentBlocksMax];
        int done = 0;
        while (done < blocks)
        {
            long pba = _parts.Space.Allocate(state, firstBlock + done, Math.Min(blocks - done, EngineLimits.ExtentBlocksMax), out int got);
            var piece = data.Slice(done << EngineLimits.BlockShift, got << EngineLimits.BlockShift);
            Crc32C.ComputeBlocks(piece, EngineLimits.BlockBytes, crcs[..got]);
            try
            {
                _parts.Data.Write(pba << EngineLimits.BlockShift, piece);
            }
            catch (IOException e)
            {
                // Nothing maps this space yet, so it can be reused at once.
                _parts.Space.FreeUnmapped(pba, got);
                throw _parts.DeviceError(e, $"write to volume '{state.Name}' at offset {(firstBlock + done) << EngineLimits.BlockShift}");
            }
            int opBytes;
            // Room in the pending-operation ring before the lock: under it, a record never waits.
            _parts.Ring.WaitForRoom(OpLog.MapExtentBytes(got));
            lock (state.Lock)
            {
                if (state.Deleted || firstBlock + done + got > state.SizeBlocks)
                {
                    _parts.Space.FreeUnmapped(pba, got);
                    throw state.Deleted
                        ? new StorageException(StorageError.Closed, $"volume '{state.Name}' was deleted")
                        : new StorageException(StorageError.OutOfRange, $"volume '{state.Name}' shrank below this write");
                }
                var parent = state.Parent;
                try
                {
                    // Leaves dropped by the map cache are rebuilt before anything changes (decision 0019): the
                    // volume's own become its own, its parent's (read to judge what the write frees) are fetched.
                    state.Map.PrepareSet(firstBlock + done, got);
                    parent?.Map.FetchLeaves(firstBlock + done, got);
                }
                catch (StorageException)
                {
                    _parts.Space.FreeUnmapped(pba, got);
                    throw;
                }
                try
                {
                    for (int i = 0; i < got; i++)
                    {
                        long block = firstBlock + done + i;
                        var old = state.Map.Set(block, BlockEntry.Mapped(pba + i, crcs[i]));
                        // The allocator handed out a block this very volume maps: space accounting is broken.
                        if (old.PbaPlusOne == pba + i + 1) Invariant.Fail($"physical block {pba + i} was allocated while '{state.Name}' maps it at block {block}");
                        if (old.IsMapped) FreeIfUnshared(state, parent, block, old);
                    }
                }
                catch (StorageException e)
                {
                    throw MapChangedHalfway(state, e);
                }
                _parts.Space.NoteMapped(state, got);
                int before = state.PendingOps.Length;
                state.PendingOps.AppendMapExtent(state.LayerId, firstBlock + done, crcs[..got], pba);
                opBytes = state.PendingOps.Length - before;
                // Map and pending log in step: every block just mapped is in the record just appended.
                Invariant.Check(opBytes == OpLog.MapExtentBytes(got), "the pending log did not take the extent just mapped");
                // Before the write is acknowledged: a crash of the process from here on keeps it (PendingRing).
                _parts.Ring.Append(state, state.PendingOps.Span[before..]);
            }
            _parts.Committer.NotePendingBytes(opBytes, (long)got << EngineLimits.BlockShift);
            done += got;
        }
        Interlocked.Increment(ref _parts.Counters.WriteOps);
        Interlocked.Add(ref _parts.Counters.WriteBytes, data.Length);
    }

    /// <summary>
    /// A map leaf the map cache dropped could not be rebuilt (decision 0019: damaged metadata) after a change of the
    /// volume's map had begun: the map in memory no longer matches what the pending log will hold, so this is a broken
    /// invariant and the store fails (fail-stop) rather than commit frees the journal does not explain. Writers fetch
    /// the leaves they need first, so only damage appearing between that fetch and the change gets here.
    /// </summary>
    private InvariantViolation MapChangedHalfway(VolumeState state, StorageException e) =>
        new($"the map of '{state.Name}' changed halfway: {e.Message}");

    /// <summary>
    /// A volume unmapped or replaced a block's entry: the block is free unless the volume's parent (its newest
    /// snapshot, or its origin) still maps it. Nothing else can: versions share a block only along their lineage, and
    /// every version between the parent and the volume is the parent itself. Caller holds the volume's lock.
    /// </summary>
    private void FreeIfUnshared(VolumeState state, SnapshotState? parent, long block, BlockEntry old)
    {
        if (parent is not null && parent.Map.Get(block).PbaPlusOne == old.PbaPlusOne) return;
        state.PendingFrees.Add(old.Pba);
        _parts.Space.NoteUnreferenced(1);
    }

    /// <summary>Reads whole blocks, verifying each mapped block's checksum; unmapped blocks read as zeros.</summary>
    private void ReadBlocks(long firstBlock, Span<byte> destination)
    {
        var state = _state;
        int blocks = destination.Length >> EngineLimits.BlockShift;
        long epoch = _parts.Epochs.Enter();
        BlockEntry[]? rented = null;
        try
        {
            Span<BlockEntry> entries = blocks <= 64 ? stackalloc BlockEntry[64] : (rented = ArrayPool<BlockEntry>.Shared.Rent(blocks));
            entries = entries[..blocks];
            lock (state.Lock)
            {
                if (state.Deleted) throw new StorageException(StorageError.Closed, $"'{state.DisplayName}' was deleted");
                state.Map.Get(firstBlock, entries);
            }
            int i = 0;
            while (i < blocks)
            {
                if (!entries[i].IsMapped)
                {
                    int j = i + 1;
                    while (j < blocks && !entries[j].IsMapped) j++;
                    destination.Slice(i << EngineLimits.BlockShift, (j - i) << EngineLimits.BlockShift).Clear();
                    i = j;
                    continue;
                }
                // One device read per physically contiguous run.
                int k = i + 1;
                while (k < blocks && entries[k].IsMapped && entries[k].Pba == entries[k - 1].Pba + 1) k++;
                var run = destination.Slice(i << EngineLimits.BlockShift, (k - i) << EngineLimits.BlockShift);
                try
                {
                    _parts.Data.Read(entries[i].Pba << EngineLimits.BlockShift, run);
                }
                catch (IOException e)
                {
                    throw _parts.DeviceError(e, $"read of '{state.DisplayName}' at offset {(firstBlock + i) << EngineLimits.BlockShift}");
                }
                int bad = BlockVerify.FirstMismatch(run, entries[i..k]);
                if (bad >= 0) throw ChecksumError(state, firstBlock + i + bad, entries[i + bad].Pba);
                i = k;
            }
        }
        finally
        {
            _parts.Epochs.Exit(epoch);
            if (rented is not null) ArrayPool<BlockEntry>.Shared.Return(rented);
        }
        Interlocked.Increment(ref _parts.Counters.ReadOps);
        Interlocked.Add(ref _parts.Counters.ReadBytes, destination.Length);
    }

    /// <summary>Unmaps whole blocks [firstBlock, firstBlock+count).</summary>
    private void UnmapBlocks(long firstBlock, long count)
    {
        var state = Writable;
        _parts.Committer.ThrowIfFailed();
        if (count <= 0) return;
        int opBytes;
        _parts.Ring.WaitForRoom(OpLog.UnmapBytes);
        lock (state.Lock)
        {
            if (state.Deleted) throw new StorageException(StorageError.Closed, $"volume '{state.Name}' was deleted");
            long end = firstBlock + count;
            var parent = state.Parent;
            bool any = false;
            int before = state.PendingOps.Length;
            try
            {
                // The parent's leaves dropped by the map cache are rebuilt first (decision 0019): what the trim frees
                // is judged against them, and a leaf that cannot be rebuilt fails the trim before anything changed.
                parent?.Map.FetchLeaves(firstBlock, end - firstBlock);
                state.Map.UnmapRange(firstBlock, end, (b, old) =>
                {
                    any = true; // the map has changed from here on (UnmapRange reports a block once it is unmapped)
                    FreeIfUnshared(state, parent, b, old);
                });
                if (!any) return; // already reads as zeros: nothing to journal
                AppendUnmapOps(state, parent, firstBlock, end);
            }
            catch (StorageException) when (!any)
            {
                throw; // a leaf the map cache dropped could not be rebuilt before anything changed: this trim fails alone
            }
            catch (StorageException e)
            {
                throw MapChangedHalfway(state, e);
            }
            opBytes = state.PendingOps.Length - before;
            _parts.Ring.Append(state, state.PendingOps.Span[before..]);
        }
        _parts.Committer.NotePendingBytes(opBytes, 0);
    }

    /// <summary>
    /// Journals that [firstBlock, end) of the volume reads as zeros: the range leaves the volume's layer, and where the
    /// parent maps blocks a tombstone hides them. Caller holds the volume's lock.
    /// </summary>
    private static void AppendUnmapOps(VolumeState state, SnapshotState? parent, long firstBlock, long end)
    {
        state.PendingOps.AppendUnmap(state.LayerId, firstBlock, end - firstBlock);
        if (parent is null) return;
        long parentEnd = Math.Min(end, parent.SizeBlocks);
        for (long b = parent.Map.NextMapped(firstBlock, parentEnd); b >= 0; )
        {
            long runEnd = parent.Map.NextUnmapped(b + 1, parentEnd);
            state.PendingOps.AppendTombstone(state.LayerId, b, runEnd - b);
            b = parent.Map.NextMapped(runEnd, parentEnd);
        }
    }

    /// <summary>Makes a byte range read as zeros: whole blocks are unmapped, partial blocks rewritten with zeros.</summary>
    private void ZeroRange(long offset, long length)
    {
        if (length <= 0) return;
        long end = offset + length;
        long firstWhole = (offset + EngineLimits.BlockBytes - 1) >> EngineLimits.BlockShift;
        long endWhole = end >> EngineLimits.BlockShift;
        if (firstWhole >= endWhole)
        {
            // Inside one block, or straddling two without covering either.
            ZeroPartial(offset, end);
            return;
        }
        ZeroPartial(offset, firstWhole << EngineLimits.BlockShift);
        UnmapBlocks(firstWhole, endWhole - firstWhole);
        ZeroPartial(endWhole << EngineLimits.BlockShift, end);
    }

    private void ZeroPartial(long offset, long end)
    {
        var state = Writable;
        Span<byte> zeros = stackalloc byte[EngineLimits.BlockBytes];
        zeros.Clear();
        while (offset < end)
        {
            long block = offset >> EngineLimits.BlockShift;
            long blockEnd = Math.Min(end, (block + 1) << EngineLimits.BlockShift);
            bool mapped;
            lock (state.Lock) mapped = state.Map.Get(block).IsMapped;
            if (mapped)
            {
                ReadModifyWrite(offset, zeros[..(int)(blockEnd - offset)]);
            }
            offset = blockEnd;
        }
    }

    /// <summary>Writes part of one block: reads it (verified), patches it, writes it to new space.</summary>
    private void ReadModifyWrite(long offset, ReadOnlySpan<byte> source)
    {
        var state = Writable;
        long block = offset >> EngineLimits.BlockShift;
        int inner = (int)(offset & (EngineLimits.BlockBytes - 1));
        Span<byte> buffer = stackalloc byte[EngineLimits.BlockBytes];
        // Two sector writes into one block must not both read the old block: serialise them per stripe.
        lock (state.RmwLocks[(int)(block % EngineLimits.RmwLockStripes)])
        {
            ReadBlocks(block, buffer);
            source.CopyTo(buffer[inner..]);
            WriteBlocks(block, buffer);
        }
    }

    /// <summary>
    /// Sets the volume's size (catalog resize, under the admin lock): shrinking drops the data past the new end and
    /// zeroes the rest of a new partial last block, so a later grow reads zeros there.
    /// </summary>
    internal void Resize(long newSizeBytes)
    {
        var state = Writable;
        long oldSize;
        lock (state.Lock) oldSize = state.SizeBytes;
        if (newSizeBytes < oldSize && newSizeBytes % EngineLimits.BlockBytes != 0)
        {
            long tailEnd = Math.Min(oldSize, (newSizeBytes | (EngineLimits.BlockBytes - 1)) + 1);
            ZeroRange(newSizeBytes, tailEnd - newSizeBytes);
        }
        lock (state.Lock)
        {
            state.SizeBytes = newSizeBytes;
            if (newSizeBytes < oldSize)
            {
                long firstDropped = state.SizeBlocks;
                var parent = state.Parent;
                state.Map.UnmapRange(firstDropped, long.MaxValue, (block, old) => FreeIfUnshared(state, parent, block, old));
                // Not copied to the pending-operation ring: the resize itself is a catalog operation, which the ring
                // does not hold, so after a crash before its commit the volume keeps its old size and its tail.
                AppendUnmapOps(state, parent, firstDropped, long.MaxValue);
            }
        }
    }

    private StorageException ChecksumError(MapOwner state, long block, long pba)
    {
        Interlocked.Increment(ref _parts.Counters.ChecksumErrors);
        long offset = block << EngineLimits.BlockShift;
        _parts.Logger.LogError("Checksum mismatch in '{Volume}' at offset {Offset} (physical block {Pba})", state.DisplayName, offset, pba);
        return new StorageException(StorageError.ChecksumMismatch, $"checksum mismatch in '{state.DisplayName}' at offset {offset} (physical block {pba})");
    }
}
