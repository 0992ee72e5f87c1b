using System.Diagnostics;
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
/// timestamps, two interlocked additions into its operation's duration bucket and, for reads and writes, one into the
/// byte count: no allocation, no lock, no label lookup, no floating point. The prometheus-net series are brought up to
/// date from these counters when /metrics is scraped (<see cref="Publish"/>), so the request path never enters the
/// library: its histogram observation (a bucket search over doubles, a compare-exchange loop on the double sum) cost
/// more than everything else here together, and more still in the Native AOT build (docs/PERFORMANCE.md).
/// </summary>
/// <remarks>
/// Every connection to the same export shares one instance (see <see cref="PlatterMetrics.ForVolume"/>), so the
/// numbers are the export's, not the connection's.
/// </remarks>
internal sealed class VolumeMetrics
{
    /// <summary>The <c>op</c> label of each <see cref="VolumeOp"/>.</summary>
    public static readonly string[] OpLabels = ["read", "write", "flush", "trim", "write_zeroes"];

    private readonly DurationCounters[] _ops;
    private readonly Histogram.Child[] _duration;
    private readonly Counter.Child[] _errors;
    private readonly Counter.Child _readBytesSeries;
    private readonly Counter.Child _writtenBytesSeries;
    private readonly Counter.Child _checksumFailures;
    private long _readBytes;
    private long _writtenBytes;

    internal VolumeMetrics(string name, Histogram duration, double[] durationBuckets, Counter readBytes, Counter writtenBytes, Counter errors,
        Counter checksumFailures)
    {
        Name = name;
        _ops = [.. OpLabels.Select(_ => new DurationCounters(durationBuckets))];
        _duration = [.. OpLabels.Select(op => duration.WithLabels(name, op))];
        _errors = [.. OpLabels.Select(op => errors.WithLabels(name, op))];
        _readBytesSeries = readBytes.WithLabels(name);
        _writtenBytesSeries = writtenBytes.WithLabels(name);
        _checksumFailures = checksumFailures.WithLabels(name);
    }

    /// <summary>The export name the counters are labelled with.</summary>
    public string Name { get; }

    /// <summary>Where a request's duration starts.</summary>
    public static long Start() => Stopwatch.GetTimestamp();

    /// <summary>A request that succeeded: its duration, and for reads and writes its bytes.</summary>
    public void Done(VolumeOp op, int bytes, long start)
    {
        _ops[(int)op].Record(Stopwatch.GetTimestamp() - start);
        if (op == VolumeOp.Read) Interlocked.Add(ref _readBytes, bytes);
        else if (op == VolumeOp.Write) Interlocked.Add(ref _writtenBytes, bytes);
    }

    /// <summary>A request the backend failed; a checksum mismatch also counts as damaged data. (Rare: straight into the series.)</summary>
    public void Failed(VolumeOp op, StorageError error)
    {
        _errors[(int)op].Inc();
        if (error == StorageError.ChecksumMismatch) _checksumFailures.Inc();
    }

    /// <summary>
    /// Brings the prometheus-net series up to date with the request path's counters; runs before each scrape. Callers
    /// serialize it (<see cref="PlatterMetrics"/> holds a lock).
    /// </summary>
    public void Publish()
    {
        for (int op = 0; op < _ops.Length; op++) _ops[op].Publish(_duration[op]);
        _readBytesSeries.IncTo(Volatile.Read(ref _readBytes));
        _writtenBytesSeries.IncTo(Volatile.Read(ref _writtenBytes));
    }

    /// <summary>
    /// The totals for the dashboard's JSON, from the request path's counters (each value is read atomically; values
    /// may be from slightly different instants).
    /// </summary>
    public VolumeTotals Totals()
    {
        long errors = 0;
        foreach (var e in _errors) errors += (long)e.Value;
        var read = _ops[(int)VolumeOp.Read];
        var write = _ops[(int)VolumeOp.Write];
        return new VolumeTotals(read.Count, write.Count, _ops[(int)VolumeOp.Flush].Count, Volatile.Read(ref _readBytes),
            Volatile.Read(ref _writtenBytes), read.Seconds, write.Seconds, errors, (long)_checksumFailures.Value);
    }
}

/// <summary>
/// One operation's request durations as the request path keeps them: per histogram bucket, the number of requests and
/// the sum of their durations in <see cref="Stopwatch"/> ticks. <see cref="Publish"/> hands what is new to the
/// prometheus-net histogram as one observation per bucket (the bucket's mean duration, weighted by its count), which
/// lands in the same bucket and adds the same sum as observing each request would have.
/// </summary>
internal sealed class DurationCounters
{
    private readonly double[] _upperSeconds;
    private readonly long[] _upperTicks;
    // (count, ticks) per bucket, the last one +Inf; side by side, so that a request touches one cache line of them.
    private readonly long[] _cells;
    // What Publish has handed to the histogram so far (only Publish touches it).
    private readonly long[] _published;

    /// <summary>Counters for a histogram with these upper bounds in seconds (+Inf added).</summary>
    public DurationCounters(double[] upperSeconds)
    {
        _upperSeconds = upperSeconds;
        _upperTicks = [.. upperSeconds.Select(s => (long)Math.Round(s * Stopwatch.Frequency))];
        _cells = new long[2 * (upperSeconds.Length + 1)];
        _published = new long[_cells.Length];
    }

    /// <summary>Requests counted so far.</summary>
    public long Count
    {
        get
        {
            long count = 0;
            for (int i = 0; i < _cells.Length; i += 2) count += Volatile.Read(ref _cells[i]);
            return count;
        }
    }

    /// <summary>Their durations added up, in seconds.</summary>
    public double Seconds
    {
        get
        {
            long ticks = 0;
            for (int i = 1; i < _cells.Length; i += 2) ticks += Volatile.Read(ref _cells[i]);
            return (double)ticks / Stopwatch.Frequency;
        }
    }

    /// <summary>One request of <paramref name="ticks"/> Stopwatch ticks.</summary>
    public void Record(long ticks)
    {
        // Most requests end in the first few buckets: a short scan over longs.
        var upper = _upperTicks;
        int bucket = 0;
        while (bucket < upper.Length && ticks > upper[bucket]) bucket++;
        Interlocked.Add(ref _cells[2 * bucket + 1], ticks);
        Interlocked.Increment(ref _cells[2 * bucket]);
    }

    /// <summary>Observes into <paramref name="histogram"/> what was recorded since the last call.</summary>
    public void Publish(Histogram.Child histogram)
    {
        for (int bucket = 0; 2 * bucket < _cells.Length; bucket++)
        {
            long count = Volatile.Read(ref _cells[2 * bucket]);
            long ticks = Volatile.Read(ref _cells[2 * bucket + 1]);
            long newCount = count - _published[2 * bucket];
            if (newCount <= 0) continue;
            double mean = (double)(ticks - _published[2 * bucket + 1]) / newCount / Stopwatch.Frequency;
            // A request recorded between the two reads above leaves its ticks in this round and its count in the next
            // (or the other way round): its bucket's mean then strays a little. Kept inside the bucket, no request
            // changes bucket; the sum may be off by that request's duration, as prometheus-net's own histogram may be
            // (its sum and counts are not updated in one atomic step either).
            double lower = bucket == 0 ? 0 : _upperSeconds[bucket - 1];
            double upper = bucket < _upperSeconds.Length ? _upperSeconds[bucket] : double.MaxValue;
            histogram.Observe(Math.Clamp(mean, Math.BitIncrement(lower), upper), newCount);
            _published[2 * bucket] = count;
            _published[2 * bucket + 1] = ticks;
        }
    }
}

/// <summary>Totals of one export since the server started.</summary>
internal readonly record struct VolumeTotals(long Reads, long Writes, long Flushes, long ReadBytes, long WrittenBytes,
    double ReadSeconds, double WriteSeconds, long Errors, long ChecksumFailures);
