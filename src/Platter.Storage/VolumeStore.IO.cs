using System.Buffers;
using Microsoft.Extensions.Logging;
using Platter.Storage.Devices;
using Platter.Storage.Internal;

namespace Platter.Storage;

// The data path: allocation, copy-on-write writes, verified reads, unmapping. Offsets here are in blocks unless named bytes.
public sealed partial class VolumeStore
{
    /// <summary>Writes whole blocks to new space and maps them. <paramref name="data"/> is a multiple of the block size.</summary>
    internal void WriteBlocks(VolumeState state, long firstBlock, ReadOnlySpan<byte> data)
    {
        ThrowIfFailed();
        int blocks = data.Length >> Layout.BlockShift;
        Span<uint> crcs = stackalloc uint[Layout.ExtentBlocksMax];
        int done = 0;
        while (done < blocks)
        {
            long pba = Allocate(state, Math.Min(blocks - done, Layout.ExtentBlocksMax), out int got);
            var piece = data.Slice(done << Layout.BlockShift, got << Layout.BlockShift);
            Crc32C.ComputeBlocks(piece, Layout.BlockBytes, crcs[..got]);
            try
            {
                _data.Write(pba << Layout.BlockShift, piece);
            }
            catch (IOException e)
            {
                // Nothing maps this space yet, so it can be reused at once.
                _allocator.Free(pba, got);
                throw DeviceError(e, $"write to volume '{state.Name}' at offset {(firstBlock + done) << Layout.BlockShift}");
            }
            int opBytes;
            lock (state.Lock)
            {
                if (state.Deleted || firstBlock + done + got > state.SizeBlocks)
                {
                    _allocator.Free(pba, got);
                    throw state.Deleted
                        ? new StorageException(StorageError.Closed, $"volume '{state.Name}' was deleted")
                        : new StorageException(StorageError.OutOfRange, $"volume '{state.Name}' shrank below this write");
                }
                var parent = state.Parent;
                for (int i = 0; i < got; i++)
                {
                    long block = firstBlock + done + i;
                    var old = state.Map.Set(block, BlockEntry.Mapped(pba + i, crcs[i]));
                    if (old.IsMapped) FreeIfUnshared(state, parent, block, old);
                }
                Interlocked.Add(ref _referencedBlocks, got);
                int before = state.PendingOps.Length;
                state.PendingOps.AppendMapExtent(state.LayerId, firstBlock + done, crcs[..got], pba);
                opBytes = state.PendingOps.Length - before;
            }
            NotePendingBytes(opBytes, (long)got << Layout.BlockShift);
            done += got;
        }
        Interlocked.Increment(ref Counters.WriteOps);
        Interlocked.Add(ref Counters.WriteBytes, data.Length);
    }

    /// <summary>
    /// A volume unmapped or replaced a block's entry: the block is free unless the volume's parent (its newest
    /// snapshot, or its origin) still maps it. Nothing else can: versions share a block only along their lineage, and
    /// every version between the parent and the volume is the parent itself. Caller holds the volume's lock.
    /// </summary>
    private void FreeIfUnshared(VolumeState state, SnapshotState? parent, long block, BlockEntry old)
    {
        if (parent is not null && parent.Map.Get(block).PbaPlusOne == old.PbaPlusOne) return;
        state.PendingFrees.Add(old.Pba);
        Interlocked.Decrement(ref _referencedBlocks);
    }

    /// <summary>Reads whole blocks, verifying each mapped block's checksum; unmapped blocks read as zeros.</summary>
    internal void ReadBlocks(MapOwner state, long firstBlock, Span<byte> destination)
    {
        int blocks = destination.Length >> Layout.BlockShift;
        long epoch = _epochs.Enter();
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
            Span<uint> actual = stackalloc uint[64];
            int i = 0;
            while (i < blocks)
            {
                if (!entries[i].IsMapped)
                {
                    int j = i + 1;
                    while (j < blocks && !entries[j].IsMapped) j++;
                    destination.Slice(i << Layout.BlockShift, (j - i) << Layout.BlockShift).Clear();
                    i = j;
                    continue;
                }
                // One device read per physically contiguous run.
                int k = i + 1;
                while (k < blocks && entries[k].IsMapped && entries[k].Pba == entries[k - 1].Pba + 1) k++;
                var run = destination.Slice(i << Layout.BlockShift, (k - i) << Layout.BlockShift);
                try
                {
                    _data.Read(entries[i].Pba << Layout.BlockShift, run);
                }
                catch (IOException e)
                {
                    throw DeviceError(e, $"read of '{state.DisplayName}' at offset {(firstBlock + i) << Layout.BlockShift}");
                }
                for (int b = i; b < k; b += actual.Length)
                {
                    int n = Math.Min(actual.Length, k - b);
                    Crc32C.ComputeBlocks(run.Slice((b - i) << Layout.BlockShift, n << Layout.BlockShift), Layout.BlockBytes, actual[..n]);
                    for (int j = 0; j < n; j++)
                    {
                        if (actual[j] != entries[b + j].Crc)
                            throw ChecksumError(state, firstBlock + b + j, entries[b + j].Pba);
                    }
                }
                i = k;
            }
        }
        finally
        {
            _epochs.Exit(epoch);
            if (rented is not null) ArrayPool<BlockEntry>.Shared.Return(rented);
        }
        Interlocked.Increment(ref Counters.ReadOps);
        Interlocked.Add(ref Counters.ReadBytes, destination.Length);
    }

    /// <summary>Unmaps whole blocks [firstBlock, firstBlock+count).</summary>
    internal void UnmapBlocks(VolumeState state, long firstBlock, long count)
    {
        ThrowIfFailed();
        if (count <= 0) return;
        int opBytes;
        lock (state.Lock)
        {
            if (state.Deleted) throw new StorageException(StorageError.Closed, $"volume '{state.Name}' was deleted");
            long end = firstBlock + count;
            var parent = state.Parent;
            bool any = false;
            state.Map.UnmapRange(firstBlock, end, (b, old) =>
            {
                FreeIfUnshared(state, parent, b, old);
                any = true;
            });
            if (!any) return; // already reads as zeros: nothing to journal
            int before = state.PendingOps.Length;
            AppendUnmapOps(state, parent, firstBlock, end);
            opBytes = state.PendingOps.Length - before;
        }
        NotePendingBytes(opBytes, 0);
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
    internal void ZeroRange(VolumeState state, long offset, long length)
    {
        if (length <= 0) return;
        long end = offset + length;
        long firstWhole = (offset + Layout.BlockBytes - 1) >> Layout.BlockShift;
        long endWhole = end >> Layout.BlockShift;
        if (firstWhole >= endWhole)
        {
            // Inside one block, or straddling two without covering either.
            ZeroPartial(state, offset, end);
            return;
        }
        ZeroPartial(state, offset, firstWhole << Layout.BlockShift);
        UnmapBlocks(state, firstWhole, endWhole - firstWhole);
        ZeroPartial(state, endWhole << Layout.BlockShift, end);
    }

    private void ZeroPartial(VolumeState state, long offset, long end)
    {
        Span<byte> zeros = stackalloc byte[Layout.BlockBytes];
        zeros.Clear();
        while (offset < end)
        {
            long block = offset >> Layout.BlockShift;
            long blockEnd = Math.Min(end, (block + 1) << Layout.BlockShift);
            bool mapped;
            lock (state.Lock) mapped = state.Map.Get(block).IsMapped;
            if (mapped)
            {
                ReadModifyWrite(state, offset, zeros[..(int)(blockEnd - offset)]);
            }
            offset = blockEnd;
        }
    }

    /// <summary>Writes part of one block: reads it (verified), patches it, writes it to new space.</summary>
    internal void ReadModifyWrite(VolumeState state, long offset, ReadOnlySpan<byte> source)
    {
        long block = offset >> Layout.BlockShift;
        int inner = (int)(offset & (Layout.BlockBytes - 1));
        Span<byte> buffer = stackalloc byte[Layout.BlockBytes];
        // Two sector writes into one block must not both read the old block: serialise them per stripe.
        lock (state.RmwLocks[(int)(block % Layout.RmwLockStripes)])
        {
            ReadBlocks(state, block, buffer);
            source.CopyTo(buffer[inner..]);
            WriteBlocks(state, block, buffer);
        }
    }

    // Takes up to `want` contiguous blocks from the volume's region, refilling it from the allocator near its end.
    private long Allocate(VolumeState state, int want, out int got)
    {
        lock (state.RegionLock)
        {
            if (state.RegionNext >= state.RegionEnd)
                RefillRegion(state, want);
            got = (int)Math.Min(want, state.RegionEnd - state.RegionNext);
            long pba = state.RegionNext;
            state.RegionNext += got;
            return pba;
        }
    }

    private void RefillRegion(VolumeState state, int want)
    {
        long wantBlocks = Math.Max(want, Layout.RegionBlocks);
        for (int attempt = 0; ; attempt++)
        {
            // Data never takes the file system's last bytes: they are the metadata's (see SpaceReserve).
            if (!_reserve.DataMayTake(wantBlocks << Layout.BlockShift))
            {
                if (attempt >= 3)
                    throw new StorageException(StorageError.NoSpace,
                        $"no space left for volume '{state.Name}': the file system holding the store is full (the last {_reserve.Bytes >> 20} MiB are kept for metadata); delete volumes or snapshots, trim, or grow the file system");
                // Freed blocks come back (and are punched) once their commit is durable: commit and look again.
                if (Volatile.Read(ref _failure) is null) CommitNow();
                Thread.Sleep(attempt * 5);
                continue;
            }
            // Grow the file rather than scatter data while free space is scarce; reuse holes once it is plentiful.
            if (!_allocator.HasExtentOf(wantBlocks) && _allocator.FreeBlocks < Math.Max(_allocator.TotalBlocks / 8, wantBlocks))
                TryGrow(wantBlocks);
            if (_allocator.TryAllocate(state.RegionEnd, wantBlocks, out long start, out long length))
            {
                state.RegionNext = start;
                state.RegionEnd = start + length;
                return;
            }
            if (!TryGrow(wantBlocks))
            {
                // Other volumes may hold unused reservations: take them back before giving up.
                if (attempt == 0 && ReclaimRegions(except: state)) continue;
                // Space may be waiting for a commit (overwritten blocks) or for readers to drain: commit and retry.
                if (attempt >= 3)
                    throw new StorageException(StorageError.NoSpace, $"no space left for volume '{state.Name}': the data disk is full or the store reached its size limit");
                if (Volatile.Read(ref _failure) is null) CommitNow();
                Thread.Sleep(attempt * 5);
            }
        }
    }

    /// <summary>Returns every other volume's unused region to the allocator; true when anything came back.</summary>
    private bool ReclaimRegions(VolumeState except)
    {
        List<VolumeState> volumes;
        lock (_catalogLock) volumes = [.. _byId.Values];
        bool any = false;
        foreach (var v in volumes)
        {
            // TryEnter: two volumes reclaiming from each other at once must not deadlock; a busy one keeps its region.
            if (v == except || !Monitor.TryEnter(v.RegionLock)) continue;
            try
            {
                if (v.RegionEnd > v.RegionNext)
                {
                    _allocator.Free(v.RegionNext, v.RegionEnd - v.RegionNext);
                    any = true;
                }
                v.RegionNext = v.RegionEnd = 0;
            }
            finally
            {
                Monitor.Exit(v.RegionLock);
            }
        }
        return any;
    }

    /// <summary>Blocks reserved by volumes' regions and not yet written (free space in all but name).</summary>
    private long ReservedRegionBlocks()
    {
        List<VolumeState> volumes;
        lock (_catalogLock) volumes = [.. _byId.Values];
        long reserved = 0;
        foreach (var v in volumes)
            lock (v.RegionLock) reserved += v.RegionEnd - v.RegionNext;
        return reserved;
    }

    /// <summary>Returns a volume's unused region to the allocator (its blocks were never mapped).</summary>
    private void ReleaseRegion(VolumeState state)
    {
        lock (state.RegionLock)
        {
            _allocator.Free(state.RegionNext, state.RegionEnd - state.RegionNext);
            state.RegionNext = state.RegionEnd = 0;
        }
    }

    private bool TryGrow(long minBlocks)
    {
        lock (_growLock)
        {
            long current = _data.Length;
            long limit = Math.Min(_options.DataBytesMax, long.MaxValue / 2) & ~(long)(Layout.BlockBytes - 1);
            long step = Math.Max(_options.DataGrowthBytes, minBlocks << Layout.BlockShift);
            while (step >= Layout.BlockBytes)
            {
                long target = Math.Min(current + step, limit);
                if (target <= current) return false;
                try
                {
                    _data.Grow(target);
                    _allocator.AddCapacity(target >> Layout.BlockShift);
                    return true;
                }
                catch (IOException e) when (Errno.IsNoSpace(e))
                {
                    step /= 2; // the disk is nearly full: take what is left, in smaller steps
                }
                catch (IOException e)
                {
                    throw DeviceError(e, "growing the data file");
                }
            }
            return false;
        }
    }

    private StorageException DeviceError(IOException e, string what)
    {
        if (Errno.IsNoSpace(e))
            return new StorageException(StorageError.NoSpace, $"no space left on the data disk during {what}", e);
        Interlocked.Increment(ref Counters.IoErrors);
        _logger.LogError(e, "I/O error during {What}", what);
        return new StorageException(StorageError.IoError, $"I/O error during {what}: {e.Message}", e);
    }

    private StorageException ChecksumError(MapOwner state, long block, long pba)
    {
        Interlocked.Increment(ref Counters.ChecksumErrors);
        long offset = block << Layout.BlockShift;
        _logger.LogError("Checksum mismatch in '{Volume}' at offset {Offset} (physical block {Pba})", state.DisplayName, offset, pba);
        return new StorageException(StorageError.ChecksumMismatch, $"checksum mismatch in '{state.DisplayName}' at offset {offset} (physical block {pba})");
    }
}
