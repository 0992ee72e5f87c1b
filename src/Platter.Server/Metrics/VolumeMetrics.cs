using System.Diagnostics;
using Prometheus;

namespace Platter.Server.Metrics;

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
    private readonly Histogram.Child _read;
    private readonly Histogram.Child _write;
    private readonly Histogram.Child _flush;
    private readonly Histogram.Child _trim;
    private readonly Histogram.Child _zero;
    private readonly Counter.Child _readBytes;
    private readonly Counter.Child _writtenBytes;
    private readonly Counter.Child _readErrors;
    private readonly Counter.Child _writeErrors;
    private readonly Counter.Child _flushErrors;
    private readonly Counter.Child _trimErrors;
    private readonly Counter.Child _zeroErrors;
    private readonly Counter.Child _checksumFailures;

    internal VolumeMetrics(string name, Histogram duration, Counter readBytes, Counter writtenBytes, Counter errors, Counter checksumFailures)
    {
        Name = name;
        _read = duration.WithLabels(name, "read");
        _write = duration.WithLabels(name, "write");
        _flush = duration.WithLabels(name, "flush");
        _trim = duration.WithLabels(name, "trim");
        _zero = duration.WithLabels(name, "write_zeroes");
        _readBytes = readBytes.WithLabels(name);
        _writtenBytes = writtenBytes.WithLabels(name);
        _readErrors = errors.WithLabels(name, "read");
        _writeErrors = errors.WithLabels(name, "write");
        _flushErrors = errors.WithLabels(name, "flush");
        _trimErrors = errors.WithLabels(name, "trim");
        _zeroErrors = errors.WithLabels(name, "write_zeroes");
        _checksumFailures = checksumFailures.WithLabels(name);
    }

    /// <summary>The export name the counters are labelled with.</summary>
    public string Name { get; }

    /// <summary>Where a request's duration starts.</summary>
    public static long Start() => Stopwatch.GetTimestamp();

    public void Read(int bytes, long start)
    {
        _read.Observe(Seconds(Stopwatch.GetTimestamp() - start));
        _readBytes.Inc(bytes);
    }

    public void Write(int bytes, long start)
    {
        _write.Observe(Seconds(Stopwatch.GetTimestamp() - start));
        _writtenBytes.Inc(bytes);
    }

    public void Flush(long start) => _flush.Observe(Seconds(Stopwatch.GetTimestamp() - start));

    public void Trim(long start) => _trim.Observe(Seconds(Stopwatch.GetTimestamp() - start));

    public void WriteZeroes(long start) => _zero.Observe(Seconds(Stopwatch.GetTimestamp() - start));

    public void ReadFailed(bool checksum) => Failed(_readErrors, checksum);

    public void WriteFailed() => Failed(_writeErrors, checksum: false);

    public void FlushFailed() => Failed(_flushErrors, checksum: false);

    public void TrimFailed() => Failed(_trimErrors, checksum: false);

    // A write-zeroes with NO_HOLE writes zeros, which may read-modify-write a partial block: a checksum failure there is possible.
    public void WriteZeroesFailed(bool checksum) => Failed(_zeroErrors, checksum);

    private void Failed(Counter.Child errors, bool checksum)
    {
        errors.Inc();
        if (checksum) _checksumFailures.Inc();
    }

    /// <summary>
    /// The totals for the dashboard's JSON, read from the same children /metrics exposes (each value is read
    /// atomically; values may be from slightly different instants).
    /// </summary>
    public VolumeTotals Totals() => new(
        _read.Count,
        _write.Count,
        _flush.Count,
        (long)_readBytes.Value,
        (long)_writtenBytes.Value,
        _read.Sum,
        _write.Sum,
        (long)(_readErrors.Value + _writeErrors.Value + _flushErrors.Value + _trimErrors.Value + _zeroErrors.Value),
        (long)_checksumFailures.Value);

    private static double Seconds(long ticks) => (double)ticks / Stopwatch.Frequency;
}

/// <summary>Totals of one export since the server started.</summary>
internal readonly record struct VolumeTotals(long Reads, long Writes, long Flushes, long ReadBytes, long WrittenBytes,
    double ReadSeconds, double WriteSeconds, long Errors, long ChecksumFailures);
