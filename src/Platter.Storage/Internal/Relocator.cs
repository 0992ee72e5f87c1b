using System.Diagnostics;
using Microsoft.Extensions.Logging;

namespace Platter.Storage.Internal;

/// <summary>
/// Moves scattered data back together (decision 0011). Copy-on-write sends every overwrite to new space, so a volume
/// that took random 4 KiB writes ends up with each MiB spread over hundreds of places in the data file, and a cold
/// sequential read of it becomes hundreds of small device reads. This thread walks the live volumes one MiB chunk
/// at a time (<see cref="EngineLimits.RelocateChunkBlocks"/>); a chunk whose blocks lie in more than
/// <see cref="EngineLimits.RelocateRunsMax"/> physical runs is read (checksums verified), written contiguously into
/// the relocator's own region and remapped — a write of the same bytes, journaled like any write, so a crash before
/// its commit leaves the old blocks mapped and nothing lost. Only blocks the volume alone holds move: a block its
/// parent snapshot (or clone origin) maps too stays where it is, since moving it would keep two copies. The old
/// blocks are freed through the pending frees like an overwrite's, so they return only after the commit is durable
/// and older readers have left. Once a volume's scattered blocks have moved, the space they leave is free and merges
/// with its neighbours, so random writes find long free extents again.
///
/// A remap happens only where the map still holds what was read: a client write, trim, snapshot, rollback or delete
/// in between wins, and the copy is dropped. The whole chunk is handled inside one reader epoch, so no block read can
/// be freed and handed out again before the remap compares it.
///
/// When: only while clients do not write. The thread starts a pass after <see cref="EngineLimits.RelocateQuietTime"/>
/// without a client write (<see cref="QuietGate"/>) and stops after the chunk in hand as soon as one comes: moving chunks
/// while clients write costs them I/O, and the writes scattered again what had moved (decision 0011). Budget while
/// quiet: <see cref="EngineLimits.RelocateRateBytesPerSecondDefault"/> bytes moved per second. Space: a free extent of
/// a whole chunk, else free extents of at least <see cref="EngineLimits.RelocateExtentBlocksMin"/> blocks (a chunk in
/// at most <see cref="EngineLimits.RelocateRunsMax"/> such pieces reads well and is never picked again), else growth of
/// the data file while it holds at most <see cref="EngineLimits.RelocateFileReferencedMax"/> times the referenced blocks
/// (<see cref="Space.AllocateForRelocation"/>);
/// without any of these it waits. After a pass that moved nothing, it sleeps until the next client write or commit (a
/// pass that moves nothing costs a lookup of every chunk's map entries, about a millisecond per GiB mapped). Locks: a
/// volume's lock, for one chunk's lookup (256 entries) and one chunk's remap, never across I/O; its own chunk lock, held for
/// one chunk, is contended only by the consistency check (<see cref="Pause"/>).
/// </summary>
internal sealed class Relocator : IDisposable
{
    private const int ChunkBlocks = EngineLimits.RelocateChunkBlocks;

    private readonly EngineParts _parts;
    private readonly Func<List<VolumeState>> _volumes;
    private readonly long _rate;
    private readonly ILogger _logger;
    private readonly CancellationTokenSource _stop = new();
    private readonly byte[] _buffer = new byte[ChunkBlocks << EngineLimits.BlockShift]; // one chunk: only one thread moves
    private Thread? _worker;

    // Pacing (relocator thread only).
    private long _budgetStart, _budgetBytes;

    // Held by the relocating thread for one chunk at a time, and by Pause to wait out the chunk in hand. Taken before a
    // volume's lock, never under one; contended only by a consistency check.
    private readonly object _chunkLock = new();
    private int _pauses;

    // The last pass stopped for want of space to move into (for its log line).
    private bool _lastShortOfSpace, _shortLogged;

    // Client writes counted when the current pass started (relocator thread only): a write since then stops the pass.
    private long _passWrites;

    /// <summary>Test hook: called after a chunk's copy is written and before it is remapped.</summary>
    internal Action<VolumeState, long>? BeforeRemapForTests;

    public Relocator(EngineParts parts, Func<List<VolumeState>> volumes, long rateBytesPerSecond, ILogger logger)
    {
        _parts = parts;
        _volumes = volumes;
        _rate = rateBytesPerSecond;
        _logger = logger;
    }

    /// <summary>Starts the thread, unless the budget is 0 (off: tests drive <see cref="RunPass"/> themselves).</summary>
    public void Start()
    {
        if (_rate <= 0) return;
        _worker = new Thread(Run) { IsBackground = true, Name = "platter-relocate" };
        _worker.Start();
    }

    private long ClientWrites => Interlocked.Read(ref _parts.Counters.WriteOps);

    private void Run()
    {
        // What may have made chunks scattered or movable since the last pass that found nothing to move: client
        // writes, and commits (a snapshot deleted frees the blocks it shared, which makes them movable).
        (long Writes, long Commits) tidyAt = (-1, -1);
        var quiet = new QuietGate(EngineLimits.RelocateQuietTime);
        while (!_stop.IsCancellationRequested)
        {
            var now = (ClientWrites, Interlocked.Read(ref _parts.Counters.Commits));
            if (now == tidyAt || !quiet.IsQuiet(now.Item1, Stopwatch.GetTimestamp()))
            {
                _stop.Token.WaitHandle.WaitOne(EngineLimits.RelocateIdlePoll);
                continue;
            }
            try
            {
                _passWrites = now.Item1;
                _budgetStart = Stopwatch.GetTimestamp();
                _budgetBytes = 0;
                long started = Stopwatch.GetTimestamp();
                _lastShortOfSpace = false;
                var (moved, complete) = RunPass(Pace, ClientsWrote);
                // One line per pass that moved something, and one when it first runs short of space (not every retry).
                if (moved > 0) _shortLogged = false;
                if (moved > 0 || (_lastShortOfSpace && !_shortLogged))
                    _logger.LogInformation("Relocation pass moved {Blocks} scattered blocks in {Seconds:F1} s: {Outcome}",
                        moved, Stopwatch.GetElapsedTime(started).TotalSeconds,
                        complete ? "every volume is tidy" : _lastShortOfSpace ? "no free extent of 128 KiB and no room to grow the data file; retrying as space comes free"
                        : "clients write again; resuming once they are quiet");
                _shortLogged |= _lastShortOfSpace;
                // Nothing moved: sleep until something changes (a pass that moved blocks commits, so the next pass
                // confirms the store is tidy). A pass cut short (clients wrote, no space, stopping) is retried once
                // clients are quiet again, or after the poll.
                if (complete && moved == 0) tidyAt = now;
                // Short of space with nothing moved: space comes back only as commits free it; do not reread the same
                // chunk every poll meanwhile.
                _stop.Token.WaitHandle.WaitOne(_lastShortOfSpace && moved == 0 ? EngineLimits.RelocateIdlePoll * 10 : EngineLimits.RelocateIdlePoll);
            }
            catch (StorageException e)
            {
                // The store failed or closed, or the device refused: nothing to fix here; try again later.
                if (e.Error is StorageError.Closed or StorageError.StoreFailed) return;
                _logger.LogWarning("Relocation paused: {Error}", e.Message);
                _stop.Token.WaitHandle.WaitOne(EngineLimits.RelocateIdlePoll * 10);
            }
            catch (Exception e)
            {
                // Memory may disagree with the journal: fail the store as a writer's unexpected error would.
                _parts.Committer.FailStop(e, "relocating scattered blocks");
                return;
            }
        }
    }

    // A client wrote since the pass started: the pass gives way at once (after the chunk in hand, or before its copy).
    private bool ClientsWrote() => ClientWrites != _passWrites || _stop.IsCancellationRequested;

    // Sleeps as long as the budget says after moving `bytes`; false when stopping or when clients write again.
    private bool Pace(long bytes)
    {
        if (ClientsWrote()) return false;
        if (bytes == 0) return true;
        long now = Stopwatch.GetTimestamp();
        _budgetBytes += bytes;
        double due = _budgetBytes / (double)_rate, elapsed = Stopwatch.GetElapsedTime(_budgetStart, now).TotalSeconds;
        // Sleep in short steps so a client write ends the pass without waiting out the budget.
        while (due > elapsed)
        {
            if (_stop.Token.WaitHandle.WaitOne(TimeSpan.FromSeconds(Math.Min(due - elapsed, 0.05))) || ClientsWrote()) return false;
            elapsed = Stopwatch.GetElapsedTime(_budgetStart).TotalSeconds;
        }
        if (elapsed > 2)
        {
            // Keep the window short: time spent on slow reads long ago must not buy a burst now.
            _budgetStart = Stopwatch.GetTimestamp();
            _budgetBytes = 0;
        }
        return true;
    }

    /// <summary>Test hook: one unpaced pass that gives way to client writes as the thread's passes do.</summary>
    internal (long Moved, bool Complete) RunQuietPassForTests()
    {
        _passWrites = ClientWrites;
        return RunPass(_ => !ClientsWrote(), ClientsWrote);
    }

    /// <summary>
    /// One pass over every live volume: moves each scattered chunk. <paramref name="pace"/> gets the bytes moved after
    /// each chunk (0 when it moved nothing) and returns false to stop; <paramref name="giveWay"/>, asked before a
    /// chunk's copy is written, returns true to drop the chunk and stop (clients write again). Returns the blocks moved
    /// and whether the pass went over everything (false when it stopped, or ran out of space to move into).
    /// </summary>
    internal (long Moved, bool Complete) RunPass(Func<long, bool>? pace = null, Func<bool>? giveWay = null)
    {
        long moved = 0;
        foreach (var state in _volumes())
        {
            for (long chunk = 0; ; chunk += ChunkBlocks)
            {
                if (state.Deleted || chunk >= state.SizeBlocks) break;
                _parts.Committer.ThrowIfFailed();
                int n;
                lock (_chunkLock) n = Volatile.Read(ref _pauses) > 0 ? -1 : RelocateChunk(state, chunk, giveWay);
                if (n < 0) return (moved, false);
                moved += n;
                if (n > 0) Interlocked.Add(ref _parts.Counters.RelocatedBlocks, n);
                if (pace is not null && !pace((long)n << EngineLimits.BlockShift)) return (moved, false);
                if (_stop.IsCancellationRequested) return (moved, false);
            }
        }
        return (moved, true);
    }

    /// <summary>Moves the chunk at <paramref name="firstBlock"/> when it is scattered. Returns blocks moved, or -1 when there was no space to move it into or <paramref name="giveWay"/> said to stop.</summary>
    private int RelocateChunk(VolumeState state, long firstBlock, Func<bool>? giveWay)
    {
        Span<BlockEntry> entries = stackalloc BlockEntry[ChunkBlocks];
        Span<long> logical = stackalloc long[ChunkBlocks];
        Span<BlockEntry> old = stackalloc BlockEntry[ChunkBlocks];
        Span<long> fresh = stackalloc long[ChunkBlocks];
        int count = 0;
        long epoch = _parts.Epochs.Enter();
        int opBytes = 0, movedBlocks = 0;
        List<long>? dropped = null;
        try
        {
            lock (state.Lock)
            {
                if (state.Deleted) return 0;
                int n = (int)Math.Min(ChunkBlocks, state.SizeBlocks - firstBlock);
                if (n <= 0) return 0;
                state.Map.Get(firstBlock, entries[..n]);
                var parent = state.Parent;
                for (int i = 0; i < n; i++)
                {
                    if (!entries[i].IsMapped) continue;
                    if (parent is not null && parent.Map.Get(firstBlock + i).PbaPlusOne == entries[i].PbaPlusOne) continue;
                    logical[count] = firstBlock + i;
                    old[count] = entries[i];
                    count++;
                }
            }
            int runs = 0;
            for (int k = 0; k < count; k++)
                if (k == 0 || old[k].Pba != old[k - 1].Pba + 1) runs++;
            if (runs <= EngineLimits.RelocateRunsMax) return 0;

            // Read what moves, packed in logical order, one device read per physically contiguous run; verify it.
            for (int k = 0; k < count; )
            {
                int j = k + 1;
                while (j < count && old[j].Pba == old[j - 1].Pba + 1) j++;
                var run = _buffer.AsSpan(k << EngineLimits.BlockShift, (j - k) << EngineLimits.BlockShift);
                try
                {
                    _parts.Data.Read(old[k].Pba << EngineLimits.BlockShift, run);
                }
                catch (IOException e)
                {
                    throw _parts.DeviceError(e, $"relocation read of '{state.Name}' at offset {logical[k] << EngineLimits.BlockShift}");
                }
                int bad = BlockVerify.FirstMismatch(run, old[k..j]);
                if (bad >= 0)
                {
                    // Not ours to report twice or to repair: reads and the scrub name it. Leave the chunk as it is.
                    _logger.LogWarning("Relocation skipped '{Volume}' at offset {Offset}: checksum mismatch at physical block {Pba}",
                        state.Name, logical[k + bad] << EngineLimits.BlockShift, old[k + bad].Pba);
                    return 0;
                }
                k = j;
            }

            // Clients write again: leave the chunk as it is (nothing allocated or written yet) and give way.
            if (giveWay is not null && giveWay()) return -1;

            // New space in at most RelocateRunsMax pieces, or none: more pieces would leave the chunk as scattered as
            // it was (and the next pass would move it again).
            int placed = 0, pieces = 0;
            while (placed < count)
            {
                long pba = _parts.Space.AllocateForRelocation(count - placed, ChunkBlocks, EngineLimits.RelocateExtentBlocksMin, out int got);
                if (pba >= 0 && (placed == 0 || pba != fresh[placed - 1] + 1)) pieces++;
                if (pba < 0 || pieces > EngineLimits.RelocateRunsMax)
                {
                    if (pba >= 0) _parts.Space.FreeUnmapped(pba, got);
                    for (int k = 0; k < placed; k++) _parts.Space.FreeUnmapped(fresh[k], 1);
                    _lastShortOfSpace = true;
                    return -1;
                }
                for (int i = 0; i < got; i++) fresh[placed + i] = pba + i;
                placed += got;
            }
            try
            {
                for (int k = 0; k < count; )
                {
                    int j = k + 1;
                    while (j < count && fresh[j] == fresh[j - 1] + 1) j++;
                    _parts.Data.Write(fresh[k] << EngineLimits.BlockShift, _buffer.AsSpan(k << EngineLimits.BlockShift, (j - k) << EngineLimits.BlockShift));
                    k = j;
                }
            }
            catch (IOException e)
            {
                for (int k = 0; k < count; k++) _parts.Space.FreeUnmapped(fresh[k], 1);
                throw _parts.DeviceError(e, $"relocation write of '{state.Name}'");
            }

            BeforeRemapForTests?.Invoke(state, firstBlock);

            Span<uint> crcs = stackalloc uint[ChunkBlocks];
            lock (state.Lock)
            {
                bool alive = !state.Deleted;
                long size = state.SizeBlocks;
                var parent = state.Parent;
                int ringFrom = state.PendingOps.Length;
                for (int k = 0; k < count; )
                {
                    // Still what was read, and still the volume's alone? Otherwise a write, trim, snapshot or delete came
                    // in between and wins: the copy is dropped.
                    if (!alive || logical[k] >= size || state.Map.Get(logical[k]).PbaPlusOne != old[k].PbaPlusOne
                        || (parent is not null && parent.Map.Get(logical[k]).PbaPlusOne == old[k].PbaPlusOne))
                    {
                        (dropped ??= new()).Add(fresh[k]);
                        k++;
                        continue;
                    }
                    // One extent record per run consecutive in both the volume and the new space.
                    int j = k + 1;
                    while (j < count && logical[j] == logical[j - 1] + 1 && fresh[j] == fresh[j - 1] + 1
                           && logical[j] < size && state.Map.Get(logical[j]).PbaPlusOne == old[j].PbaPlusOne
                           && (parent is null || parent.Map.Get(logical[j]).PbaPlusOne != old[j].PbaPlusOne))
                        j++;
                    try
                    {
                        // A leaf the map cache dropped is rebuilt before anything changes (decision 0019).
                        state.Map.PrepareSet(logical[k], j - k);
                    }
                    catch (StorageException)
                    {
                        // It cannot be rebuilt (damaged metadata; reads of it fail too): leave the rest where it is.
                        for (int i = k; i < count; i++) (dropped ??= new()).Add(fresh[i]);
                        break;
                    }
                    for (int i = k; i < j; i++)
                    {
                        var replaced = state.Map.Set(logical[i], BlockEntry.Mapped(fresh[i], old[i].Crc));
                        Invariant.Check(replaced.PbaPlusOne == old[i].PbaPlusOne, $"relocation of '{state.Name}' block {logical[i]} replaced an entry it did not compare");
                        crcs[i - k] = old[i].Crc;
                        state.PendingFrees.Add(old[i].Pba);
                    }
                    _parts.Space.NoteMapped(state, j - k);
                    _parts.Space.NoteUnreferenced(j - k);
                    int before = state.PendingOps.Length;
                    state.PendingOps.AppendMapExtent(state.LayerId, logical[k], crcs[..(j - k)], fresh[k]);
                    int bytes = state.PendingOps.Length - before;
                    Invariant.Check(bytes == OpLog.MapExtentBytes(j - k), "the pending log did not take the extent just relocated");
                    opBytes += bytes;
                    movedBlocks += j - k;
                    k = j;
                }
                _parts.Ring.Append(state, state.PendingOps.Span[ringFrom..]);
            }
        }
        finally
        {
            _parts.Epochs.Exit(epoch);
        }
        if (dropped is not null)
            foreach (var pba in dropped) _parts.Space.FreeUnmapped(pba, 1);
        if (opBytes > 0) _parts.Committer.NotePendingBytes(opBytes, (long)movedBlocks << EngineLimits.BlockShift);
        return movedBlocks;
    }

    /// <summary>
    /// Keeps the relocator from moving anything until the result is disposed (waits for the chunk in hand): the
    /// consistency check compares the durable maps with memory and needs both to hold still, and the relocator works
    /// exactly when clients are quiet.
    /// </summary>
    public IDisposable Pause()
    {
        Interlocked.Increment(ref _pauses);
        lock (_chunkLock) { } // the chunk in hand, if any, is finished: the next one sees the pause
        return new Resume(this);
    }

    private sealed class Resume(Relocator relocator) : IDisposable
    {
        private int _done;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _done, 1) == 0) Interlocked.Decrement(ref relocator._pauses);
        }
    }

    /// <summary>Stops the thread (waits for the chunk in hand). Safe to call twice.</summary>
    public void Dispose()
    {
        if (_stop.IsCancellationRequested) return;
        _stop.Cancel();
        _worker?.Join();
    }
}

/// <summary>
/// Whether clients have been quiet long enough for the relocator (decision 0011): quiet once the count of client
/// writes has not moved for <c>quietTime</c>. Fed the count and a <see cref="Stopwatch"/> timestamp by its one
/// caller (the relocator thread); no lock.
/// </summary>
internal sealed class QuietGate(TimeSpan quietTime)
{
    private long _writes = -1;
    private long _since;

    public bool IsQuiet(long writes, long timestamp)
    {
        if (writes != _writes)
        {
            _writes = writes;
            _since = timestamp;
            return false;
        }
        return Stopwatch.GetElapsedTime(_since, timestamp) >= quietTime;
    }
}
