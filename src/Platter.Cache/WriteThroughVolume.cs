using System.Buffers;
using Platter.Cache.Internal;

namespace Platter.Cache;

/// <summary>
/// A volume with a write-through cache: reads are cached in a file on local disk, writes go to the backend and are
/// acknowledged when the backend acknowledges them. The cache only ever holds copies of what the backend has, so
/// losing it loses nothing; it starts empty on every open. One per volume per node, shared by its handles.
/// </summary>
public sealed class WriteThroughVolume : IDisposable
{
    private const int BlockBytes = LogFormat.BlockBytes;

    private readonly IVolumeHandle _backend;
    private readonly ReadCache _cache;

    /// <summary>Caches reads of <paramref name="backend"/> in <paramref name="cachePath"/> (<paramref name="cacheBytes"/> large). Owns the backend handle.</summary>
    public WriteThroughVolume(IVolumeHandle backend, string cachePath, long cacheBytes)
    {
        _backend = backend;
        _cache = new ReadCache(cachePath, cacheBytes);
    }

    /// <summary>Reads served from the cache and reads that went to the backend.</summary>
    public (long Hits, long Misses) ReadCacheCounters => (_cache.Hits, _cache.Misses);

    /// <summary>Forgets the cache (the backend's content changed under it, e.g. a rollback).</summary>
    public void Clear() => _cache.Clear();

    /// <summary>A handle for one client; all handles share the cache.</summary>
    public IVolumeHandle OpenHandle() => new Handle(this);

    /// <summary>Closes the cache (deleting its file) and the backend handle.</summary>
    public void Dispose()
    {
        _cache.Dispose();
        _backend.Dispose();
    }

    private async ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken cancellationToken)
    {
        long size = _backend.SizeBytes;
        if (offset < 0 || offset > size || destination.Length > size - offset)
            throw new StorageException(StorageError.OutOfRange, $"range [{offset}, {offset + destination.Length}) is past the end of volume '{_backend.Name}' ({size} bytes)");
        if (destination.IsEmpty) return;
        if (((offset | (long)destination.Length) & (BlockBytes - 1)) == 0)
        {
            await ReadThrough.ReadAsync(_cache, _backend, offset / BlockBytes, destination, cancellationToken).ConfigureAwait(false);
            return;
        }
        long first = offset / BlockBytes, last = (offset + destination.Length - 1) / BlockBytes;
        int bytes = (int)(last - first + 1) * BlockBytes;
        var buffer = ArrayPool<byte>.Shared.Rent(bytes);
        try
        {
            await ReadThrough.ReadAsync(_cache, _backend, first, buffer.AsMemory(0, bytes), cancellationToken).ConfigureAwait(false);
            buffer.AsSpan((int)(offset - first * BlockBytes), destination.Length).CopyTo(destination.Span);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    // Invalidated before the backend write (no racing reader caches the old copy after it) and after (none that read
    // in between does either); see ReadCache.
    private async ValueTask ChangeAsync(long offset, long length, Func<ValueTask> change)
    {
        long first = offset / BlockBytes, blocks = (offset + length + BlockBytes - 1) / BlockBytes - first;
        _cache.Invalidate(first, blocks);
        try
        {
            await change().ConfigureAwait(false);
        }
        finally
        {
            _cache.Invalidate(first, blocks);
        }
    }

    private sealed class Handle(WriteThroughVolume cache) : IVolumeHandle
    {
        private readonly IVolumeHandle _backend = cache._backend;

        public string Name => _backend.Name;
        public long SizeBytes => _backend.SizeBytes;
        public bool IsReadOnly => _backend.IsReadOnly;
        public bool FlushCoversAllHandles => _backend.FlushCoversAllHandles;

        public ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken cancellationToken = default) =>
            cache.ReadAsync(offset, destination, cancellationToken);

        public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, bool fua, CancellationToken cancellationToken = default) =>
            cache.ChangeAsync(offset, source.Length, () => _backend.WriteAsync(offset, source, fua, cancellationToken));

        public ValueTask FlushAsync(CancellationToken cancellationToken = default) => _backend.FlushAsync(cancellationToken);

        public ValueTask TrimAsync(long offset, long length, bool fua, CancellationToken cancellationToken = default) =>
            cache.ChangeAsync(offset, length, () => _backend.TrimAsync(offset, length, fua, cancellationToken));

        public ValueTask WriteZeroesAsync(long offset, long length, bool deallocate, bool fua, CancellationToken cancellationToken = default) =>
            cache.ChangeAsync(offset, length, () => _backend.WriteZeroesAsync(offset, length, deallocate, fua, cancellationToken));

        public int GetExtents(long offset, long length, Span<VolumeExtent> destination) => _backend.GetExtents(offset, length, destination);

        public int GetChangedExtents(string sinceSnapshot, long offset, long length, Span<VolumeExtent> destination) =>
            _backend.GetChangedExtents(sinceSnapshot, offset, length, destination);

        public int GetAllocationDepth(long offset, long length, Span<DepthExtent> destination) => _backend.GetAllocationDepth(offset, length, destination);

        public IReadOnlyList<string> DirtyBitmapSnapshots => _backend.DirtyBitmapSnapshots;

        public void Dispose() { }
    }
}
