using System.Collections.Concurrent;

namespace Platter.Nbd.Tests;

/// <summary>
/// A sparse in-memory export: pages of <see cref="PageSize"/> bytes are allocated on first write and dropped by
/// trim or hole-punching zero writes, so allocation (base:allocation, OFFSET_HOLE) is observable. Records the
/// order of completed writes and flushes so tests can check flush ordering.
/// </summary>
public sealed class MemoryExport : INbdExport
{
    public const int PageSize = 4096;
    private readonly ConcurrentDictionary<long, byte[]> _pages = new();
    private readonly object _lock = new();
    private readonly List<string> _events = [];
    private int _writesInProgress;

    public MemoryExport(string name, long size, bool readOnly = false, uint minimumBlockSize = 1, string? description = null)
    {
        Name = name;
        Size = size;
        IsReadOnly = readOnly;
        MinimumBlockSize = minimumBlockSize;
        Description = description;
    }

    public string Name { get; }
    public string? Description { get; }
    public long Size { get; }
    public bool IsReadOnly { get; }
    public bool CanMultiConn => true;
    public uint MinimumBlockSize { get; }
    public uint PreferredBlockSize => 4096;

    /// <summary>When set, every write waits for this task before completing (to hold writes in flight).</summary>
    public Func<long, Task>? WriteGate { get; set; }

    /// <summary>When set, reads at this offset fail with the exception (to test error mapping).</summary>
    public Func<long, Exception?>? ReadFault { get; set; }

    public int FlushCount { get; private set; }
    public bool FlushSawWriteInProgress { get; private set; }
    public int Disposed;

    public IReadOnlyList<string> Events { get { lock (_lock) return [.. _events]; } }

    public int AllocatedPages => _pages.Count;

    public ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken cancellationToken)
    {
        if (ReadFault?.Invoke(offset) is { } fault) throw fault;
        Span<byte> dst = destination.Span;
        int done = 0;
        while (done < dst.Length)
        {
            long pos = offset + done;
            long page = pos / PageSize;
            int inPage = (int)(pos % PageSize);
            int n = Math.Min(PageSize - inPage, dst.Length - done);
            if (_pages.TryGetValue(page, out byte[]? data))
            {
                lock (data) data.AsSpan(inPage, n).CopyTo(dst.Slice(done, n));
            }
            else
            {
                dst.Slice(done, n).Clear();
            }
            done += n;
        }
        return default;
    }

    public async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, bool fua, CancellationToken cancellationToken)
    {
        Interlocked.Increment(ref _writesInProgress);
        try
        {
            if (WriteGate is { } gate) await gate(offset);
            WriteBytes(offset, source.Span);
            lock (_lock) _events.Add($"write {offset}");
        }
        finally
        {
            Interlocked.Decrement(ref _writesInProgress);
        }
    }

    /// <summary>Test setup: writes without events or gates.</summary>
    public void Fill(long offset, ReadOnlySpan<byte> data) => WriteBytes(offset, data);

    private void WriteBytes(long offset, ReadOnlySpan<byte> src)
    {
        int done = 0;
        while (done < src.Length)
        {
            long pos = offset + done;
            long page = pos / PageSize;
            int inPage = (int)(pos % PageSize);
            int n = Math.Min(PageSize - inPage, src.Length - done);
            byte[] data = _pages.GetOrAdd(page, _ => new byte[PageSize]);
            lock (data) src.Slice(done, n).CopyTo(data.AsSpan(inPage, n));
            done += n;
        }
    }

    public ValueTask FlushAsync(CancellationToken cancellationToken)
    {
        if (Volatile.Read(ref _writesInProgress) > 0) FlushSawWriteInProgress = true;
        lock (_lock)
        {
            FlushCount++;
            _events.Add("flush");
        }
        return default;
    }

    public ValueTask TrimAsync(long offset, long length, bool fua, CancellationToken cancellationToken)
    {
        Zero(offset, length, deallocate: true);
        lock (_lock) _events.Add($"trim {offset}");
        return default;
    }

    public ValueTask WriteZeroesAsync(long offset, long length, bool mayDeallocate, bool fastOnly, bool fua, CancellationToken cancellationToken)
    {
        // Zeroing is fast only when whole pages can be dropped.
        if (fastOnly && (!mayDeallocate || offset % PageSize != 0 || length % PageSize != 0))
            throw new NbdErrorException(NbdError.NotSupported, "fast zero needs whole pages and holes allowed");
        Zero(offset, length, mayDeallocate);
        lock (_lock) _events.Add($"zero {offset}");
        return default;
    }

    private void Zero(long offset, long length, bool deallocate)
    {
        long end = offset + length;
        long pos = offset;
        while (pos < end)
        {
            long page = pos / PageSize;
            int inPage = (int)(pos % PageSize);
            int n = (int)Math.Min(PageSize - inPage, end - pos);
            if (deallocate && n == PageSize) _pages.TryRemove(page, out _);
            else if (_pages.TryGetValue(page, out byte[]? data)) lock (data) data.AsSpan(inPage, n).Clear();
            else if (!deallocate) WriteBytes(pos, new byte[n]);
            pos += n;
        }
    }

    public ValueTask CacheAsync(long offset, long length, CancellationToken cancellationToken) => default;

    /// <summary>False: act like an export whose allocation lookup is a network round trip (RBD).</summary>
    public bool SparseReads { get; set; } = true;

    /// <summary>How many times <see cref="GetAllocation"/> was asked.</summary>
    public int AllocationQueries => Volatile.Read(ref _allocationQueries);
    private int _allocationQueries;

    public int GetAllocation(long offset, long length, Span<AllocationExtent> destination)
    {
        Interlocked.Increment(ref _allocationQueries);
        int count = 0;
        long end = offset + length;
        long pos = offset;
        while (pos < end && count < destination.Length)
        {
            bool allocated = _pages.ContainsKey(pos / PageSize);
            long runEnd = pos;
            while (runEnd < end && _pages.ContainsKey(runEnd / PageSize) == allocated)
                runEnd = Math.Min(end, (runEnd / PageSize + 1) * PageSize);
            destination[count++] = new AllocationExtent(runEnd - pos, allocated ? AllocationFlags.None : AllocationFlags.Hole | AllocationFlags.Zero);
            pos = runEnd;
        }
        return count;
    }

    public void Dispose() => Interlocked.Increment(ref Disposed);
}

/// <summary>Exports by name; each open returns the same shared MemoryExport (disposal is counted, not destructive).</summary>
public sealed class MemoryExportProvider(params MemoryExport[] exports) : INbdExportProvider
{
    private readonly Dictionary<string, MemoryExport> _exports = exports.ToDictionary(e => e.Name);

    public string? DefaultExportName { get; set; } = exports.Length > 0 ? exports[0].Name : null;

    public MemoryExport this[string name] => _exports[name];

    /// <summary>Opens of any export so far (each open is one volume handle in the real server).</summary>
    public int Opened;

    public INbdExport? TryOpen(string name)
    {
        Interlocked.Increment(ref Opened);
        return _exports.GetValueOrDefault(name);
    }

    public IReadOnlyList<(string Name, string? Description)> List() => [.. _exports.Values.Select(e => (e.Name, e.Description))];
}
