namespace Platter.Storage.Internal;

/// <summary>
/// Free space of the data device as an ordered map of extents (by start) with a second index by
/// (length, start) for best-fit. Units are blocks. Thread-safe (one lock; callers take space in regions of
/// <see cref="EngineLimits.RegionBlocks"/>, so the lock is taken about once per 4 MiB written).
/// Space becomes free here only when no durable metadata and no in-flight read references it: the store
/// quarantines freed blocks until their journal record is durable and older readers have finished.
/// </summary>
internal sealed class Allocator
{
    private readonly object _lock = new();
    private readonly SortedSet<(long Start, long Length)> _byStart = new(Comparer<(long Start, long Length)>.Create((a, b) => a.Start.CompareTo(b.Start)));
    private readonly SortedSet<(long Length, long Start)> _byLength = new();
    private long _freeBlocks;

    /// <summary>Total blocks the device holds (free or not).</summary>
    public long TotalBlocks { get; private set; }

    public long FreeBlocks
    {
        get { lock (_lock) return _freeBlocks; }
    }

    /// <summary>Adds the device space past the old total, up to <paramref name="newTotalBlocks"/>, after the device grew.</summary>
    public void AddCapacity(long newTotalBlocks)
    {
        lock (_lock)
        {
            if (newTotalBlocks <= TotalBlocks) return;
            long start = TotalBlocks;
            TotalBlocks = newTotalBlocks;
            FreeLocked(start, newTotalBlocks - start);
        }
    }

    /// <summary>Initialises from the set of used runs (sorted by start, non-overlapping) on a device of <paramref name="totalBlocks"/>.</summary>
    public void Initialize(long totalBlocks, IEnumerable<(long Start, long Length)> usedSorted)
    {
        lock (_lock)
        {
            _byStart.Clear();
            _byLength.Clear();
            _freeBlocks = 0;
            TotalBlocks = totalBlocks;
            long cursor = 0;
            foreach (var (start, length) in usedSorted)
            {
                if (start > cursor) InsertLocked(cursor, start - cursor);
                cursor = Math.Max(cursor, start + length);
            }
            if (cursor < totalBlocks) InsertLocked(cursor, totalBlocks - cursor);
        }
    }

    /// <summary>
    /// Takes up to <paramref name="wantBlocks"/> contiguous blocks, preferring the extent that starts at
    /// <paramref name="hint"/> (right after the caller's previous region), then the smallest extent that fits,
    /// then the largest there is. Returns false when nothing is free.
    /// </summary>
    public bool TryAllocate(long hint, long wantBlocks, out long start, out long length) =>
        TryAllocateAtLeast(hint, wantBlocks, minBlocks: 1, out start, out length);

    /// <summary>
    /// Like <see cref="TryAllocate"/>, but takes no extent shorter than <paramref name="minBlocks"/> (the one at
    /// <paramref name="hint"/> included): the relocator wants contiguous space or none, since moving scattered data into
    /// scattered holes would gain nothing. Returns false when no such extent is free.
    /// </summary>
    public bool TryAllocateAtLeast(long hint, long wantBlocks, long minBlocks, out long start, out long length)
    {
        lock (_lock)
        {
            start = length = 0;
            if (_byLength.Count == 0 || _byLength.Max.Length < minBlocks) return false;
            var atHint = hint >= 0 ? Ceiling(hint) : default;
            (long Start, long Length) chosen;
            if (atHint.Length >= minBlocks && atHint.Start == hint) chosen = atHint;
            else
            {
                var best = _byLength.GetViewBetween((wantBlocks, long.MinValue), (long.MaxValue, long.MaxValue)).Min;
                if (best.Length < wantBlocks) best = _byLength.Max;
                chosen = (best.Start, best.Length);
            }
            Invariant.Check(chosen.Start >= 0 && chosen.Start + chosen.Length <= TotalBlocks,
                $"free extent [{chosen.Start}, {chosen.Start + chosen.Length}) outside the device ({TotalBlocks} blocks)");
            RemoveLocked(chosen.Start, chosen.Length);
            start = chosen.Start;
            length = Math.Min(wantBlocks, chosen.Length);
            if (length < chosen.Length) InsertLocked(start + length, chosen.Length - length);
            return true;
        }
    }

    /// <summary>
    /// Takes <paramref name="wantBlocks"/> blocks from the smallest free extent that holds them and is shorter than
    /// <paramref name="shorterThan"/> blocks (the short runs overwrites leave behind, which the file system still holds:
    /// see <see cref="Space.Allocate"/>). Returns false when there is none; never splits the request.
    /// </summary>
    public bool TryAllocateShort(long wantBlocks, long shorterThan, out long start)
    {
        start = 0;
        if (wantBlocks >= shorterThan) return false;
        lock (_lock)
        {
            if (_byLength.Count == 0) return false;
            var fit = _byLength.Min;
            if (fit.Length >= shorterThan) return false;
            // A one-block write (most small writes) takes the smallest extent without building a view (an allocation).
            if (fit.Length < wantBlocks) fit = _byLength.GetViewBetween((wantBlocks, long.MinValue), (shorterThan - 1, long.MaxValue)).Min;
            if (fit.Length < wantBlocks) return false; // an empty view answers default
            RemoveLocked(fit.Start, fit.Length);
            if (fit.Length > wantBlocks) InsertLocked(fit.Start + wantBlocks, fit.Length - wantBlocks);
            start = fit.Start;
            return true;
        }
    }

    /// <summary>Whether an extent of at least <paramref name="blocks"/> is free.</summary>
    public bool HasExtentOf(long blocks)
    {
        lock (_lock) return _byLength.Count > 0 && _byLength.Max.Length >= blocks;
    }

    /// <summary>Returns space, merging it with free neighbours.</summary>
    public void Free(long start, long length)
    {
        if (length <= 0) return;
        lock (_lock) FreeLocked(start, length);
    }

    /// <summary>Returns many single blocks (sorted first so neighbours merge).</summary>
    public void FreeBlocksBulk(List<long> blocks)
    {
        if (blocks.Count == 0) return;
        blocks.Sort();
        lock (_lock)
        {
            int i = 0;
            while (i < blocks.Count)
            {
                long start = blocks[i];
                int j = i + 1;
                while (j < blocks.Count && blocks[j] == blocks[j - 1] + 1) j++;
                FreeLocked(start, j - i);
                i = j;
            }
        }
    }

    /// <summary>Removes and returns every free extent (in order): the caller owns them until it frees them again.</summary>
    public List<(long Start, long Length)> TakeAll()
    {
        lock (_lock)
        {
            List<(long Start, long Length)> all = [.. _byStart];
            _byStart.Clear();
            _byLength.Clear();
            _freeBlocks = 0;
            return all;
        }
    }

    /// <summary>The free extents in order (for checks and tests).</summary>
    public List<(long Start, long Length)> Snapshot()
    {
        lock (_lock) return [.. _byStart];
    }

    private void FreeLocked(long start, long length)
    {
        if (start < 0 || start + length > TotalBlocks)
            Invariant.Fail($"free of blocks [{start}, {start + length}) outside the device ({TotalBlocks} blocks)");
        var prev = Floor(start);
        if (prev.Length > 0)
        {
            if (prev.Start + prev.Length > start)
                Invariant.Fail($"double free: blocks [{start}, {start + length}) overlap free extent [{prev.Start}, {prev.Start + prev.Length})");
            if (prev.Start + prev.Length == start)
            {
                RemoveLocked(prev.Start, prev.Length);
                start = prev.Start;
                length += prev.Length;
            }
        }
        var next = Ceiling(start + 1);
        if (next.Length > 0)
        {
            if (next.Start < start + length)
                Invariant.Fail($"double free: blocks [{start}, {start + length}) overlap free extent [{next.Start}, {next.Start + next.Length})");
            if (next.Start == start + length)
            {
                RemoveLocked(next.Start, next.Length);
                length += next.Length;
            }
        }
        InsertLocked(start, length);
    }

    // Never read Count on a SortedSet view: it walks the whole view (O(n)). Min and Max of a view are O(log n);
    // an empty view answers default, which no real extent equals (lengths are positive), and the bound is rechecked.

    /// <summary>The free extent with the greatest start at or before <paramref name="start"/>, or default.</summary>
    private (long Start, long Length) Floor(long start)
    {
        var e = _byStart.GetViewBetween((long.MinValue, 0), (start, 0)).Max;
        return e.Length > 0 && e.Start <= start ? e : default;
    }

    /// <summary>The free extent with the smallest start at or after <paramref name="start"/>, or default.</summary>
    private (long Start, long Length) Ceiling(long start)
    {
        var e = _byStart.GetViewBetween((start, 0), (long.MaxValue, 0)).Min;
        return e.Length > 0 && e.Start >= start ? e : default;
    }

    private void InsertLocked(long start, long length)
    {
        _byStart.Add((start, length));
        _byLength.Add((length, start));
        _freeBlocks += length;
    }

    private void RemoveLocked(long start, long length)
    {
        _byStart.Remove((start, length));
        _byLength.Remove((length, start));
        _freeBlocks -= length;
    }
}
