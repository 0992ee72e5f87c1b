using System.Diagnostics.CodeAnalysis;
using Platter.Nbd;
using Platter.Server.Metrics;
using Platter.Storage;

namespace Platter.Server;

/// <summary>
/// Serves one volume handle of any backend as an NBD export. The embedded engine's calls complete inline (page cache,
/// positional I/O) and return completed <see cref="ValueTask"/>s, which pass straight through; a backend that truly
/// waits (RBD) returns pending ones. Storage errors become the NBD error a client can act on.
/// </summary>
public sealed class VolumeExport : INbdExport, INbdRepliesSending
{
    // Largest number of engine extents fetched per block-status reply; NBD clients ask again from where the
    // reply stopped, and 64 runs of 24 bytes keep the scratch buffer on the stack.
    private const int ExtentsPerCallMax = 64;

    private readonly IVolumeHandle _volume;
    private readonly bool _readOnly;
    // Null when metrics are off (platter serve --no-metrics): then a request takes no timestamps at all.
    private readonly VolumeMetrics? _metrics;
    // This connection's entry in the registry of volume users (VolumeUsers), removed when the export closes.
    private readonly VolumeUsers.Registration? _user;
    // The volume's clock of acknowledgements when its writes are ordered by one (a write-back cache), moved before every
    // send of replies; null otherwise.
    private readonly IClockedAcknowledgements? _clock;

    /// <summary>
    /// Wraps <paramref name="volume"/>; the export owns the handle and disposes it. With <paramref name="readOnly"/>
    /// the export is read-only even when the volume is writable (<c>platter serve --read-only</c>).
    /// </summary>
    public VolumeExport(IVolumeHandle volume, bool readOnly = false) : this(volume, readOnly, metrics: null)
    {
    }

    internal VolumeExport(IVolumeHandle volume, bool readOnly, VolumeMetrics? metrics, VolumeUsers.Registration? user = null)
    {
        _user = user;
        _volume = volume;
        _readOnly = readOnly;
        _metrics = metrics;
        // Our replies leave only after BeforeRepliesSent ticks the clock, so a write-back cache may count the writes
        // this connection received before its last send as concurrent (decision 0014).
        if (!_readOnly && volume is IClockedAcknowledgements clock)
        {
            clock.AcknowledgeThroughClock();
            _clock = clock;
        }
        // What follows a successful request here is short and never waits: metrics (per-thread counters), then the NBD
        // layer's reply, which takes the reply writer's lock asynchronously and writes to a non-blocking socket, and
        // completes the connection's waiters asynchronously (its gate, write epochs); closing the export waits for
        // them on the thread pool. So the backend may run it on its completion thread: for RBD one thread-pool hop
        // less per request (docs/PERFORMANCE.md, issue 10). Failures still reach us on the thread pool.
        if (volume is IInlineCompletions inline) inline.CompleteInline();
        Name = volume.Name;
        Description = volume.IsReadOnly ? "Platter snapshot (read-only)" : "Platter volume";
    }

    /// <inheritdoc />
    public void BeforeRepliesSent() => _clock?.AcknowledgementsLeaving();

    /// <inheritdoc />
    public void Opened(NbdConnectionInfo connection) => _user?.Describe(connection.Peer, connection.Tls);

    /// <summary>The engine handle, for the metadata contexts that read more than allocation from it.</summary>
    internal IVolumeHandle Volume => _volume;

    /// <inheritdoc />
    public string Name { get; }

    /// <inheritdoc />
    public string? Description { get; }

    /// <inheritdoc />
    public long Size => _volume.SizeBytes;

    /// <inheritdoc />
    public bool IsReadOnly => _readOnly || _volume.IsReadOnly;

    /// <summary>True when a flush on one handle covers every handle (the embedded engine commits the whole store).</summary>
    public bool CanMultiConn => _volume.FlushCoversAllHandles;

    /// <summary>1: the engine read-modify-writes partial 4 KiB blocks itself.</summary>
    public uint MinimumBlockSize => 1;

    /// <summary>4096: the engine's block size; smaller or unaligned writes cost a read-modify-write.</summary>
    public uint PreferredBlockSize => 4096;

    /// <summary>Holes in read replies only when the volume's allocation map is in memory (not for RBD: see <see cref="IVolumeHandle.ExtentsAreCheap"/>).</summary>
    public bool SparseReads => _volume.ExtentsAreCheap;

    /// <inheritdoc />
    public ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken cancellationToken)
    {
        long start = _metrics is null ? 0 : VolumeMetrics.Start();
        ValueTask read;
        try
        {
            read = _volume.ReadAsync(offset, destination, cancellationToken);
        }
        catch (StorageException e)
        {
            _metrics?.Failed(VolumeOp.Read, e.Error);
            return ValueTask.FromException(Map(e));
        }
        return Translate(read, VolumeOp.Read, destination.Length, start);
    }

    /// <inheritdoc />
    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, bool fua, CancellationToken cancellationToken)
    {
        if (_readOnly) return RefuseWrite();
        long start = _metrics is null ? 0 : VolumeMetrics.Start();
        ValueTask write;
        try
        {
            write = _volume.WriteAsync(offset, source, fua, cancellationToken);
        }
        catch (StorageException e)
        {
            _metrics?.Failed(VolumeOp.Write, e.Error);
            return ValueTask.FromException(Map(e));
        }
        return Translate(write, VolumeOp.Write, source.Length, start);
    }

    /// <inheritdoc />
    public ValueTask FlushAsync(CancellationToken cancellationToken)
    {
        long start = _metrics is null ? 0 : VolumeMetrics.Start();
        ValueTask flush;
        try
        {
            flush = _volume.FlushAsync(cancellationToken);
        }
        catch (StorageException e)
        {
            _metrics?.Failed(VolumeOp.Flush, e.Error);
            return ValueTask.FromException(Map(e));
        }
        return Translate(flush, VolumeOp.Flush, 0, start);
    }

    /// <inheritdoc />
    public ValueTask TrimAsync(long offset, long length, bool fua, CancellationToken cancellationToken)
    {
        if (_readOnly) return RefuseWrite();
        long start = _metrics is null ? 0 : VolumeMetrics.Start();
        ValueTask trim;
        try
        {
            trim = _volume.TrimAsync(offset, length, fua, cancellationToken);
        }
        catch (StorageException e)
        {
            _metrics?.Failed(VolumeOp.Trim, e.Error);
            return ValueTask.FromException(Map(e));
        }
        return Translate(trim, VolumeOp.Trim, 0, start);
    }

    /// <inheritdoc />
    /// <remarks>
    /// Without NO_HOLE the backend zeroes by dropping whole blocks from the map (a metadata update) and rewriting at
    /// most the two partial blocks at the ends: always fast, so FAST_ZERO succeeds. With NO_HOLE the client asked for
    /// the range to stay provisioned (it reads back as allocated data), so zeros are written like any data: that is
    /// no faster than a write, so NO_HOLE with FAST_ZERO is answered ENOTSUP, as the protocol requires.
    /// </remarks>
    public ValueTask WriteZeroesAsync(long offset, long length, bool mayDeallocate, bool fastOnly, bool fua, CancellationToken cancellationToken)
    {
        if (_readOnly) return RefuseWrite();
        if (!mayDeallocate && fastOnly)
            return ValueTask.FromException(new NbdErrorException(NbdError.NotSupported, "zeroing without deallocating writes zeros: not fast"));
        long start = _metrics is null ? 0 : VolumeMetrics.Start();
        ValueTask zero;
        try
        {
            zero = _volume.WriteZeroesAsync(offset, length, deallocate: mayDeallocate, fua, cancellationToken);
        }
        catch (StorageException e)
        {
            _metrics?.Failed(VolumeOp.WriteZeroes, e.Error);
            return ValueTask.FromException(Map(e));
        }
        return Translate(zero, VolumeOp.WriteZeroes, 0, start);
    }

    // Backends complete most requests inline (the embedded engine always does, except flushes): a completed task
    // passes through without a state machine; only a pending or failed one pays for the await that maps its error.
    // Metrics are recorded when the request completes, on whichever path.
    private ValueTask Translate(ValueTask task, VolumeOp op, int bytes, long start)
    {
        if (!task.IsCompletedSuccessfully) return TranslateSlow(task, op, bytes, start);
        _metrics?.Done(op, bytes, start);
        return default;
    }

    private async ValueTask TranslateSlow(ValueTask task, VolumeOp op, int bytes, long start)
    {
        try
        {
            await task.ConfigureAwait(false);
        }
        catch (StorageException e)
        {
            _metrics?.Failed(op, e.Error);
            throw Map(e);
        }
        _metrics?.Done(op, bytes, start);
    }

    // The protocol layer already answers EPERM for a read-only export (it advertises NBD_FLAG_READ_ONLY and
    // refuses at the edge); this is the assertion behind that check, so no other caller can write through.
    private ValueTask RefuseWrite() =>
        ValueTask.FromException(new NbdErrorException(NbdError.NotPermitted, $"volume '{Name}' is served read-only"));

    /// <summary>Does nothing: reads come from the page cache and the map cache already.</summary>
    public ValueTask CacheAsync(long offset, long length, CancellationToken cancellationToken) => default;

    /// <inheritdoc />
    public int GetAllocation(long offset, long length, Span<AllocationExtent> destination)
    {
        if (length <= 0 || destination.IsEmpty) return 0;
        Span<VolumeExtent> runs = stackalloc VolumeExtent[Math.Min(destination.Length, ExtentsPerCallMax)];
        int count;
        try
        {
            count = _volume.GetExtents(offset, length, runs);
        }
        catch (StorageException e)
        {
            throw Map(e);
        }

        // The engine's runs are already maximal, but merge anyway: the protocol forbids adjacent extents with
        // equal flags and a client may reject a reply that has them.
        int written = 0;
        long expected = offset;
        for (int i = 0; i < count; i++)
        {
            var run = runs[i];
            if (run.Length <= 0) continue;
            if (run.Offset != expected)
                throw new NbdErrorException(NbdError.IoError, $"volume '{Name}': extent map has a gap at {expected}");
            expected += run.Length;
            var flags = run.Allocated ? AllocationFlags.None : AllocationFlags.Hole | AllocationFlags.Zero;
            if (written > 0 && destination[written - 1].Flags == flags)
                destination[written - 1] = new AllocationExtent(destination[written - 1].Length + run.Length, flags);
            else
                destination[written++] = new AllocationExtent(run.Length, flags);
        }
        return written;
    }

    /// <summary>Closes the volume handle.</summary>
    public void Dispose()
    {
        _volume.Dispose();
        _user?.Dispose();
    }

    /// <summary>Maps a storage failure to the NBD error a client understands.</summary>
    public static NbdErrorException Map(StorageException e) => new(ToNbdError(e.Error), e.Message, e);

    /// <summary>The NBD error for a storage error: ENOSPC, EINVAL and EPERM where the client can act, else EIO.</summary>
    public static NbdError ToNbdError(StorageError error) => error switch
    {
        StorageError.NoSpace => NbdError.NoSpace,
        StorageError.OutOfRange or StorageError.InvalidArgument => NbdError.InvalidArgument,
        StorageError.ReadOnly => NbdError.NotPermitted,
        _ => NbdError.IoError,
    };
}
