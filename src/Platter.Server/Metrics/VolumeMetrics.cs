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
/// The I/O counters of one export name (a volume, or <c>volume@snapshot</c>), resolved once so that a request costs
/// two timestamps, one histogram observation and at most one counter increment: no allocation, no lock
/// (prometheus-net's children update with interlocked operations), no label lookup.
/// </summary>
/// <remarks>
/// Every connection to the same export shares one instance (see <see cref="PlatterMetrics.ForVolume"/>), so the
/// numbers are the export's, not the connection's.
/// </remarks>
internal sealed class VolumeMetrics
{
    /// <summary>The <c>op</c> label of each <see cref="VolumeOp"/>.</summary>
    public static readonly string[] OpLabels = ["read", "write", "flush", "trim", "write_zeroes"];

    private readonly Histogram.Child[] _duration;
    private readonly Counter.Child[] _errors;
    private readonly Counter.Child _readBytes;
    private readonly Counter.Child _writtenBytes;
    private readonly Counter.Child _checksumFailures;

    internal VolumeMetrics(string name, Histogram duration, Counter readBytes, Counter writtenBytes, Counter errors, Counter checksumFailures)
    {
        Name = name;
        _duration = [.. OpLabels.Select(op => duration.WithLabels(name, op))];
        _errors = [.. OpLabels.Select(op => errors.WithLabels(name, op))];
        _readBytes = readBytes.WithLabels(name);
        _writtenBytes = writtenBytes.WithLabels(name);
        _checksumFailures = checksumFailures.WithLabels(name);
    }

    /// <summary>The export name the counters are labelled with.</summary>
    public string Name { get; }

    /// <summary>Where a request's duration starts.</summary>
    public static long Start() => Stopwatch.GetTimestamp();

    /// <summary>A request that succeeded: its duration, and for reads and writes its bytes.</summary>
    public void Done(VolumeOp op, int bytes, long start)
    {
        _duration[(int)op].Observe((double)(Stopwatch.GetTimestamp() - start) / Stopwatch.Frequency);
        if (op == VolumeOp.Read) _readBytes.Inc(bytes);
        else if (op == VolumeOp.Write) _writtenBytes.Inc(bytes);
    }

    /// <summary>A request the backend failed; a checksum mismatch also counts as damaged data.</summary>
    public void Failed(VolumeOp op, StorageError error)
    {
        _errors[(int)op].Inc();
        if (error == StorageError.ChecksumMismatch) _checksumFailures.Inc();
    }

    /// <summary>
    /// The totals for the dashboard's JSON, read from the same children /metrics exposes (each value is read
    /// atomically; values may be from slightly different instants).
    /// </summary>
    public VolumeTotals Totals()
    {
        long errors = 0;
        foreach (var e in _errors) errors += (long)e.Value;
        var read = _duration[(int)VolumeOp.Read];
        var write = _duration[(int)VolumeOp.Write];
        return new VolumeTotals(read.Count, write.Count, _duration[(int)VolumeOp.Flush].Count, (long)_readBytes.Value,
            (long)_writtenBytes.Value, read.Sum, write.Sum, errors, (long)_checksumFailures.Value);
    }
}

/// <summary>Totals of one export since the server started.</summary>
internal readonly record struct VolumeTotals(long Reads, long Writes, long Flushes, long ReadBytes, long WrittenBytes,
    double ReadSeconds, double WriteSeconds, long Errors, long ChecksumFailures);
