using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using Platter.Volumes;

namespace Platter.VhostUser.Internal;

/// <summary>What a queue serves: the volume and what the driver negotiated.</summary>
internal sealed class BlkTarget(IVolumeHandle volume, bool readOnly, bool writeThrough, string id)
{
    public IVolumeHandle Volume { get; } = volume;
    public bool ReadOnly { get; } = readOnly;
    /// <summary>The driver did not negotiate VIRTIO_BLK_F_FLUSH: it will never flush, so every write is made durable (FUA).</summary>
    public bool WriteThrough { get; } = writeThrough;
    /// <summary>The GET_ID answer: the volume name, cut to 20 bytes.</summary>
    public string Id { get; } = id;
}

/// <summary>
/// One in-flight virtio-blk request; pooled per queue so a request allocates nothing, and its own thread-pool work item
/// when it runs beside the queue's thread.
/// </summary>
internal sealed unsafe class BlkRequest(BlkQueue? owner = null) : IThreadPoolWorkItem
{
    public readonly Segment[] Segments = new Segment[VhostUserLimits.SegmentsPerRequestMax];
    public readonly PointerMemory Buffer = new();
    public Chain Chain;
    public ushort Head;
    public uint WrittenBytes;
    /// <summary>The write buffer the request holds while the engine writes from it (one of the two, or neither).</summary>
    public byte[]? SmallBuffer;
    public IntPtr NativeBuffer;

    void IThreadPoolWorkItem.Execute() => owner!.RunOffloaded(this);
}

/// <summary>
/// One started virtqueue of a vhost-user-blk device: a thread that waits on the kick eventfd, pops chains, runs them as
/// virtio-blk requests against the volume, returns them on the used ring and signals the call eventfd.
/// </summary>
/// <remarks>
/// <para>Requests of one queue are in flight together and complete in any order (virtio allows it: the used ring names
/// each chain). Small requests run on the queue's thread, which the embedded engine completes inline (page cache,
/// positional I/O); each goes to the used ring as soon as it is done and the guest is signalled once per batch. A
/// request of <see cref="VhostUserLimits.OffloadBytesMin"/> or more with others waiting behind it runs on the thread
/// pool instead, so that several large requests move data on several cores, and signals the guest itself when done.
/// A request that truly waits (RBD) completes on its own continuation. Every push to the used ring is under
/// <see cref="_usedLock"/>; in-flight requests are bounded by the queue size, even when a hostile driver publishes the
/// same head twice.</para>
/// <para>A driver that breaks the ring (indices out of range, a looping chain, descriptors out of order) gets the queue
/// stopped ("broken") with one log line: nothing more is read from it until the front-end sets it up again. A request
/// whose buffers are not in guest memory, or that breaks virtio-blk's framing, gets VIRTIO_BLK_S_IOERR.</para>
/// </remarks>
internal sealed class BlkQueue : IDisposable
{
    private readonly SplitVirtqueue _queue;
    private readonly BlkTarget _target;
    private readonly int _index;
    private readonly ILogger _log;
    private readonly object _usedLock = new();
    private readonly Stack<BlkRequest> _pool = new();
    // Page-aligned write buffers (see RentWriteBuffer); guarded by itself, freed with the queue.
    private readonly Stack<IntPtr> _writeBuffers = new();
    private bool _writeBuffersFreed;
    private int _wakeFd;
    private int _kickFd;
    private int _callFd;
    private Thread? _thread;
    private volatile bool _stopping;
    private volatile bool _enabled;
    private int _inFlight;

    public BlkQueue(int index, SplitVirtqueue queue, BlkTarget target, int kickFd, int callFd, bool enabled, ILogger log)
    {
        _index = index;
        _queue = queue;
        _target = target;
        _kickFd = kickFd;
        _callFd = callFd;
        _enabled = enabled;
        _log = log;
        _wakeFd = Native.eventfd(0, Native.EFD_CLOEXEC);
        if (_wakeFd < 0) throw new VhostUserException($"eventfd failed: errno {Native.Errno}");
    }

    /// <summary>The ring's reason for being stopped by a driver error, or null.</summary>
    public string? BrokenReason => _queue.BrokenReason;

    public void Start()
    {
        _thread = new Thread(Run) { IsBackground = true, Name = $"vhost-user-blk {_target.Volume.Name} q{_index}" };
        _thread.Start();
    }

    /// <summary>A new call eventfd (SET_VRING_CALL while running); the old one is closed, the new one signalled once (see <see cref="Run"/>).</summary>
    public void ReplaceCallFd(int fd)
    {
        lock (_usedLock)
        {
            Native.CloseIfOpen(ref _callFd);
            _callFd = fd;
            SignalLocked();
        }
    }

    public void SetEnabled(bool enabled)
    {
        _enabled = enabled;
        Native.SignalEventFd(_wakeFd);
    }

    /// <summary>
    /// Stops the worker and waits for every in-flight request to be returned to the used ring (they write guest memory,
    /// which must stay mapped until then). Returns the next available index to process, for GET_VRING_BASE.
    /// </summary>
    public ushort Stop()
    {
        _stopping = true;
        Native.SignalEventFd(_wakeFd);
        _thread?.Join();
        // A backend call that never returns would hang the stop; the volume seam bounds its calls (RBD times out).
        var spin = new SpinWait();
        while (Volatile.Read(ref _inFlight) > 0) spin.SpinOnce(sleep1Threshold: 10);
        // The last completion freed its slot inside this lock: once we hold it, it is done with guest memory.
        lock (_usedLock)
        {
        }
        return _queue.LastAvailableIndex;
    }

    /// <summary>Hands the kick descriptor back (after <see cref="Stop"/>), so a restart on new memory keeps it.</summary>
    public int DetachKickFd()
    {
        int fd = _kickFd;
        _kickFd = -1;
        return fd;
    }

    /// <summary>Hands the call descriptor back: it outlives a stop (the front-end does not always send it again).</summary>
    public int DetachCallFd()
    {
        lock (_usedLock)
        {
            int fd = _callFd;
            _callFd = -1;
            return fd;
        }
    }

    public void Dispose()
    {
        Stop();
        Native.CloseIfOpen(ref _wakeFd);
        Native.CloseIfOpen(ref _kickFd);
        lock (_usedLock) Native.CloseIfOpen(ref _callFd);
        // Stopped: no request holds a write buffer any more.
        lock (_writeBuffers)
        {
            _writeBuffersFreed = true;
            while (_writeBuffers.TryPop(out IntPtr buffer)) FreeAligned(buffer);
        }
    }

    private static unsafe void FreeAligned(IntPtr buffer) => NativeMemory.AlignedFree((void*)buffer);

    private unsafe void Run()
    {
        var fds = stackalloc Native.PollFd[2];
        fds[0] = new Native.PollFd { Fd = _kickFd, Events = Native.POLLIN };
        fds[1] = new Native.PollFd { Fd = _wakeFd, Events = Native.POLLIN };
        bool reported = false;
        // One interrupt at start: a server that went away may have put its last completions on the used ring after
        // QEMU had let go of the call eventfd it signalled (QEMU drops it as soon as the socket closes), and a driver
        // waiting for them would wait for ever. A spurious one costs the driver a look at the used ring.
        Notify();
        // Requests the driver queued before the kick fd arrived (a reconnect) are taken at once.
        while (!_stopping)
        {
            if (_enabled && _queue.BrokenReason is null) Process();
            if (_queue.BrokenReason is { } reason && !reported)
            {
                reported = true;
                _log.LogError("vhost-user-blk {Volume}: queue {Queue} stopped, the guest driver broke it: {Reason}", _target.Volume.Name, _index, reason);
            }
            fds[0].Revents = 0;
            fds[1].Revents = 0;
            int n = Native.poll(fds, 2, -1);
            if (n < 0 && Native.Errno != Native.EINTR) throw new VhostUserException($"poll on the kick eventfd failed: errno {Native.Errno}");
            if ((fds[1].Revents & Native.POLLIN) != 0) Native.DrainEventFd(_wakeFd);
            if ((fds[0].Revents & Native.POLLIN) != 0) Native.DrainEventFd(_kickFd);
            else if (fds[0].Revents != 0)
            {
                // The front-end closed its end of the kick eventfd: nothing more will come this way.
                _log.LogDebug("vhost-user-blk {Volume}: queue {Queue} kick descriptor hung up", _target.Volume.Name, _index);
                fds[0].Fd = -1;
            }
        }
    }

    private void Process()
    {
        // Completions pushed to the used ring by this batch and not yet signalled.
        bool unsignalled = false;
        while (Volatile.Read(ref _inFlight) < _queue.Size && !_stopping)
        {
            var popped = _queue.TryPop(out ushort head);
            if (popped != PopResult.Popped) break;
            var request = Rent();
            request.Head = head;
            if (!_queue.TryReadChain(head, request.Segments, out request.Chain))
            {
                Return(request);
                break;
            }
            Interlocked.Increment(ref _inFlight);
            bool large = request.Chain.Bytes >= VhostUserLimits.OffloadBytesMin;
            if (large && _queue.HasAvailable)
            {
                // More waits behind it: move this one's data on another core while this thread takes the next.
                ThreadPool.UnsafeQueueUserWorkItem(request, preferLocal: false);
                continue;
            }
            if (large && unsignalled)
            {
                // Requests done already are not held behind a long one.
                Notify();
                unsignalled = false;
            }
            var run = ExecuteAsync(request);
            if (run.IsCompleted)
            {
                Complete(request, run.Result, signal: false);
                unsignalled = true;
            }
            else
            {
                CompleteLater(request, run);
            }
        }
        if (unsignalled) Notify();
    }

    /// <summary>Runs a request handed to the thread pool by <see cref="Process"/>; it signals its own completion.</summary>
    internal void RunOffloaded(BlkRequest request)
    {
        var run = ExecuteAsync(request);
        if (run.IsCompleted) Complete(request, run.Result, signal: true);
        else CompleteLater(request, run);
    }

    private async void CompleteLater(BlkRequest request, ValueTask<byte> run)
    {
        // ExecuteAsync catches everything, so this await never throws.
        byte status = await run.ConfigureAwait(false);
        Complete(request, status, signal: true);
    }

    /// <summary>
    /// Writes the status, returns the chain on the used ring (in completion order, wherever it ran), signals the guest
    /// when <paramref name="signal"/> (else the batch does) and frees the slot. The slot is freed last and under
    /// <see cref="_usedLock"/>: once <see cref="Stop"/> has seen no request in flight and taken that lock, no completion
    /// touches guest memory or the eventfds any more.
    /// </summary>
    private unsafe void Complete(BlkRequest request, byte status, bool signal)
    {
        uint written = 0;
        ushort head = request.Head;
        if (request.Chain.Status is not null)
        {
            *request.Chain.Status = status;
            written = request.WrittenBytes + 1;
        }
        else
        {
            _log.LogWarning("vhost-user-blk {Volume}: queue {Queue} request {Head} has no writable status byte in guest memory; returned unanswered",
                _target.Volume.Name, _index, head);
        }
        Return(request);
        lock (_usedLock)
        {
            _queue.PushUsed(head, written);
            if (signal) SignalLocked();
            // The worker stops popping at the in-flight bound; wake it when a slot frees up.
            if (Interlocked.Decrement(ref _inFlight) == _queue.Size - 1) Native.SignalEventFd(_wakeFd);
        }
    }

    private void Notify()
    {
        lock (_usedLock) SignalLocked();
    }

    private void SignalLocked()
    {
        if (_callFd >= 0 && _queue.DriverWantsInterrupt()) Native.SignalEventFd(_callFd);
    }

    private BlkRequest Rent()
    {
        lock (_pool) return _pool.Count > 0 ? _pool.Pop() : new BlkRequest(this);
    }

    private void Return(BlkRequest request)
    {
        request.WrittenBytes = 0;
        lock (_pool) _pool.Push(request);
    }

    /// <summary>Runs one request and returns its status; never throws (every failure is a status).</summary>
    private async ValueTask<byte> ExecuteAsync(BlkRequest request)
    {
        try
        {
            if (request.Chain.BadAddress || request.Chain.TooManySegments || !request.Chain.HasStatus)
            {
                _log.LogWarning("vhost-user-blk {Volume}: queue {Queue} request {Head} refused: {Why}", _target.Volume.Name, _index, request.Head,
                    request.Chain.BadAddress ? "a buffer outside guest memory" : request.Chain.TooManySegments ? "more segments than seg_max" : "no status byte");
                return VirtioBlk.StatusIoError;
            }
            if (!TryParse(request, out uint type, out ulong sector, out int readable, out int writable, out int readableBytes, out long writableBytes))
                return VirtioBlk.StatusIoError;
            var volume = _target.Volume;
            switch (type)
            {
                case VirtioBlk.TypeIn:
                case VirtioBlk.TypeOut:
                {
                    bool isRead = type == VirtioBlk.TypeIn;
                    if (!isRead && _target.ReadOnly) return VirtioBlk.StatusIoError;
                    long bytes = isRead ? writableBytes : readableBytes;
                    if (!TryRange(sector, bytes, volume.SizeBytes, out long offset)) return VirtioBlk.StatusIoError;
                    if (!isRead)
                    {
                        await WriteCopiedAsync(request, offset, bytes, readable).ConfigureAwait(false);
                        return VirtioBlk.StatusOk;
                    }
                    if (writable > 1 && bytes <= VhostUserLimits.BounceBytesMax && bytes / writable < VhostUserLimits.BounceSegmentBytesMax)
                    {
                        await BounceReadAsync(request, offset, (int)bytes, readable, writable).ConfigureAwait(false);
                    }
                    else
                    {
                        for (int i = readable; i < readable + writable; i++)
                        {
                            var memory = SegmentMemory(request, i);
                            await volume.ReadAsync(offset, memory).ConfigureAwait(false);
                            offset += memory.Length;
                        }
                    }
                    request.WrittenBytes = (uint)bytes;
                    return VirtioBlk.StatusOk;
                }
                case VirtioBlk.TypeFlush:
                    await volume.FlushAsync().ConfigureAwait(false);
                    return VirtioBlk.StatusOk;
                case VirtioBlk.TypeGetId:
                    request.WrittenBytes = WriteId(request, readable, writable);
                    return VirtioBlk.StatusOk;
                case VirtioBlk.TypeDiscard:
                case VirtioBlk.TypeWriteZeroes:
                    if (_target.ReadOnly) return VirtioBlk.StatusIoError;
                    return await DiscardOrZeroAsync(request, type == VirtioBlk.TypeDiscard, readable, readableBytes).ConfigureAwait(false);
                default:
                    return VirtioBlk.StatusUnsupported;
            }
        }
        catch (StorageException e)
        {
            _log.LogWarning("vhost-user-blk {Volume}: I/O error for the guest: {Error} {Message}", _target.Volume.Name, e.Error, e.Message);
            return VirtioBlk.StatusIoError;
        }
        catch (Exception e)
        {
            _log.LogError(e, "vhost-user-blk {Volume}: request failed unexpectedly", _target.Volume.Name);
            return VirtioBlk.StatusIoError;
        }
    }

    /// <summary>
    /// A read of many small pieces (a guest's page list): one engine call into a pooled buffer and a copy out to the
    /// pieces, instead of one engine call per piece (see <see cref="VhostUserLimits.BounceSegmentBytesMax"/>).
    /// </summary>
    private async ValueTask BounceReadAsync(BlkRequest request, long offset, int bytes, int first, int count)
    {
        byte[] bounce = ArrayPool<byte>.Shared.Rent(bytes);
        try
        {
            var buffer = bounce.AsMemory(0, bytes);
            await _target.Volume.ReadAsync(offset, buffer).ConfigureAwait(false);
            CopyToPieces(request, first, count, buffer.Span);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(bounce);
        }
    }

    private static unsafe void CopyToPieces(BlkRequest request, int first, int count, ReadOnlySpan<byte> buffer)
    {
        int at = 0;
        for (int i = first; i < first + count; i++)
        {
            var s = request.Segments[i];
            buffer.Slice(at, (int)s.Length).CopyTo(new Span<byte>(s.Host, (int)s.Length));
            at += (int)s.Length;
        }
    }

    /// <summary>
    /// A write: its data is copied out of guest memory into a buffer of the server's before the engine sees it, in
    /// pieces of at most <see cref="VhostUserLimits.WriteBufferBytes"/>. The guest may change a buffer while its write is
    /// in flight (Linux does not keep pages stable under writeback for virtio-blk), and the engine computes a block's
    /// checksum and writes its data in two passes over the source: from guest memory, a page changed in between would
    /// be stored under a checksum of other bytes, and read back as corrupt. The copy also gathers a page list into one
    /// engine call, and a large buffer is page-aligned, so the engine's direct writes (O_DIRECT) take it as it is.
    /// </summary>
    private async ValueTask WriteCopiedAsync(BlkRequest request, long offset, long bytes, int readable)
    {
        int segment = 0;
        uint within = 0;
        while (bytes > 0)
        {
            int n = (int)Math.Min(bytes, VhostUserLimits.WriteBufferBytes);
            var buffer = RentWriteBuffer(request, n);
            try
            {
                Gather(request, readable, ref segment, ref within, buffer.Span);
                await _target.Volume.WriteAsync(offset, buffer, _target.WriteThrough).ConfigureAwait(false);
            }
            finally
            {
                ReturnWriteBuffer(request);
            }
            offset += n;
            bytes -= n;
        }
    }

    /// <summary>
    /// A buffer for <paramref name="bytes"/> of write data: a pooled array for small writes, a page-aligned native
    /// buffer (pooled per queue, at most <see cref="VhostUserLimits.WriteBuffersPooled"/> kept) from
    /// <see cref="VhostUserLimits.AlignedWriteBytesMin"/> on. Held by the request until <see cref="ReturnWriteBuffer"/>.
    /// </summary>
    private unsafe Memory<byte> RentWriteBuffer(BlkRequest request, int bytes)
    {
        if (bytes < VhostUserLimits.AlignedWriteBytesMin)
        {
            request.SmallBuffer = ArrayPool<byte>.Shared.Rent(bytes);
            return request.SmallBuffer.AsMemory(0, bytes);
        }
        IntPtr native = 0;
        lock (_writeBuffers)
        {
            if (_writeBuffers.Count > 0) native = _writeBuffers.Pop();
        }
        if (native == 0) native = (IntPtr)NativeMemory.AlignedAlloc(VhostUserLimits.WriteBufferBytes, VhostUserLimits.WriteBufferAlignment);
        request.NativeBuffer = native;
        return request.Buffer.Point((byte*)native, bytes);
    }

    private unsafe void ReturnWriteBuffer(BlkRequest request)
    {
        if (request.SmallBuffer is { } small)
        {
            request.SmallBuffer = null;
            ArrayPool<byte>.Shared.Return(small);
        }
        IntPtr native = request.NativeBuffer;
        if (native == 0) return;
        request.NativeBuffer = 0;
        lock (_writeBuffers)
        {
            if (!_writeBuffersFreed && _writeBuffers.Count < VhostUserLimits.WriteBuffersPooled)
            {
                _writeBuffers.Push(native);
                return;
            }
        }
        FreeAligned(native);
    }

    private static unsafe Memory<byte> SegmentMemory(BlkRequest request, int index)
    {
        var s = request.Segments[index];
        return request.Buffer.Point(s.Host, (int)s.Length);
    }

    private static bool TryRange(ulong sector, long bytes, long sizeBytes, out long offset)
    {
        offset = 0;
        if (bytes % VirtioBlk.SectorBytes != 0 || bytes > VhostUserLimits.RequestBytesMax) return false;
        if (sector > (ulong)(sizeBytes / VirtioBlk.SectorBytes)) return false;
        offset = (long)sector * VirtioBlk.SectorBytes;
        return offset + bytes <= sizeBytes;
    }

    /// <summary>
    /// Reads the 16-byte header from the device-readable bytes (it may span descriptors: VIRTIO_F_VERSION_1 implies any
    /// layout) and compacts the request's segments in place into data pieces: readable data after the header first,
    /// then writable data without the final status byte.
    /// </summary>
    internal static unsafe bool TryParse(BlkRequest request, out uint type, out ulong sector, out int readable, out int writable,
        out int readableBytes, out long writableBytes)
    {
        type = 0;
        sector = 0;
        readable = writable = readableBytes = 0;
        writableBytes = 0;
        var segments = request.Segments.AsSpan(0, request.Chain.SegmentCount);
        Span<byte> header = stackalloc byte[16];
        int got = 0;
        int outIndex = 0;
        for (int i = 0; i < segments.Length; i++)
        {
            var s = segments[i];
            if (!s.Writable && got < 16)
            {
                int take = (int)Math.Min((uint)(16 - got), s.Length);
                new ReadOnlySpan<byte>(s.Host, take).CopyTo(header[got..]);
                got += take;
                s.Host += take;
                s.Length -= (uint)take;
            }
            else if (s.Writable && got < 16)
            {
                return false; // the header must be device-readable and come first
            }
            if (s.Writable && i == segments.Length - 1) s.Length -= 1; // the status byte
            if (s.Length == 0) continue;
            if (s.Writable) { writable++; writableBytes += s.Length; }
            else { readable++; readableBytes += (int)Math.Min(s.Length, (uint)int.MaxValue); }
            if (readableBytes > VhostUserLimits.RequestBytesMax) return false;
            segments[outIndex++] = s;
        }
        if (got < 16) return false;
        type = BinaryPrimitives.ReadUInt32LittleEndian(header);
        sector = BinaryPrimitives.ReadUInt64LittleEndian(header[8..]);
        return true;
    }

    private unsafe uint WriteId(BlkRequest request, int readable, int writable)
    {
        Span<byte> id = stackalloc byte[VirtioBlk.IdBytes];
        id.Clear();
        int n = System.Text.Encoding.UTF8.GetBytes(_target.Id.AsSpan(0, Math.Min(_target.Id.Length, VirtioBlk.IdBytes)), id);
        _ = n;
        uint written = 0;
        for (int i = readable; i < readable + writable && written < VirtioBlk.IdBytes; i++)
        {
            ref var s = ref request.Segments[i];
            int take = (int)Math.Min(s.Length, VirtioBlk.IdBytes - written);
            id.Slice((int)written, take).CopyTo(new Span<byte>(s.Host, take));
            written += (uint)take;
        }
        return written;
    }

    private async ValueTask<byte> DiscardOrZeroAsync(BlkRequest request, bool discard, int readable, int readableBytes)
    {
        // struct virtio_blk_discard_write_zeroes { le64 sector; le32 num_sectors; le32 flags; }
        if (readableBytes == 0 || readableBytes % 16 != 0 || readableBytes / 16 > VhostUserLimits.DiscardRangesMax) return VirtioBlk.StatusIoError;
        var volume = _target.Volume;
        int ranges = readableBytes / 16;
        int segment = 0;
        uint within = 0;
        for (int r = 0; r < ranges; r++)
        {
            ulong sector = ReadUInt64(request, readable, ref segment, ref within);
            uint sectors = ReadUInt32(request, readable, ref segment, ref within);
            uint flags = ReadUInt32(request, readable, ref segment, ref within);
            if (sectors > VhostUserLimits.DiscardSectorsMax) return VirtioBlk.StatusIoError;
            // Discard has no flags; write-zeroes knows only "unmap" (virtio 1.1 5.2.6.1: other bits make it UNSUPP).
            if ((discard && flags != 0) || (!discard && (flags & ~VirtioBlk.WriteZeroesUnmap) != 0)) return VirtioBlk.StatusUnsupported;
            long bytes = (long)sectors * VirtioBlk.SectorBytes;
            if (sector > (ulong)(volume.SizeBytes / VirtioBlk.SectorBytes) || (long)sector * VirtioBlk.SectorBytes + bytes > volume.SizeBytes)
                return VirtioBlk.StatusIoError;
            long offset = (long)sector * VirtioBlk.SectorBytes;
            if (bytes == 0) continue;
            if (discard) await volume.TrimAsync(offset, bytes, _target.WriteThrough).ConfigureAwait(false);
            else await volume.WriteZeroesAsync(offset, bytes, (flags & VirtioBlk.WriteZeroesUnmap) != 0, _target.WriteThrough).ConfigureAwait(false);
        }
        return VirtioBlk.StatusOk;
    }

    private static ulong ReadUInt64(BlkRequest request, int readable, ref int segment, ref uint within)
    {
        Span<byte> b = stackalloc byte[8];
        Gather(request, readable, ref segment, ref within, b);
        return BinaryPrimitives.ReadUInt64LittleEndian(b);
    }

    private static uint ReadUInt32(BlkRequest request, int readable, ref int segment, ref uint within)
    {
        Span<byte> b = stackalloc byte[4];
        Gather(request, readable, ref segment, ref within, b);
        return BinaryPrimitives.ReadUInt32LittleEndian(b);
    }

    // Copies the next bytes of the readable data (which may be split across segments) into a local: read once, then used.
    private static unsafe void Gather(BlkRequest request, int readable, ref int segment, ref uint within, Span<byte> into)
    {
        int got = 0;
        while (got < into.Length && segment < readable)
        {
            ref var s = ref request.Segments[segment];
            int take = (int)Math.Min((uint)(into.Length - got), s.Length - within);
            new ReadOnlySpan<byte>(s.Host + within, take).CopyTo(into[got..]);
            got += take;
            within += (uint)take;
            if (within == s.Length)
            {
                segment++;
                within = 0;
            }
        }
    }
}
