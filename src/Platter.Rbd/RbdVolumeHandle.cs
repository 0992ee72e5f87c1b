using Platter.Ceph;
using Platter.Volumes;

namespace Platter.Rbd;

/// <summary>
/// One front-door handle on an RBD volume or snapshot. Handles of the same volume share one
/// <see cref="RbdVolume"/> (one open image, one lock); disposing the last closes it.
/// </summary>
internal sealed class RbdVolumeHandle : IVolumeHandle, IInlineCompletions
{
    // Block-status queries walk librbd's diff object by object: one call looks at most this much of the image, so
    // a query on a 1 TiB volume does bounded work and the client asks again from where the reply stopped.
    internal const long ExtentQueryBytesMax = 1L << 30;

    // Largest read whose continuation may run on librbd's thread (IInlineCompletions): the NBD door copies a reply this
    // small into its reply buffer and sends it in one call, a few microseconds. A 1 MiB reply's send copies a megabyte
    // into the socket (about 100 µs here), which on librbd's thread would hold up every other completion of the image.
    internal const int InlineReadBytesMax = 64 * 1024;

    private readonly RbdBackend _backend;
    private readonly RbdVolume _volume;
    private int _disposed;
    // Set once by the caller (IInlineCompletions), read by every request after.
    private volatile bool _inline;

    public RbdVolumeHandle(RbdBackend backend, RbdVolume volume)
    {
        _backend = backend;
        _volume = volume;
    }

    public string Name => _volume.Name;

    public long SizeBytes
    {
        get
        {
            ThrowIfClosed();
            try
            {
                return (long)_volume.Image.Size;
            }
            catch (CephException e)
            {
                throw RbdErrors.Map(e, $"size of '{Name}'");
            }
        }
    }

    public bool IsReadOnly => _volume.IsReadOnly;

    /// <summary>
    /// False: an allocation query walks librbd's diff, which asks the OSDs (list-snaps per object). Asked on every
    /// NBD read it cost an OSD round trip per read, on a thread-pool thread blocked in librbd: 4 KiB random reads
    /// ran at 0.42x qemu-nbd (docs/PERFORMANCE.md).
    /// </summary>
    public bool ExtentsAreCheap => false;

    /// <summary>True: every handle of a volume is the same open image, and librbd's flush covers all its writes.</summary>
    public bool FlushCoversAllHandles => true;

    /// <inheritdoc />
    /// <remarks>
    /// From now on a successful request's continuation runs on librbd's completion thread (see <see cref="RbdRequest"/>),
    /// except a read larger than <see cref="InlineReadBytesMax"/>: one thread-pool hop less per request.
    /// </remarks>
    public void CompleteInline() => _inline = true;

    // Reads, writes and flushes return the request itself as their task (it throws the mapped error): an async method
    // around it cost a state machine on the heap and one more continuation per request, on the NBD hot path.
    public ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken cancellationToken = default)
    {
        ThrowIfClosed();
        if (destination.Length == 0) return default;
        return _volume.StartRead(offset, destination, _inline && destination.Length <= InlineReadBytesMax).Checked(Name, "read");
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, bool fua, CancellationToken cancellationToken = default)
    {
        ThrowIfWritable();
        if (source.Length == 0) return default;
        return _volume.StartWrite(offset, source, fua, _inline).Checked(Name, "write");
    }

    public ValueTask FlushAsync(CancellationToken cancellationToken = default)
    {
        ThrowIfClosed();
        if (_volume.IsReadOnly) return default;
        return _volume.StartFlush(_inline).Checked(Name, "flush");
    }

    public async ValueTask TrimAsync(long offset, long length, bool fua, CancellationToken cancellationToken = default)
    {
        ThrowIfWritable();
        if (length == 0) return;
        // librbd frees whole objects and zeroes partial ones (rbd_skip_partial_discard is off), so a trimmed range
        // reads as zeros, as the seam promises.
        long result = await _volume.DiscardAsync(offset, length, _inline).ConfigureAwait(false);
        if (result < 0) throw RbdErrors.ForRequest(result, Name, "trim");
    }

    public async ValueTask WriteZeroesAsync(long offset, long length, bool deallocate, bool fua, CancellationToken cancellationToken = default)
    {
        ThrowIfWritable();
        if (length == 0) return;
        // Both go to librbd as what it does best: a discard frees objects it covers whole; write-zeroes lets librbd
        // choose (it discards too, writing zeros only where an object is covered partly).
        long result = deallocate
            ? await _volume.DiscardAsync(offset, length, _inline).ConfigureAwait(false)
            : await WriteZeroesInChunksAsync(offset, length).ConfigureAwait(false);
        if (result < 0) throw RbdErrors.ForRequest(result, Name, "write-zeroes");
    }

    private async ValueTask<long> WriteZeroesInChunksAsync(long offset, long length)
    {
        // size_t length on 64-bit is enough; chunking keeps one request's object count bounded for librbd.
        const long ChunkBytesMax = 1L << 30;
        while (length > 0)
        {
            long chunk = Math.Min(length, ChunkBytesMax);
            // Only the last chunk's continuation may run on librbd's thread: the others start the next request.
            long result = await _volume.WriteZeroesAsync(offset, chunk, _inline && chunk == length).ConfigureAwait(false);
            if (result < 0) return result;
            offset += chunk;
            length -= chunk;
        }
        return 0;
    }

    public int GetExtents(long offset, long length, Span<VolumeExtent> destination)
    {
        ThrowIfClosed();
        length = Math.Min(length, ExtentQueryBytesMax);
        var (runs, complete) = Walk(fromSnapshot: null, includeParent: true, offset, length, destination.Length);
        return Fill(runs, complete, offset, length, destination, changedOnly: false);
    }

    public int GetChangedExtents(string sinceSnapshot, long offset, long length, Span<VolumeExtent> destination)
    {
        ThrowIfClosed();
        if (!DirtyBitmapSnapshots.Contains(sinceSnapshot))
            throw new StorageException(StorageError.NotFound, $"'{Name}' has no snapshot '{sinceSnapshot}' older than itself");
        length = Math.Min(length, ExtentQueryBytesMax);
        var (runs, complete) = Walk(sinceSnapshot, includeParent: true, offset, length, destination.Length);
        return Fill(runs, complete, offset, length, destination, changedOnly: true);
    }

    public int GetAllocationDepth(long offset, long length, Span<DepthExtent> destination)
    {
        ThrowIfClosed();
        if (destination.Length == 0 || length <= 0) return 0;
        length = Math.Min(length, ExtentQueryBytesMax);
        // Depth 1: what the image itself holds; 2: its parent snapshot's own data, 3: the grandparent's, ...
        // A range takes the depth of the nearest layer holding it.
        var layers = _backend.Lineage(_volume.Image);
        long end = offset + length;
        var bounds = new SortedSet<long> { offset, end };
        var layerRuns = new List<List<(long Offset, long Length)>>();
        try
        {
            foreach (var layer in layers)
            {
                var runs = new List<(long, long)>();
                layer.DiffIterate(null, (ulong)offset, (ulong)length, includeParent: false, wholeObject: false, (o, l, exists) =>
                {
                    if (exists) runs.Add(((long)o, (long)l));
                    return true;
                });
                foreach (var (o, l) in runs)
                {
                    bounds.Add(Math.Max(o, offset));
                    bounds.Add(Math.Min(o + l, end));
                }
                layerRuns.Add(runs);
            }
        }
        catch (CephException e)
        {
            throw RbdErrors.Map(e, $"allocation depth of '{Name}'");
        }
        finally
        {
            foreach (var layer in layers.Skip(1)) layer.Dispose();
        }

        int count = 0;
        long previous = -1;
        foreach (long point in bounds)
        {
            if (previous >= 0 && point > previous)
            {
                int d = 0;
                for (int i = 0; i < layerRuns.Count && d == 0; i++)
                {
                    foreach (var (o, l) in layerRuns[i])
                    {
                        if (o <= previous && previous < o + l)
                        {
                            d = i + 1;
                            break;
                        }
                    }
                }
                if (count > 0 && destination[count - 1].Depth == d)
                {
                    destination[count - 1] = destination[count - 1] with { Length = destination[count - 1].Length + point - previous };
                }
                else
                {
                    if (count == destination.Length) return count;
                    destination[count++] = new DepthExtent(previous, point - previous, d);
                }
            }
            previous = point;
        }
        return count;
    }

    public IReadOnlyList<string> DirtyBitmapSnapshots
    {
        get
        {
            ThrowIfClosed();
            try
            {
                var snapshots = _volume.Image.ListSnapshots();
                if (_volume.Image.Snapshot is { } own)
                {
                    // A snapshot handle can compare only with older snapshots (smaller ids).
                    ulong ownId = snapshots.First(s => s.Name == own).Id;
                    return snapshots.Where(s => s.Id < ownId).Select(s => s.Name).ToArray();
                }
                return snapshots.Select(s => s.Name).ToArray();
            }
            catch (CephException e)
            {
                throw RbdErrors.Map(e, $"snapshots of '{Name}'");
            }
        }
    }

    /// <summary>librbd's diff as (offset, length, exists) runs, at most <paramref name="runsMax"/> of them.</summary>
    private (List<(long Offset, long Length, bool Exists)> Runs, bool Complete) Walk(string? fromSnapshot, bool includeParent, long offset, long length, int runsMax)
    {
        var runs = new List<(long, long, bool)>();
        if (length <= 0 || runsMax == 0) return (runs, true);
        try
        {
            bool complete = _volume.Image.DiffIterate(fromSnapshot, (ulong)offset, (ulong)length, includeParent, wholeObject: false, (o, l, exists) =>
            {
                runs.Add(((long)o, (long)l, exists));
                return runs.Count < runsMax; // enough to fill the reply: stop the walk here
            });
            return (runs, complete);
        }
        catch (CephException e)
        {
            throw RbdErrors.Map(e, fromSnapshot == null ? $"allocation of '{Name}'" : $"changes of '{Name}' since '{fromSnapshot}'");
        }
    }

    /// <summary>
    /// Turns diff runs into consecutive extents from <paramref name="offset"/>: runs are allocated (for a changed-since
    /// query, "changed", whether the new content is data or zeros), the gaps between them not.
    /// </summary>
    private static int Fill(List<(long Offset, long Length, bool Exists)> runs, bool complete, long offset, long length, Span<VolumeExtent> destination, bool changedOnly)
    {
        if (destination.Length == 0 || length <= 0) return 0;
        int count = 0;
        long position = offset;
        long end = offset + length;
        foreach (var (o, l, exists) in runs)
        {
            long start = Math.Max(o, offset);
            long stop = Math.Min(o + l, end);
            if (stop <= start) continue;
            bool allocated = changedOnly || exists;
            if (start > position && !Add(destination, ref count, new VolumeExtent(position, start - position, false))) return count;
            if (!Add(destination, ref count, new VolumeExtent(start, stop - start, allocated))) return count;
            position = stop;
        }
        // Past the last run the image holds nothing, unless the walk stopped early (the client asks again from here).
        if (complete && position < end) Add(destination, ref count, new VolumeExtent(position, end - position, false));
        return count;
    }

    private static bool Add(Span<VolumeExtent> destination, ref int count, VolumeExtent extent)
    {
        if (count > 0 && destination[count - 1].Allocated == extent.Allocated && destination[count - 1].Offset + destination[count - 1].Length == extent.Offset)
        {
            destination[count - 1] = destination[count - 1] with { Length = destination[count - 1].Length + extent.Length };
            return true;
        }
        if (count == destination.Length) return false;
        destination[count++] = extent;
        return true;
    }

    private void ThrowIfClosed()
    {
        if (Volatile.Read(ref _disposed) != 0 || _volume.IsClosed)
            throw new StorageException(StorageError.Closed, $"'{Name}' was closed");
    }

    private void ThrowIfWritable()
    {
        ThrowIfClosed();
        if (_volume.IsReadOnly) throw new StorageException(StorageError.ReadOnly, $"'{Name}' is a snapshot: read-only");
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        _backend.Release(_volume);
    }
}
