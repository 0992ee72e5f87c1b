namespace Platter.Storage.Devices;

/// <summary>
/// A range of another device seen as a device of its own. The store keeps its metadata journal in the first
/// bytes of the data file and the data blocks after it, so one fdatasync makes a commit's data and its journal
/// record durable together (one sync per commit instead of two).
/// </summary>
internal sealed class DeviceWindow(IDataDevice inner, long start, long fixedLength = -1) : IDataDevice
{
    /// <summary>Bytes of the window: fixed, or whatever the device holds past <c>start</c>.</summary>
    public long Length => fixedLength >= 0 ? fixedLength : Math.Max(0, inner.Length - start);

    public void Read(long offset, Span<byte> destination)
    {
        CheckBounds(offset, destination.Length);
        inner.Read(start + offset, destination);
    }

    public bool ReadUncached(long offset, Span<byte> destination)
    {
        CheckBounds(offset, destination.Length);
        // A window that does not start on the alignment cannot pass aligned reads through: read through the cache.
        if (start % IDataDevice.UncachedAlignment != 0)
        {
            inner.Read(start + offset, destination);
            return false;
        }
        return inner.ReadUncached(start + offset, destination);
    }

    public void Write(long offset, ReadOnlySpan<byte> source)
    {
        CheckBounds(offset, source.Length);
        inner.Write(start + offset, source);
    }

    public void Sync() => inner.Sync();

    public void Grow(long newLength)
    {
        if (fixedLength >= 0)
        {
            if (newLength > fixedLength) throw new InvalidOperationException($"a fixed window of {fixedLength} bytes cannot grow to {newLength}");
            if (inner.Length < start + newLength) inner.Grow(start + newLength);
            return;
        }
        inner.Grow(start + newLength);
    }

    public void PunchHole(long offset, long length)
    {
        if (offset < 0 || length < 0 || (fixedLength >= 0 && offset + length > fixedLength))
            throw new ArgumentOutOfRangeException(nameof(offset), $"hole [{offset}, {offset + length}) is outside the window");
        inner.PunchHole(start + offset, length);
    }

    private void CheckBounds(long offset, int length)
    {
        if (offset < 0 || (fixedLength >= 0 && offset + length > fixedLength))
            throw new ArgumentOutOfRangeException(nameof(offset), $"[{offset}, {offset + length}) is outside a window of {Length} bytes");
    }

    /// <summary>The window does not own the device below it.</summary>
    public void Dispose() { }
}
