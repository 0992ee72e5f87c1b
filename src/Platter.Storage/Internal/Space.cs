using Microsoft.Extensions.Logging;
using Platter.Storage.Devices;

namespace Platter.Storage.Internal;

/// <summary>
/// Physical space of the data area: the free-extent allocator, each volume's allocation region, growth of the data
/// file, the count of referenced blocks, the quarantine of freed blocks waiting for readers to drain, and the file
/// system beneath: the metadata's reserve (<see cref="SpaceReserve"/>; data never takes the file system's last bytes)
/// and the holes punched where freed runs were, so deleting makes the host's free space grow (what overwrites free is
/// kept warm for the next writes instead, within <see cref="EngineLimits.WarmFreeBlocksMax"/>).
///
/// A freed block goes: volume (pending free) -> committer (after the record that frees it is durable) ->
/// <see cref="Quarantine"/> -> <see cref="ReleaseQuarantine"/> (once no reader of its epoch remains) -> allocator.
/// Locks: <see cref="_accountingLock"/> guards the quarantine and its moves into the allocator, so a check sees each
/// block in exactly one place; <see cref="_growLock"/> serialises growth of the data file; each
/// <see cref="Region"/> has its own small lock; the allocator has its own; the reserve has its own. None is held
/// across a commit wait, and no lock is held while holes are punched. Released blocks that hold a run worth punching go
/// through the <see cref="HolePuncher"/> (its own thread) on their way to the allocator, still counted as quarantined.
/// </summary>
internal sealed class Space : IDisposable
{
    private readonly IDataDevice _data;
    private readonly long _dataBytesMax;
    private readonly long _growthBytes;
    private readonly Allocator _allocator = new();
    private readonly Func<List<VolumeState>> _volumes;
    private readonly Func<bool> _commitForSpace;
    private readonly Func<IOException, string, StorageException> _deviceError;
    private readonly SpaceReserve _reserve;
    private readonly ILogger _logger;
    private readonly HolePuncher _puncher;

    // Serialises growth: two writers that both find the allocator short must not both extend the file.
    private readonly object _growLock = new();

    private readonly object _accountingLock = new();
    private readonly List<(long Epoch, List<long> Blocks, long WarmBlocks)> _quarantine = new();
    private long _quarantinedBlocks;

    // Distinct physical blocks referenced by any version of any volume (mapped, not yet freed).
    private long _referencedBlocks;

    // 1 once a run long enough to punch went to the allocator unpunched (warm); a writer that finds the file system full
    // punches the free space first, and clears it. See EngineLimits.WarmFreeBlocksMax.
    private int _mayHoldWarmRuns;

    // volumes: the live volumes (their regions are space in all but name). commitForSpace: commits pending operations
    // so their freed blocks can come back; false when the store has failed. failStop: a broken invariant found off the
    // committer thread (a double free while the puncher hands blocks back) fails the store.
    public Space(IDataDevice data, long dataBytesMax, long growthBytes, Func<List<VolumeState>> volumes, Func<bool> commitForSpace,
        Func<IOException, string, StorageException> deviceError, SpaceReserve reserve, ILogger logger, Action<Exception> failStop)
    {
        _puncher = new HolePuncher(PunchHoles, ReleaseToAllocator, failStop);
        _reserve = reserve;
        _logger = logger;
        _data = data;
        _dataBytesMax = dataBytesMax;
        _growthBytes = growthBytes;
        _volumes = volumes;
        _commitForSpace = commitForSpace;
        _deviceError = deviceError;
    }

    public long TotalBlocks => _allocator.TotalBlocks;

    public long ReferencedBlocks => Interlocked.Read(ref _referencedBlocks);

    /// <summary>The file system holding the store (total and available bytes), or null when it cannot be asked.</summary>
    public (long TotalBytes, long AvailableBytes)? FileSystem => _reserve.FileSystem;

    /// <summary>Bytes of the file system kept free for metadata (see <see cref="SpaceReserve"/>).</summary>
    public long MetadataReserveBytes => _reserve.Bytes;

    /// <summary>Makes the reserve file when the file system has room for it (at open and after each checkpoint).</summary>
    public void HoldReserve() => _reserve.TryHold();

    /// <summary>Drops the reserve file so a metadata commit that hit ENOSPC can retry; false when none was held.</summary>
    public bool ReleaseReserve() => _reserve.Release();

    /// <summary>At open: every block not in <paramref name="usedSorted"/> is free.</summary>
    public void Initialize(long totalBlocks, List<(long Start, long Length)> usedSorted, long referencedBlocks)
    {
        _allocator.Initialize(totalBlocks, usedSorted);
        _referencedBlocks = referencedBlocks;
    }

    /// <summary>
    /// Blocks free for new writes: the allocator's, what volumes reserved and have not written, and what the puncher
    /// is about to hand back (a writer that needs it waits for it rather than growing the file).
    /// </summary>
    public long FreeBlocks() => _allocator.FreeBlocks + ReservedRegionBlocks() + _puncher.QueuedBlocks;

    /// <summary>
    /// <paramref name="state"/> mapped <paramref name="blocks"/> newly allocated blocks in its pending operations.
    /// Caller holds the volume's lock (the count is gathered with those operations).
    /// </summary>
    public void NoteMapped(VolumeState state, int blocks)
    {
        state.PendingMappedBlocks += blocks;
        long referenced = Interlocked.Add(ref _referencedBlocks, blocks);
        Invariant.Check(referenced <= _allocator.TotalBlocks, $"{referenced} blocks referenced in a data area of {_allocator.TotalBlocks}");
    }

    /// <summary>Blocks no version references any more (they are on their way to the quarantine).</summary>
    public void NoteUnreferenced(long blocks)
    {
        long referenced = Interlocked.Add(ref _referencedBlocks, -blocks);
        Invariant.Check(referenced >= 0, $"more blocks freed than were referenced ({referenced})");
    }

    /// <summary>Gives back space allocated but never mapped (a failed or refused write): reusable at once.</summary>
    public void FreeUnmapped(long pba, int blocks) => _allocator.Free(pba, blocks);

    /// <summary>
    /// Takes up to <paramref name="want"/> contiguous blocks for the volume's write at <paramref name="logicalBlock"/>
    /// from its region, refilling the region from the allocator (growing the file, or committing so freed space returns)
    /// when it is empty.
    ///
    /// A small write (fewer than <see cref="EngineLimits.PunchRunBlocksMin"/> blocks) that does not continue the
    /// volume's previous write takes a short free run first: a run that short is never punched, so it is space an
    /// overwrite freed and the file system still holds. New space from the region is a hole in the sparse data file, and
    /// the flush after a write into a hole also writes the file system's metadata (the block allocation): on ext4 that
    /// made a 4 KiB write + flush 3-4x slower than one into written space (docs/PERFORMANCE.md, issue 15), while
    /// nbdkit and qemu-nbd overwrite in place. Random small writes gain nothing from the region's contiguity (their
    /// neighbours in the volume are elsewhere anyway), and filling short holes keeps the long ones for large writes;
    /// small writes in sequence keep using the region, so a volume written 4 KiB at a time still reads back contiguously.
    /// Only while the volume's commit round is small, though (<see cref="EngineLimits.ShortRunPendingWritesMax"/>): many
    /// small writes synced together are cheaper as one contiguous run than scattered over freed blocks.
    /// </summary>
    public long Allocate(VolumeState state, long logicalBlock, int want, out int got)
    {
        var region = state.Region;
        bool continues = region.NextLogical == logicalBlock;
        // A hint read without the volume's lock: a racing append only moves the choice between two valid placements.
        bool roundIsBusy = state.PendingOps.Length > EngineLimits.ShortRunPendingWritesMax * OpLog.MapExtentBytes(1);
        if (continues || roundIsBusy || want >= EngineLimits.PunchRunBlocksMin
            || !_allocator.TryAllocateShort(want, EngineLimits.PunchRunBlocksMin, out long pba))
        {
            if (!region.TryTake(want, out pba, out got)) pba = RefillAndTake(state, want, out got);
        }
        else
        {
            got = want;
        }
        region.NextLogical = logicalBlock + got;
        return pba;
    }

    private long RefillAndTake(VolumeState state, int want, out int got)
    {
        long wantBlocks = Math.Max(want, EngineLimits.RegionBlocks);
        bool waitedForPunches = false;
        for (int attempt = 0; ; attempt++)
        {
            // Data never takes the file system's last bytes: they are the metadata's (see SpaceReserve).
            if (!_reserve.DataMayTake(wantBlocks << EngineLimits.BlockShift))
            {
                // Free runs kept warm hold file-system space a write into them would not need: give it back, look again.
                if (PunchWarmRuns())
                {
                    attempt--;
                    continue;
                }
                if (attempt >= 3)
                    throw new StorageException(StorageError.NoSpace,
                        $"no space left for volume '{state.Name}': the file system holding the store is full (the last {_reserve.Bytes >> 20} MiB are kept for metadata); delete volumes or snapshots, trim, or grow the file system");
                // Freed blocks come back (and are punched) once their commit is durable: commit and look again.
                CommitAndWaitForFreedSpace();
                Thread.Sleep(attempt * 5);
                continue;
            }
            // Grow the file rather than scatter data while free space is scarce; reuse holes once it is plentiful.
            if (!_allocator.HasExtentOf(wantBlocks) && _allocator.FreeBlocks < Math.Max(_allocator.TotalBlocks / 8, wantBlocks))
            {
                // Freed space on its way back from the puncher (a delete a moment ago) comes first: growing the file
                // now would take disk the punch is about to return. The wait is a writer's, bounded, and rare.
                // Once per allocation, and it does not count as an attempt.
                if (!waitedForPunches && _puncher.QueuedBlocks > 0)
                {
                    waitedForPunches = true;
                    if (_puncher.WaitIdle(EngineLimits.PunchWaitMax))
                    {
                        attempt--;
                        continue;
                    }
                }
                TryGrow(wantBlocks);
            }
            if (_allocator.TryAllocate(state.Region.End, wantBlocks, out long start, out long length))
            {
                // No lock is held while the allocator is searched: a concurrent writer of the same volume may have
                // refilled the region meanwhile, and then the spare extent goes straight back.
                long pba = state.Region.Install(start, length, want, out got, out var spare);
                if (spare.Length > 0) _allocator.Free(spare.Start, spare.Length);
                return pba;
            }
            if (!TryGrow(wantBlocks))
            {
                // Other volumes may hold unused reservations: take them back before giving up.
                if (attempt == 0 && ReclaimRegions(except: state)) continue;
                // Space may be waiting for a commit (overwritten blocks) or for readers to drain: commit and retry.
                // This waits on the writer's own thread and holds no lock: usage queries and other writers go on.
                if (attempt >= 3)
                    throw new StorageException(StorageError.NoSpace, $"no space left for volume '{state.Name}': the data disk is full or the store reached its size limit");
                CommitAndWaitForFreedSpace();
                if (attempt > 0) Thread.Sleep(attempt * 5); // readers of an old epoch may still hold the space
            }
        }
    }

    // The commit hands what it freed to the allocator, or to the puncher when it holds long runs: wait for those too
    // (bounded: a file system that stalls on punching must not hang a writer; it then retries and may see ENOSPC).
    private void CommitAndWaitForFreedSpace()
    {
        if (_commitForSpace()) _puncher.WaitIdle(EngineLimits.PunchWaitMax);
    }

    /// <summary>Returns every other volume's unused region to the allocator; true when anything came back.</summary>
    private bool ReclaimRegions(VolumeState except)
    {
        var (rs, rl) = RelocationRegion.TakeUnused();
        if (rl > 0) _allocator.Free(rs, rl);
        bool any = rl > 0;
        foreach (var v in _volumes())
        {
            if (v == except) continue;
            var (start, length) = v.Region.TakeUnused();
            if (length > 0)
            {
                _allocator.Free(start, length);
                any = true;
            }
        }
        return any;
    }

    /// <summary>Returns a deleted volume's unused region to the allocator (its blocks were never mapped).</summary>
    public void ReleaseRegion(VolumeState state)
    {
        var (start, length) = state.Region.TakeUnused();
        _allocator.Free(start, length);
    }

    private long ReservedRegionBlocks()
    {
        long reserved = RelocationRegion.Unused;
        foreach (var v in _volumes()) reserved += v.Region.Unused;
        return reserved;
    }

    /// <summary>The relocator's own region: the contiguous space it moves scattered data into (see <see cref="Relocator"/>).</summary>
    public Region RelocationRegion { get; } = new();

    /// <summary>
    /// Takes up to <paramref name="want"/> contiguous blocks for the relocator, from its region, refilled from a free
    /// extent of at least <paramref name="wholeBlocks"/> (a whole chunk), else of at least <paramref name="minBlocks"/>,
    /// else by growing the data file while it holds at most <see cref="EngineLimits.RelocateFileReferencedMax"/> times the
    /// referenced blocks (relocation trades some space for contiguity, never without bound). Short extents come before growth: after random overwrites the free space
    /// is short runs, and using them keeps the file from growing (decision 0011). A region left shorter than
    /// <paramref name="minBlocks"/> and than <paramref name="want"/> goes back to the allocator first, so each piece
    /// the relocator gets is at least that long or finishes its chunk. Returns -1 when none of these holds: the
    /// relocator then waits. Never waits for a commit and never takes the metadata's reserve.
    /// </summary>
    public long AllocateForRelocation(int want, int wholeBlocks, int minBlocks, out int got)
    {
        var region = RelocationRegion;
        long unused = region.Unused;
        if (unused > 0 && unused < Math.Min(want, minBlocks))
        {
            var (rs, rl) = region.TakeUnused();
            if (rl > 0) _allocator.Free(rs, rl);
        }
        if (region.TryTake(want, out long pba, out got)) return pba;
        long wantBlocks = Math.Max(want, EngineLimits.RegionBlocks);
        if (!_reserve.DataMayTake(wantBlocks << EngineLimits.BlockShift)) return -1;
        if (!_allocator.TryAllocateAtLeast(region.End, wantBlocks, Math.Min(wholeBlocks, want), out long start, out long length)
            && !_allocator.TryAllocateAtLeast(region.End, wantBlocks, Math.Min(minBlocks, want), out start, out length))
        {
            if (_allocator.TotalBlocks + wantBlocks > EngineLimits.RelocateFileReferencedMax * ReferencedBlocks + EngineLimits.RegionBlocks) return -1;
            if (!TryGrow(wantBlocks)) return -1;
            if (!_allocator.TryAllocateAtLeast(region.End, wantBlocks, Math.Min(minBlocks, want), out start, out length)) return -1;
        }
        pba = region.Install(start, length, want, out got, out var spare);
        if (spare.Length > 0) _allocator.Free(spare.Start, spare.Length);
        return pba;
    }

    private bool TryGrow(long minBlocks)
    {
        // Held across fallocate: growth is rare (every DataGrowthBytes) and two at once would both extend the file.
        // Only writers that found no free space take this lock; usage queries and reads never do.
        lock (_growLock)
        {
            long current = _data.Length;
            long limit = Math.Min(_dataBytesMax, long.MaxValue / 2) & ~(long)(EngineLimits.BlockBytes - 1);
            long step = Math.Max(_growthBytes, minBlocks << EngineLimits.BlockShift);
            while (step >= EngineLimits.BlockBytes)
            {
                long target = Math.Min(current + step, limit);
                if (target <= current) return false;
                try
                {
                    _data.Grow(target);
                    _allocator.AddCapacity(target >> EngineLimits.BlockShift);
                    return true;
                }
                catch (IOException e) when (Errno.IsNoSpace(e))
                {
                    step /= 2; // the disk is nearly full: take what is left, in smaller steps
                }
                catch (IOException e)
                {
                    throw _deviceError(e, "growing the data file");
                }
            }
            return false;
        }
    }

    /// <summary>
    /// Holds blocks freed by a durable commit until readers of <paramref name="epoch"/> and older have left.
    /// <paramref name="writtenBlocks"/>: the data the same round wrote to new space; up to that much of the frees may go
    /// back to the allocator unpunched, for the next writes (see <see cref="EngineLimits.WarmFreeBlocksMax"/>).
    /// </summary>
    public void Quarantine(long epoch, List<long> frees, long writtenBlocks)
    {
        if (frees.Count == 0) return;
        lock (_accountingLock)
        {
            _quarantine.Add((epoch, frees, writtenBlocks));
            _quarantinedBlocks += frees.Count;
        }
    }

    /// <summary>
    /// Hands quarantined blocks of epochs up to <paramref name="drainedEpoch"/> back to the allocator, their disk space
    /// back to the file system first: batches with runs worth punching go to the <see cref="HolePuncher"/>, which
    /// releases them once punched (so no new write can be in them before the punch lands); the rest are released at
    /// once. Only the committer thread calls this.
    /// </summary>
    public void ReleaseQuarantine(long drainedEpoch)
    {
        List<(long Epoch, List<long> Blocks, long WarmBlocks)> ready;
        lock (_accountingLock)
        {
            int n = 0;
            while (n < _quarantine.Count && _quarantine[n].Epoch <= drainedEpoch) n++;
            if (n == 0) return;
            ready = _quarantine.GetRange(0, n);
            _quarantine.RemoveRange(0, n); // still counted in _quarantinedBlocks until ReleaseToAllocator
        }
        foreach (var (_, blocks, warmBlocks) in ready)
        {
            blocks.Sort();
            if (!HasPunchableRun(blocks)) ReleaseToAllocator(blocks);
            else if (MayStayWarm(blocks.Count, warmBlocks))
            {
                // Space an overwrite freed, that the next writes take again: punching it would only make them allocate
                // file-system blocks and page-cache pages anew (EngineLimits.WarmFreeBlocksMax).
                Volatile.Write(ref _mayHoldWarmRuns, 1);
                ReleaseToAllocator(blocks);
            }
            else if (!_puncher.TryEnqueue(blocks))
            {
                // The queue is at its limit: punch here, as a back-pressure on the commits that free so much.
                PunchHoles(blocks);
                ReleaseToAllocator(blocks);
            }
        }
    }

    private void ReleaseToAllocator(List<long> blocks)
    {
        lock (_accountingLock)
        {
            _allocator.FreeBlocksBulk(blocks);
            _quarantinedBlocks -= blocks.Count;
        }
    }

    // Warm when the round that freed the batch wrote at least as much (an overwrite, not a delete or a trim), free space
    // stays within the warm bound, and the file system keeps room beyond the metadata's reserve and that bound (so warm
    // space never brings a writer to the full-disk path; if the disk fills anyway, PunchWarmRuns gives it back).
    private bool MayStayWarm(long blocks, long writtenBlocks)
    {
        if (blocks > writtenBlocks || _allocator.FreeBlocks + blocks > EngineLimits.WarmFreeBlocksMax) return false;
        return FileSystem is not { } fs || fs.AvailableBytes >= _reserve.Bytes + (EngineLimits.WarmFreeBlocksMax << EngineLimits.BlockShift);
    }

    /// <summary>
    /// The file system is too full for a new region: gives the allocator's free runs back to it (punches them), in case
    /// some were kept warm. They leave the allocator for the punch (counted as quarantined, as on the puncher's way), so
    /// no write can land in them meanwhile. True when anything was punched. Called by writers, with no lock held.
    /// </summary>
    private bool PunchWarmRuns()
    {
        if (Interlocked.Exchange(ref _mayHoldWarmRuns, 0) == 0) return false;
        List<(long Start, long Length)> runs;
        long total = 0;
        lock (_accountingLock)
        {
            runs = _allocator.TakeAll();
            foreach (var (_, length) in runs) total += length;
            _quarantinedBlocks += total;
        }
        try
        {
            foreach (var (start, length) in runs)
                if (length >= EngineLimits.PunchRunBlocksMin)
                    _data.PunchHole(start << EngineLimits.BlockShift, length << EngineLimits.BlockShift);
        }
        catch (IOException e)
        {
            _logger.LogWarning("Cannot return free space to the file system: {Error}", e.Message);
        }
        finally
        {
            lock (_accountingLock)
            {
                foreach (var (start, length) in runs) _allocator.Free(start, length);
                _quarantinedBlocks -= total;
            }
        }
        return total > 0;
    }

    private static bool HasPunchableRun(List<long> sortedBlocks)
    {
        int run = 1;
        for (int i = 1; i < sortedBlocks.Count && run < EngineLimits.PunchRunBlocksMin; i++)
            run = sortedBlocks[i] == sortedBlocks[i - 1] + 1 ? run + 1 : 1;
        return sortedBlocks.Count > 0 && run >= EngineLimits.PunchRunBlocksMin;
    }

    // One fallocate(PUNCH_HOLE) per run of adjacent blocks at least PunchRunBlocksMin long (deleted volumes and
    // snapshots, large trims); shorter runs stay allocated as free blocks. A failure costs only the space.
    private void PunchHoles(List<long> blocks)
    {
        blocks.Sort();
        try
        {
            for (int i = 0; i < blocks.Count; )
            {
                int j = i + 1;
                while (j < blocks.Count && blocks[j] == blocks[j - 1] + 1) j++;
                if (j - i >= EngineLimits.PunchRunBlocksMin)
                    _data.PunchHole(blocks[i] << EngineLimits.BlockShift, (long)(j - i) << EngineLimits.BlockShift);
                i = j;
            }
        }
        catch (IOException e)
        {
            _logger.LogWarning("Cannot return freed space to the file system: {Error}", e.Message);
        }
    }

    /// <summary>Blocks waiting for (or in) a hole punch before they return to the allocator.</summary>
    public long PunchQueuedBlocks => _puncher.QueuedBlocks;

    /// <summary>Punches what is queued and stops the puncher: after the committer's last round, before the data file closes.</summary>
    public void Dispose() => _puncher.Dispose();

    public bool HasQuarantine
    {
        get { lock (_accountingLock) return _quarantine.Count > 0; }
    }

    /// <summary>For the check: free extents, quarantined and reserved blocks, taken so each block is in one place.</summary>
    public (List<(long Start, long Length)> Free, long Quarantined, long Reserved) AccountingSnapshot()
    {
        var volumes = _volumes(); // the catalog's lock comes before this one: take it first
        lock (_accountingLock)
        {
            long reserved = RelocationRegion.Unused;
            foreach (var v in volumes) reserved += v.Region.Unused;
            return (_allocator.Snapshot(), _quarantinedBlocks, reserved);
        }
    }
}

/// <summary>
/// A volume's allocation region: space reserved for its next writes, so consecutive writes land contiguously.
/// Only <see cref="Space"/> uses it; its lock is held for a few instructions, never across I/O or a wait.
/// </summary>
internal sealed class Region
{
    private readonly object _lock = new();
    private long _next;
    private long _end;
    private long _nextLogical = -1;

    /// <summary>
    /// The volume block after the volume's last allocation: a write there continues it (sequential). A placement hint,
    /// read and written without the lock: concurrent writers of one volume may race on it, which costs only placement.
    /// </summary>
    public long NextLogical
    {
        get => Volatile.Read(ref _nextLogical);
        set => Volatile.Write(ref _nextLogical, value);
    }

    /// <summary>Where the region ends (a hint: the allocator prefers the extent that starts there).</summary>
    public long End
    {
        get { lock (_lock) return _end; }
    }

    /// <summary>Reserved blocks not yet written.</summary>
    public long Unused
    {
        get { lock (_lock) return _end - _next; }
    }

    public bool TryTake(int want, out long pba, out int got)
    {
        lock (_lock)
        {
            pba = _next;
            got = (int)Math.Min(want, _end - _next);
            _next += got;
            return got > 0;
        }
    }

    /// <summary>
    /// Makes [start, start+length) the region and takes from it; when a concurrent refill got there first, takes from
    /// that one and returns the new extent as <paramref name="spare"/> (for the allocator).
    /// </summary>
    public long Install(long start, long length, int want, out int got, out (long Start, long Length) spare)
    {
        lock (_lock)
        {
            spare = default;
            if (_end > _next) spare = (start, length);
            else (_next, _end) = (start, start + length);
            long pba = _next;
            got = (int)Math.Min(want, _end - _next);
            _next += got;
            return pba;
        }
    }

    /// <summary>Empties the region and returns what it held unused.</summary>
    public (long Start, long Length) TakeUnused()
    {
        lock (_lock)
        {
            var unused = (_next, _end - _next);
            _next = _end = 0;
            return unused;
        }
    }
}
