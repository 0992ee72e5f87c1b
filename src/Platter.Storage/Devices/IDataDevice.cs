namespace Platter.Storage.Devices;

/// <summary>
/// The narrow interface below the engine: a flat, growable byte space with positional I/O and a
/// durability barrier. The data file and the metadata journal are both devices, so wrappers can add
/// fault injection (tests), latency or statistics without the engine knowing.
/// Failures are reported as <see cref="IOException"/> (HResult carries the errno where known).
/// </summary>
internal interface IDataDevice : IDisposable
{
    /// <summary>Current size in bytes.</summary>
    long Length { get; }

    /// <summary>Reads exactly destination.Length bytes; bytes past <see cref="Length"/> read as zeros.</summary>
    void Read(long offset, Span<byte> destination);

    /// <summary>Writes all of source. May leave a prefix written when it throws (a torn write).</summary>
    void Write(long offset, ReadOnlySpan<byte> source);

    /// <summary>Makes every completed write durable (fdatasync). A failure means earlier writes may be lost.</summary>
    void Sync();

    /// <summary>Extends the device to <paramref name="newLength"/> bytes (new bytes read as zeros). Throws IOException on ENOSPC.</summary>
    void Grow(long newLength);

    /// <summary>
    /// Gives the storage under [offset, offset + length) back to the file system (the bytes then read as zeros), so
    /// freed blocks make the host's free space grow. Advisory: a device that cannot do it does nothing.
    /// </summary>
    void PunchHole(long offset, long length) { }
}
