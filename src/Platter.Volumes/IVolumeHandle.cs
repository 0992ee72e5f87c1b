namespace Platter.Volumes;

/// <summary>
/// I/O on one volume or snapshot, as a front door (NBD today) serves it. Thread-safe: many requests may be in
/// flight on one handle and on many handles of the same volume.
/// </summary>
/// <remarks>
/// <para>Offsets and lengths are bytes and need no alignment; the caller has checked them against
/// <see cref="SizeBytes"/> (validate at the edge), and an implementation asserts rather than trusts that.</para>
/// <para>The asynchronous methods may complete synchronously (the embedded engine does, from the page cache) and
/// report failures as a faulted task or by throwing: callers handle both. Expected failures are
/// <see cref="StorageException"/>s (NoSpace, ChecksumMismatch, IoError, ReadOnly, StoreFailed, Closed, ...).</para>
/// </remarks>
public interface IVolumeHandle : IDisposable
{
    /// <summary>The volume's name, or <c>volume@snapshot</c> for a snapshot.</summary>
    string Name { get; }

    /// <summary>Current size in bytes (a resize is seen by the next request).</summary>
    long SizeBytes { get; }

    /// <summary>True for a snapshot: writes, trims and zeroing fail with ReadOnly.</summary>
    bool IsReadOnly { get; }

    /// <summary>True when a flush on any handle of the store covers writes acknowledged on every handle (NBD multi-conn).</summary>
    bool FlushCoversAllHandles { get; }

    /// <summary>
    /// True when <see cref="GetExtents"/> answers from memory (the embedded engine's map). False when it costs a
    /// round trip (an RBD image asks the OSDs object by object): a front door then must not ask it on every read,
    /// only when a client asks for block status. No default: a wrapper that forgot to pass it on made every read of a
    /// cached RBD volume ask the OSDs for its allocation first (docs/PERFORMANCE.md, issue 11).
    /// </summary>
    bool ExtentsAreCheap { get; }

    /// <summary>Reads <paramref name="destination"/>.Length bytes; unmapped ranges read as zeros.</summary>
    ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken cancellationToken = default);

    /// <summary>Writes; acknowledged on completion, durable after the next flush, or on completion when <paramref name="fua"/>.</summary>
    ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, bool fua, CancellationToken cancellationToken = default);

    /// <summary>Makes every write acknowledged before this call durable.</summary>
    ValueTask FlushAsync(CancellationToken cancellationToken = default);

    /// <summary>Deallocates the range (NBD TRIM); it then reads as zeros. Durable on completion when <paramref name="fua"/>.</summary>
    ValueTask TrimAsync(long offset, long length, bool fua, CancellationToken cancellationToken = default);

    /// <summary>
    /// Makes the range read as zeros. With <paramref name="deallocate"/> whole blocks are unmapped (a metadata update,
    /// always fast); without it zeros are written and the range stays allocated (as fast as a write). Durable on
    /// completion when <paramref name="fua"/>.
    /// </summary>
    ValueTask WriteZeroesAsync(long offset, long length, bool deallocate, bool fua, CancellationToken cancellationToken = default);

    /// <summary>
    /// Allocation map from <paramref name="offset"/>: fills <paramref name="destination"/> with consecutive runs
    /// covering at most <paramref name="length"/> bytes and returns how many (at least one when length &gt; 0 and
    /// the destination has room). A reply may cover less than asked; the caller asks again from where it stopped.
    /// </summary>
    int GetExtents(long offset, long length, Span<VolumeExtent> destination);

    /// <summary>
    /// Changed-since map from <paramref name="offset"/>: runs whose Allocated flag means "differs from snapshot
    /// <paramref name="sinceSnapshot"/>". NotFound when the volume has no such snapshot older than this handle.
    /// </summary>
    int GetChangedExtents(string sinceSnapshot, long offset, long length, Span<VolumeExtent> destination);

    /// <summary>Allocation depth map from <paramref name="offset"/> (see <see cref="DepthExtent"/>).</summary>
    int GetAllocationDepth(long offset, long length, Span<DepthExtent> destination);

    /// <summary>Names of the snapshots a changed-since query may name: the volume's snapshots older than this handle's point in time.</summary>
    IReadOnlyList<string> DirtyBitmapSnapshots { get; }
}
