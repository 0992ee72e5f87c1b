namespace Platter.Storage;

/// <summary>
/// An I/O handle on one volume. Thread-safe; concurrent requests are allowed. Offsets and lengths
/// are in bytes and need no alignment (unaligned writes read-modify-write their 4 KiB blocks).
/// </summary>
public sealed partial class Volume : IDisposable
{
    public string Name => throw new NotImplementedException("engine landing");
    public long SizeBytes => throw new NotImplementedException("engine landing");
    public bool IsReadOnly => throw new NotImplementedException("engine landing");

    /// <summary>Reads; unmapped ranges read as zeros. Throws ChecksumMismatch, IoError, OutOfRange, Closed.</summary>
    public void Read(long offset, Span<byte> destination) => throw new NotImplementedException("engine landing");

    /// <summary>Writes (copy-on-write). Acknowledged on return, durable after the next flush. Throws NoSpace, IoError, StoreFailed, OutOfRange.</summary>
    public void Write(long offset, ReadOnlySpan<byte> source) => throw new NotImplementedException("engine landing");

    /// <summary>Deallocates; the range reads as zeros.</summary>
    public void Trim(long offset, long length) => throw new NotImplementedException("engine landing");

    /// <summary>Makes the range read as zeros (deallocates whole blocks, writes zeros into partial ones).</summary>
    public void WriteZeroes(long offset, long length) => throw new NotImplementedException("engine landing");

    /// <summary>Makes every acknowledged write durable (group commit shared with all volumes of the store).</summary>
    public ValueTask FlushAsync(CancellationToken cancellationToken = default) => throw new NotImplementedException("engine landing");

    /// <summary>
    /// Allocation map from <paramref name="offset"/>: fills <paramref name="destination"/> with consecutive runs
    /// covering at most <paramref name="length"/> bytes and returns how many (at least one when length &gt; 0).
    /// </summary>
    public int GetExtents(long offset, long length, Span<VolumeExtent> destination) => throw new NotImplementedException("engine landing");

    public void Dispose() => throw new NotImplementedException("engine landing");
}
