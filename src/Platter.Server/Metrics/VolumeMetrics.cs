using System.Diagnostics;
using System.Runtime.CompilerServices;
using Prometheus;

namespace Platter.Server.Metrics;

/// <summary>The NBD operations counted per export; the value indexes <see cref="VolumeMetrics"/>' children.</summary>
internal enum VolumeOp
{
    Read,
    Write,
    Flush,
    Trim,
    WriteZeroes,
}

/// <summary>
/// The I/O counters of one export name (a volume, or <c>volume@snapshot</c>), resolved once so that a request costs two
/// timestamps and three plain additions into counters only the calling thread writes: no allocation, no lock, no label
/// lookup, no floating point, and no interlocked instruction. Each thread that counts for the export gets its own block
/// of counters (per operation and duration bucket, a count and a sum of Stopwatch ticks; and the byte counts); the
/// blocks are added up when /metrics is scraped (<see cref="Publish"/>) or the dashboard asks (<see cref="Totals"/>).
/// </summary>
/// <remarks>
/// <para>Why per thread: a Native AOT profile of 4 KiB reads (docs/PERFORMANCE.md) put the counting at about a third
/// of metrics' cost when it was three interlocked additions into counters that every thread of the export, on both
/// cores, wrote; per thread it costs a third less. The rest is the two timestamps. Before that the request path
/// observed into the prometheus-net histogram directly, which cost more still.</para>
/// <para>Every connection to the same export shares one instance (see <see cref="PlatterMetrics.ForVolume"/>), so the
/// numbers are the export's, not the connection's. A thread finds its block through a thread-static table indexed by
/// the instance's slot; slots are reused after <see cref="Release"/>, so an entry also names its owner.</para>
/// </remarks>
internal sealed class VolumeMetrics
{
    /// <summary>The <c>op</c> label of each <see cref="VolumeOp"/>.</summary>
    public static readonly string[] OpLabels = ["read", "write", "flush", "trim", "write_zeroes"];

    // Slots of live instances, process-wide because the thread-static table is (tests run several registries at once).
    private static readonly Lock SlotLock = new();
    private static readonly Stack<int> FreeSlots = new();
    private static int _nextSlot;

    // Each thread's blocks, indexed by slot. A thread that exits takes its table with it; its blocks stay with their
    // instances until folded into _retired.
    [ThreadStatic] private static ThreadCounters?[]? _threadTable;

    private readonly int _slot;
    private readonly DurationBuckets _buckets;
    private readonly Histogram.Child[] _duration;
    private readonly Counter.Child[] _errors;
    private readonly Counter.Child _readBytesSeries;
    private readonly Counter.Child _writtenBytesSeries;
    private readonly Counter.Child _checksumFailures;

    // Guards _threads (replaced, never changed in place, so a reader needs no lock to walk it), _retired and _sums.
    private readonly Lock _threadsLock = new();
    private ThreadCounters[] _threads = [];
    // The counts of threads that have exited, folded in so that their blocks can go.
    private readonly long[] _retired;
    // Scratch for adding up the blocks (under _threadsLock).
    private readonly long[] _sums;
    // What Publish has handed to the histograms so far, per cell (only Publish touches it; its callers serialize it).
    private readonly long[] _published;

    internal VolumeMetrics(string name, Histogram duration, double[] durationBuckets, Counter readBytes, Counter writtenBytes, Counter errors,
        Counter checksumFailures)
    {
        Name = name;
        _buckets = new DurationBuckets(durationBuckets);
        _retired = new long[_buckets.CellsPerThread];
        _sums = new long[_buckets.CellsPerThread];
        _published = new long[_buckets.CellsPerThread];
        _duration = [.. OpLabels.Select(op => duration.WithLabels(name, op))];
        _errors = [.. OpLabels.Select(op => errors.WithLabels(name, op))];
        _readBytesSeries = readBytes.WithLabels(name);
        _writtenBytesSeries = writtenBytes.WithLabels(name);
        _checksumFailures = checksumFailures.WithLabels(name);
        lock (SlotLock) _slot = FreeSlots.Count > 0 ? FreeSlots.Pop() : _nextSlot++;
    }

    /// <summary>The export name the counters are labelled with.</summary>
    public string Name { get; }

    /// <summary>Where a request's duration starts.</summary>
    public static long Start() => Stopwatch.GetTimestamp();

    /// <summary>A request that succeeded: its duration, and for reads and writes its bytes.</summary>
    public void Done(VolumeOp op, int bytes, long start)
    {
        long ticks = Stopwatch.GetTimestamp() - start;
        long[] cells = CountersOfThisThread();
        int cell = _buckets.Cell(op, ticks);
        // Only this thread writes these cells: a plain add, published with a release store (free on x64) so that a
        // scrape on another thread reads each value whole and never one older than a value it has already read.
        Volatile.Write(ref cells[cell], cells[cell] + 1);
        Volatile.Write(ref cells[cell + 1], cells[cell + 1] + ticks);
        if (op == VolumeOp.Read) Volatile.Write(ref cells[_buckets.ReadBytesCell], cells[_buckets.ReadBytesCell] + bytes);
        else if (op == VolumeOp.Write) Volatile.Write(ref cells[_buckets.WrittenBytesCell], cells[_buckets.WrittenBytesCell] + bytes);
    }

    /// <summary>A request the backend failed; a checksum mismatch also counts as damaged data. (Rare: straight into the series.)</summary>
    public void Failed(VolumeOp op, StorageError error)
    {
        _errors[(int)op].Inc();
        if (error == StorageError.ChecksumMismatch) _checksumFailures.Inc();
    }

    /// <summary>Gives the slot back when the export's series are dropped (<see cref="PlatterMetrics.Forget"/>).</summary>
    public void Release()
    {
        lock (SlotLock) FreeSlots.Push(_slot);
    }

    /// <summary>
    /// Brings the prometheus-net series up to date with the request path's counters; runs before each scrape. Callers
    /// serialize it (<see cref="PlatterMetrics"/> holds a lock).
    /// </summary>
    public void Publish()
    {
        lock (_threadsLock)
        {
            Sum();
            for (int op = 0; op < _duration.Length; op++) _buckets.Publish((VolumeOp)op, _sums, _published, _duration[op]);
            _readBytesSeries.IncTo(_sums[_buckets.ReadBytesCell]);
            _writtenBytesSeries.IncTo(_sums[_buckets.WrittenBytesCell]);
        }
    }

    /// <summary>
    /// The totals for the dashboard's JSON, from the request path's counters (each value is read atomically; values
    /// may be from slightly different instants).
    /// </summary>
    public VolumeTotals Totals()
    {
        long errors = 0;
        foreach (var e in _errors) errors += (long)e.Value;
        lock (_threadsLock)
        {
            Sum();
            return new VolumeTotals(_buckets.Count(VolumeOp.Read, _sums), _buckets.Count(VolumeOp.Write, _sums),
                _buckets.Count(VolumeOp.Flush, _sums), _sums[_buckets.ReadBytesCell], _sums[_buckets.WrittenBytesCell],
                _buckets.Seconds(VolumeOp.Read, _sums), _buckets.Seconds(VolumeOp.Write, _sums), errors, (long)_checksumFailures.Value);
        }
    }

    private long[] CountersOfThisThread()
    {
        var table = _threadTable;
        if (table is not null && (uint)_slot < (uint)table.Length && table[_slot] is { } mine && ReferenceEquals(mine.Owner, this))
            return mine.Cells;
        return Attach();
    }

    // First request of this thread for this export (or its table entry was taken by a newer owner of the slot).
    [MethodImpl(MethodImplOptions.NoInlining)]
    private long[] Attach()
    {
        var thread = Thread.CurrentThread;
        ThreadCounters? mine = null;
        lock (_threadsLock)
        {
            FoldExitedThreads();
            foreach (var t in _threads)
            {
                if (t.Thread == thread) mine = t;
            }
            if (mine is null)
            {
                mine = new ThreadCounters(this, thread, new long[_buckets.CellsPerThread]);
                _threads = [.. _threads, mine];
            }
        }
        var table = _threadTable;
        if (table is null || table.Length <= _slot)
        {
            Array.Resize(ref table, Math.Max(_slot + 1, 2 * (table?.Length ?? 4)));
            _threadTable = table;
        }
        table[_slot] = mine;
        return mine.Cells;
    }

    // A thread that has exited writes no more: its counts move to _retired and its block goes, so that thread-pool
    // threads coming and going over months do not pile up blocks. Under _threadsLock.
    private void FoldExitedThreads()
    {
        int live = 0;
        foreach (var t in _threads)
        {
            if (t.Thread.IsAlive) live++;
        }
        if (live == _threads.Length) return;
        var kept = new ThreadCounters[live];
        int k = 0;
        foreach (var t in _threads)
        {
            if (t.Thread.IsAlive)
            {
                kept[k++] = t;
                continue;
            }
            for (int i = 0; i < _retired.Length; i++) _retired[i] += Volatile.Read(ref t.Cells[i]);
        }
        _threads = kept;
    }

    // _sums = _retired + every live thread's block. Under _threadsLock.
    private void Sum()
    {
        FoldExitedThreads();
        Array.Copy(_retired, _sums, _sums.Length);
        foreach (var t in _threads)
        {
            for (int i = 0; i < _sums.Length; i++) _sums[i] += Volatile.Read(ref t.Cells[i]);
        }
    }

    private sealed record ThreadCounters(VolumeMetrics Owner, Thread Thread, long[] Cells);
}

/// <summary>
/// The layout of a thread's counters and the duration histogram's buckets. Per operation and bucket (the last one
/// +Inf) a count and a sum of <see cref="Stopwatch"/> ticks, side by side so that a request touches one cache line of
/// them; then the read and written byte counts. <see cref="Publish"/> hands what is new to the prometheus-net histogram
/// as one observation per bucket (the bucket's mean duration, weighted by its count), which lands in the same bucket
/// and adds the same sum as observing each request would have.
/// </summary>
internal sealed class DurationBuckets
{
    // Cells before and after the counters, so that another thread's block allocated next to this one never shares a
    // cache line with the cells this thread writes.
    private const int Padding = 8;

    private readonly double[] _upperSeconds;
    private readonly long[] _upperTicks;
    private readonly int _cellsPerOp;

    /// <summary>Buckets with these upper bounds in seconds (+Inf added).</summary>
    public DurationBuckets(double[] upperSeconds)
    {
        _upperSeconds = upperSeconds;
        _upperTicks = [.. upperSeconds.Select(s => (long)Math.Round(s * Stopwatch.Frequency))];
        _cellsPerOp = 2 * (upperSeconds.Length + 1);
        ReadBytesCell = Padding + VolumeMetrics.OpLabels.Length * _cellsPerOp;
        WrittenBytesCell = ReadBytesCell + 1;
        CellsPerThread = WrittenBytesCell + 1 + Padding;
    }

    /// <summary>Length of a thread's block of counters.</summary>
    public int CellsPerThread { get; }

    /// <summary>Where a block holds the bytes read.</summary>
    public int ReadBytesCell { get; }

    /// <summary>Where a block holds the bytes written.</summary>
    public int WrittenBytesCell { get; }

    /// <summary>The count cell of the bucket a request of <paramref name="ticks"/> falls in; its tick sum is the next.</summary>
    public int Cell(VolumeOp op, long ticks)
    {
        // Most requests end in the first few buckets: a short scan over longs.
        var upper = _upperTicks;
        int bucket = 0;
        while (bucket < upper.Length && ticks > upper[bucket]) bucket++;
        return Padding + (int)op * _cellsPerOp + 2 * bucket;
    }

    /// <summary>Requests of <paramref name="op"/> in summed counters.</summary>
    public long Count(VolumeOp op, long[] sums)
    {
        long count = 0;
        int first = Padding + (int)op * _cellsPerOp;
        for (int i = first; i < first + _cellsPerOp; i += 2) count += sums[i];
        return count;
    }

    /// <summary>Their durations added up, in seconds.</summary>
    public double Seconds(VolumeOp op, long[] sums)
    {
        long ticks = 0;
        int first = Padding + (int)op * _cellsPerOp;
        for (int i = first + 1; i < first + _cellsPerOp; i += 2) ticks += sums[i];
        return (double)ticks / Stopwatch.Frequency;
    }

    /// <summary>Observes into <paramref name="histogram"/> what <paramref name="sums"/> holds beyond <paramref name="published"/>, and records it there.</summary>
    public void Publish(VolumeOp op, long[] sums, long[] published, Histogram.Child histogram)
    {
        int first = Padding + (int)op * _cellsPerOp;
        for (int bucket = 0; 2 * bucket < _cellsPerOp; bucket++)
        {
            int cell = first + 2 * bucket;
            long count = sums[cell];
            long ticks = sums[cell + 1];
            long newCount = count - published[cell];
            if (newCount <= 0) continue;
            double mean = (double)(ticks - published[cell + 1]) / newCount / Stopwatch.Frequency;
            // A request counted between the reads of its count and its ticks leaves its ticks in this round and its
            // count in the next (or the other way round): its bucket's mean then strays a little. Kept inside the
            // bucket, no request changes bucket; the sum may be off by that request's duration, as prometheus-net's own
            // histogram may be (its sum and counts are not updated in one atomic step either).
            double lower = bucket == 0 ? 0 : _upperSeconds[bucket - 1];
            double upper = bucket < _upperSeconds.Length ? _upperSeconds[bucket] : double.MaxValue;
            histogram.Observe(Math.Clamp(mean, Math.BitIncrement(lower), upper), newCount);
            published[cell] = count;
            published[cell + 1] = ticks;
        }
    }
}

/// <summary>Totals of one export since the server started.</summary>
internal readonly record struct VolumeTotals(long Reads, long Writes, long Flushes, long ReadBytes, long WrittenBytes,
    double ReadSeconds, double WriteSeconds, long Errors, long ChecksumFailures);
