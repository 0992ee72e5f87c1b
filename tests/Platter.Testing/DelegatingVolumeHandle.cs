using Platter.Volumes;

namespace Platter.Testing;

/// <summary>
/// A volume handle that passes everything to another one: the base of a test's handle that changes one call (holds
/// writes back, runs a hook before them) and leaves the rest alone. Disposing it disposes the inner handle unless
/// <paramref name="ownsInner"/> is false.
/// </summary>
public class DelegatingVolumeHandle(IVolumeHandle inner, bool ownsInner = true) : IVolumeHandle
{
    protected IVolumeHandle Inner { get; } = inner;

    public string Name => Inner.Name;
    public long SizeBytes => Inner.SizeBytes;
    public bool IsReadOnly => Inner.IsReadOnly;
    public bool FlushCoversAllHandles => Inner.FlushCoversAllHandles;
    public bool ExtentsAreCheap => Inner.ExtentsAreCheap;

    public virtual ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken cancellationToken = default) =>
        Inner.ReadAsync(offset, destination, cancellationToken);

    public virtual ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, bool fua, CancellationToken cancellationToken = default) =>
        Inner.WriteAsync(offset, source, fua, cancellationToken);

    public virtual ValueTask FlushAsync(CancellationToken cancellationToken = default) => Inner.FlushAsync(cancellationToken);

    public virtual ValueTask TrimAsync(long offset, long length, bool fua, CancellationToken cancellationToken = default) =>
        Inner.TrimAsync(offset, length, fua, cancellationToken);

    public virtual ValueTask WriteZeroesAsync(long offset, long length, bool deallocate, bool fua, CancellationToken cancellationToken = default) =>
        Inner.WriteZeroesAsync(offset, length, deallocate, fua, cancellationToken);

    public int GetExtents(long offset, long length, Span<VolumeExtent> destination) => Inner.GetExtents(offset, length, destination);

    public int GetChangedExtents(string sinceSnapshot, long offset, long length, Span<VolumeExtent> destination) =>
        Inner.GetChangedExtents(sinceSnapshot, offset, length, destination);

    public int GetAllocationDepth(long offset, long length, Span<DepthExtent> destination) => Inner.GetAllocationDepth(offset, length, destination);

    public IReadOnlyList<string> DirtyBitmapSnapshots => Inner.DirtyBitmapSnapshots;

    public void Dispose()
    {
        if (ownsInner) Inner.Dispose();
        GC.SuppressFinalize(this);
    }
}
