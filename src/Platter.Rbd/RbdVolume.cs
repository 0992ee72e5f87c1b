using Platter.Ceph;
using Platter.Volumes;

namespace Platter.Rbd;

/// <summary>
/// An image opened for serving: its own RADOS connection, the image, and (for a writable volume) RBD's exclusive lock
/// held explicitly. Every NBD connection to the volume shares it (one open image, one lock holder per server), so a
/// flush on any of them covers writes acknowledged on all.
/// </summary>
/// <remarks>
/// One connection per served volume is what makes fencing precise: the lock records the holder's client address,
/// taking over blocklists that address, and the address belongs to this connection alone, so a fenced server loses
/// exactly this volume and keeps serving its others. A snapshot (read-only, no lock) shares the backend's catalog
/// connection instead: nothing ever fences a reader.
/// </remarks>
internal sealed unsafe class RbdVolume : IDisposable
{
    private readonly RadosCluster? _connection; // null for a snapshot (uses the catalog's)
    private readonly RadosIoContext? _io;
    private int _references = 1;
    private volatile bool _closed;

    private RbdVolume(string name, RbdImage image, RadosCluster? connection, RadosIoContext? io, bool readOnly)
    {
        Name = name;
        Image = image;
        _connection = connection;
        _io = io;
        IsReadOnly = readOnly;
    }

    public string Name { get; }

    public RbdImage Image { get; }

    public bool IsReadOnly { get; }

    public bool IsClosed => _closed;

    /// <summary>The client address holding the lock (this connection's), for logs and takeover.</summary>
    public string? Address => _connection?.Address;

    /// <summary>
    /// Opens <paramref name="name"/> on a new connection and takes its exclusive lock. InUse, naming the holder, when
    /// another client holds it; the connection is closed again on any failure.
    /// </summary>
    public static RbdVolume OpenWritable(RbdBackend backend, string name)
    {
        var connection = backend.Connect();
        RadosIoContext? io = null;
        RbdImage? image = null;
        try
        {
            io = connection.OpenPool(backend.Pool);
            // Closed later: the lock must be free the moment the last client leaves, for the next opener (this
            // server's next client, another server), but librbd may still be inside the image for a moment after a
            // synchronous call returned (issue 10's race), so Dispose releases the lock and the close comes later.
            image = RbdImage.Open(io, name, closeLater: true);
            // Without the feature rbd_lock_acquire fails with a bare EINVAL, and nothing would keep a second writer
            // (another server, 'rbd map' elsewhere) off the image: refuse, naming the fix.
            if ((image.Features & RbdFeatures.ExclusiveLock) == 0)
                throw new StorageException(StorageError.InvalidArgument,
                    $"volume '{name}' cannot be served read-write: its RBD image lacks the exclusive-lock feature that keeps it to one writer; " +
                    $"enable it with 'rbd feature enable {backend.Pool}/{name} exclusive-lock'");
            try
            {
                image.AcquireExclusiveLock();
            }
            catch (CephException e) when (e.Errno is CephException.EROFS or CephException.EBUSY)
            {
                throw new StorageException(StorageError.InUse,
                    $"volume '{name}' is served by another server: {backend.DescribeHolder(image)}; " +
                    "if that server is dead, take the volume over ('platter volume takeover')", e);
            }
            // Who holds it, for the refusal another server prints (see DescribeHolder). Written while holding the lock.
            image.SetMetadata(RbdBackend.HolderKey, $"{Environment.MachineName} pid {Environment.ProcessId} {connection.Address}");
            return new RbdVolume(name, image, connection, io, readOnly: false);
        }
        catch (CephException e)
        {
            image?.Dispose();
            io?.Dispose();
            connection.Dispose();
            throw RbdErrors.Map(e, $"opening volume '{name}'");
        }
        catch
        {
            image?.Dispose();
            io?.Dispose();
            connection.Dispose();
            throw;
        }
    }

    public static RbdVolume OpenSnapshot(RadosIoContext catalog, string volume, string snapshot)
    {
        try
        {
            return new RbdVolume($"{volume}@{snapshot}", RbdImage.Open(catalog, volume, snapshot), null, null, readOnly: true);
        }
        catch (CephException e)
        {
            throw RbdErrors.Map(e, $"opening snapshot '{volume}@{snapshot}'");
        }
    }

    /// <summary>Adds a sharer; false when the volume was closed meanwhile (the caller opens it anew).</summary>
    public bool TryAddReference()
    {
        while (true)
        {
            int current = Volatile.Read(ref _references);
            if (current == 0) return false;
            if (Interlocked.CompareExchange(ref _references, current + 1, current) == current) return true;
        }
    }

    /// <summary>Drops a sharer; true when it was the last (the caller then disposes).</summary>
    public bool Release() => Interlocked.Decrement(ref _references) == 0;

    // ---- I/O: librbd's asynchronous calls, each a pooled request ----

    // Each call hands back the started request: the handle returns it as its task (RbdRequest.Checked, or Task).
    // With inline, a successful completion runs the caller's continuation on librbd's thread (RbdRequest).
    public RbdRequest StartRead(long offset, Memory<byte> destination, bool inline)
    {
        var request = RbdRequest.Rent();
        var pin = destination.Pin(); // unpinned by the request when librbd completes it
        var completion = request.Start(pin, inline);
        try
        {
            Image.BeginRead((ulong)offset, (byte*)pin.Pointer, (nuint)destination.Length, completion, RbdOpFlags.None);
        }
        catch
        {
            request.Abandon(completion);
            throw;
        }
        return request;
    }

    public RbdRequest StartWrite(long offset, ReadOnlyMemory<byte> source, bool fua, bool inline)
    {
        var request = RbdRequest.Rent();
        var pin = source.Pin();
        var completion = request.Start(pin, inline);
        try
        {
            // FUA needs nothing extra with librbd's cache off (a completed write is on every replica); the flag
            // keeps it right should someone turn the cache on.
            Image.BeginWrite((ulong)offset, (byte*)pin.Pointer, (nuint)source.Length, completion,
                fua ? RbdOpFlags.FadviseFua : RbdOpFlags.None);
        }
        catch
        {
            request.Abandon(completion);
            throw;
        }
        return request;
    }

    public RbdRequest StartFlush(bool inline)
    {
        var request = RbdRequest.Rent();
        var completion = request.Start(default, inline);
        try
        {
            Image.BeginFlush(completion);
        }
        catch
        {
            request.Abandon(completion);
            throw;
        }
        return request;
    }

    public ValueTask<long> DiscardAsync(long offset, long length, bool inline)
    {
        var request = RbdRequest.Rent();
        var completion = request.Start(default, inline);
        try
        {
            Image.BeginDiscard((ulong)offset, (ulong)length, completion);
        }
        catch
        {
            request.Abandon(completion);
            throw;
        }
        return request.Task;
    }

    public ValueTask<long> WriteZeroesAsync(long offset, long length, bool inline)
    {
        var request = RbdRequest.Rent();
        var completion = request.Start(default, inline);
        try
        {
            Image.BeginWriteZeroes((ulong)offset, (nuint)length, completion);
        }
        catch
        {
            request.Abandon(completion);
            throw;
        }
        return request.Task;
    }

    /// <summary>Why the flush and lock release at close failed (a fenced connection), or null.</summary>
    public CephException? ReleaseFailure { get; private set; }

    /// <summary>Marks the volume closed: its handles fail with Closed from now on (deleted, or the backend stops).</summary>
    public void MarkClosed() => _closed = true;

    public void Dispose()
    {
        _closed = true;
        try
        {
            // Flushes and gives up the lock now; the image (its watch, then this connection) closes a moment later.
            // A fenced connection can do neither: its lock was broken already and its writes fail.
            if (!IsReadOnly && Image.ReleaseForLaterClose() is { } error) ReleaseFailure = error;
            Image.Dispose();
        }
        finally
        {
            _io?.Dispose();
            _connection?.Dispose();
        }
    }
}
