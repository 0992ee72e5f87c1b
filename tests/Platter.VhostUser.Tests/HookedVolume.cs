using Platter.Volumes;

namespace Platter.VhostUser.Tests;

/// <summary>A volume handle passing everything to the real one, with a hook run before each write reaches it.</summary>
internal sealed class HookedVolume(IVolumeHandle inner) : IVolumeHandle
{
    /// <summary>Run with each write's offset and source before the write is passed on; null: none.</summary>
    public Action<long, ReadOnlyMemory<byte>>? BeforeWrite { get; set; }

    public string Name => inner.Name;
    public long SizeBytes => inner.SizeBytes;
    public bool IsReadOnly => inner.IsReadOnly;
    public bool FlushCoversAllHandles => inner.FlushCoversAllHandles;
    public bool ExtentsAreCheap => inner.ExtentsAreCheap;

    public ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken cancellationToken = default) =>
        inner.ReadAsync(offset, destination, cancellationToken);

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, bool fua, CancellationToken cancellationToken = default)
    {
        BeforeWrite?.Invoke(offset, source);
        return inner.WriteAsync(offset, source, fua, cancellationToken);
    }

    public ValueTask FlushAsync(CancellationToken cancellationToken = default) => inner.FlushAsync(cancellationToken);

    public ValueTask TrimAsync(long offset, long length, bool fua, CancellationToken cancellationToken = default) =>
        inner.TrimAsync(offset, length, fua, cancellationToken);

    public ValueTask WriteZeroesAsync(long offset, long length, bool deallocate, bool fua, CancellationToken cancellationToken = default) =>
        inner.WriteZeroesAsync(offset, length, deallocate, fua, cancellationToken);

    public int GetExtents(long offset, long length, Span<VolumeExtent> destination) => inner.GetExtents(offset, length, destination);

    public int GetChangedExtents(string sinceSnapshot, long offset, long length, Span<VolumeExtent> destination) =>
        inner.GetChangedExtents(sinceSnapshot, offset, length, destination);

    public int GetAllocationDepth(long offset, long length, Span<DepthExtent> destination) => inner.GetAllocationDepth(offset, length, destination);

    public IReadOnlyList<string> DirtyBitmapSnapshots => inner.DirtyBitmapSnapshots;

    // The test owns the real volume and disposes it.
    public void Dispose()
    {
    }
}
