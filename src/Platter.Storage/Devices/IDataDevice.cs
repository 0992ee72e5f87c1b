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

    /// <summary>
    /// Reads like <see cref="Read"/>, but from the disk itself: neither served from the page cache nor adding to it
    /// (O_DIRECT), for the scrubber, which must see what the disk holds and must not evict clients' cached pages.
    /// <paramref name="offset"/>, the length and the address of <paramref name="destination"/> must be multiples of
    /// <see cref="UncachedAlignment"/>. Returns false when the read went through the cache after all (a device or
    /// file system that cannot bypass it), true when it did not.
    /// </summary>
    bool ReadUncached(long offset, Span<byte> destination)
    {
        Read(offset, destination);
        return false;
    }

    /// <summary>
    /// The alignment of <see cref="ReadUncached"/>'s offset, length and buffer: 4 KiB, a block, which is at least the
    /// logical sector size of every disk O_DIRECT is used on (512 or 4096 bytes).
    /// </summary>
    const int UncachedAlignment = 4096;

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
