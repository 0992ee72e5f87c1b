namespace Platter.Nbd;

/// <summary>
/// One block device served over NBD. The protocol layer knows nothing else about where the
/// bytes live: the server composes volumes into exports, tests use <c>MemoryExport</c>.
/// Implementations are called concurrently from many requests and connections.
/// Errors are reported by throwing <see cref="NbdErrorException"/> with the NBD error to send;
/// any other exception is answered with EIO and logged.
/// </summary>
public interface INbdExport : IDisposable
{
    /// <summary>Export name as negotiated (for volumes: the volume name, or <c>vol@snap</c>).</summary>
    string Name { get; }

    /// <summary>Human readable description for NBD_INFO_DESCRIPTION, or null.</summary>
    string? Description { get; }

    /// <summary>Size in bytes. May change between connections (resize), never during one request.</summary>
    long Size { get; }

    bool IsReadOnly { get; }

    /// <summary>
    /// Called once a connection starts transmission on this export, with who it is (the host records the users of its
    /// volumes; see <c>platter volume status</c>). Nothing by default.
    /// </summary>
    void Opened(NbdConnectionInfo connection)
    {
    }

    /// <summary>True when a flush on any connection covers writes acknowledged on all connections.</summary>
    bool CanMultiConn { get; }

    /// <summary>Smallest I/O the export can do without read-modify-write (1 when it handles any alignment).</summary>
    uint MinimumBlockSize { get; }

    /// <summary>Preferred I/O size (e.g. 4096).</summary>
    uint PreferredBlockSize { get; }

    /// <summary>
    /// True (the default): a structured READ reply asks <see cref="GetAllocation"/> and sends holes as OFFSET_HOLE
    /// chunks. False when that lookup costs more than sending the zeros (it goes to the network): every READ is
    /// answered with its data in one chunk, which is always correct.
    /// </summary>
    bool SparseReads => true;

    /// <summary>Reads <paramref name="destination"/>.Length bytes at <paramref name="offset"/>. The range is validated by the caller.</summary>
    ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken cancellationToken);

    /// <summary>Writes <paramref name="source"/> at <paramref name="offset"/>; when <paramref name="fua"/> the data is durable on return.</summary>
    ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, bool fua, CancellationToken cancellationToken);

    /// <summary>Makes every write acknowledged before this call durable.</summary>
    ValueTask FlushAsync(CancellationToken cancellationToken);

    /// <summary>Deallocates the range; it then reads as zeros.</summary>
    ValueTask TrimAsync(long offset, long length, bool fua, CancellationToken cancellationToken);

    /// <summary>
    /// Makes the range read as zeros. With <paramref name="mayDeallocate"/> (no NO_HOLE flag) the export may
    /// punch a hole. With <paramref name="fastOnly"/> (FAST_ZERO) it must throw <see cref="NbdErrorException"/>
    /// with <see cref="NbdError.NotSupported"/> rather than do slow work.
    /// </summary>
    ValueTask WriteZeroesAsync(long offset, long length, bool mayDeallocate, bool fastOnly, bool fua, CancellationToken cancellationToken);

    /// <summary>Hint that the range will be read soon. May do nothing.</summary>
    ValueTask CacheAsync(long offset, long length, CancellationToken cancellationToken);

    /// <summary>
    /// Describes allocation from <paramref name="offset"/> onwards for base:allocation: fills
    /// <paramref name="destination"/> with consecutive extents starting exactly at <paramref name="offset"/>,
    /// covering at most <paramref name="length"/> bytes, and returns how many were written (at least one
    /// when length &gt; 0). Adjacent extents have different flags.
    /// </summary>
    int GetAllocation(long offset, long length, Span<AllocationExtent> destination);
}

/// <summary>A run of bytes with the same allocation state (NBD base:allocation flags).</summary>
public readonly record struct AllocationExtent(long Length, AllocationFlags Flags);

[Flags]
public enum AllocationFlags : uint
{
    /// <summary>Allocated data.</summary>
    None = 0,
    /// <summary>NBD_STATE_HOLE: not allocated.</summary>
    Hole = 1,
    /// <summary>NBD_STATE_ZERO: reads as zeros.</summary>
    Zero = 2,
}

/// <summary>NBD error values (the protocol's numbers, which are Linux errno values).</summary>
public enum NbdError : uint
{
    None = 0,
    NotPermitted = 1,   // EPERM
    IoError = 5,        // EIO
    OutOfMemory = 12,   // ENOMEM
    InvalidArgument = 22, // EINVAL
    NoSpace = 28,       // ENOSPC
    Overflow = 75,      // EOVERFLOW
    NotSupported = 95,  // ENOTSUP
    Shutdown = 108,     // ESHUTDOWN
}

/// <summary>Thrown by an export to answer a request with a specific NBD error.</summary>
public sealed class NbdErrorException(NbdError error, string message, Exception? inner = null) : Exception(message, inner)
{
    public NbdError Error { get; } = error;
}

/// <summary>
/// Thrown by <see cref="INbdExportProvider.TryOpen"/> when the export exists but cannot be opened now (the store
/// failed, the server is stopping). The connection logs the reason and tells the client, instead of answering
/// "unknown export" as for a name that does not exist.
/// </summary>
/// <param name="message">Why, in a sentence fit for the client and the log.</param>
/// <param name="shuttingDown">The server or its store is going away: answered NBD_REP_ERR_SHUTDOWN.</param>
/// <param name="inner">The underlying failure.</param>
public sealed class NbdExportUnavailableException(string message, bool shuttingDown = false, Exception? inner = null) : Exception(message, inner)
{
    /// <summary>The server or its store is going away (NBD_REP_ERR_SHUTDOWN rather than NBD_REP_ERR_UNKNOWN).</summary>
    public bool ShuttingDown { get; } = shuttingDown;
}

/// <summary>Finds exports by name for a connection. Implemented by the server (volumes) and by tests.</summary>
public interface INbdExportProvider
{
    /// <summary>
    /// Opens the named export, or returns null when there is none. Throws <see cref="NbdExportUnavailableException"/>
    /// when it exists but cannot be opened. The connection disposes it.
    /// </summary>
    INbdExport? TryOpen(string name);

    /// <summary>Names and descriptions for NBD_OPT_LIST.</summary>
    IReadOnlyList<(string Name, string? Description)> List();

    /// <summary>The export used when a client asks for the empty name, or null for none.</summary>
    string? DefaultExportName { get; }
}

/// <summary>
/// An export that must hear when replies are about to leave: the connection calls <see cref="BeforeRepliesSent"/>
/// before every send of reply bytes on a connection serving it (replies of requests served together leave in one send,
/// see ReplyWriter). A write-back cache orders its write-back by it (Platter.Volumes.IClockedAcknowledgements).
/// </summary>
public interface INbdRepliesSending
{
    /// <summary>Reply bytes are about to be sent.</summary>
    void BeforeRepliesSent();
}
