using System.Buffers;
using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.IO.Pipelines;
using System.Net.Sockets;
using System.Text;
using Microsoft.Extensions.Logging;

namespace Platter.Nbd.Internal;

/// <summary>One parsed request on its way to the export. Pooled per connection.</summary>
internal sealed class NbdRequest
{
    public ushort Flags;
    public ushort Type;
    public ulong Cookie;
    public ulong Offset;
    public long Length;
    public byte[]? Payload;
    public long GateBytes;
    public WriteEpoch? Epoch;
    public Task? Barrier;
    public NbdError Error;
    public string? Message;

    public void Clear()
    {
        Payload = null;
        Epoch = null;
        Barrier = null;
        Error = NbdError.None;
        Message = null;
    }
}

internal sealed partial class NbdConnection
{
    private readonly InFlightGate _gate = new(NbdLimits.InFlightRequestsPerConnectionMax, NbdLimits.InFlightPayloadBytesPerConnectionMax);
    private readonly ConcurrentQueue<NbdRequest> _requestPool = new();
    private INbdExport? _export;
    private string? _exportName;
    private long _size;
    private bool _readOnly;
    private uint _alignment = 1;
    private INbdMetaContext[] _contexts = [];
    private WriteEpoch _epoch = new(Task.CompletedTask);

    private void EnterTransmission(INbdExport export, string requestedName, bool blockSizeRequested)
    {
        _export = export;
        _writer.BeforeSend = export is INbdRepliesSending sending ? sending.BeforeRepliesSent : null;
        _exportName = requestedName;
        _openedTimestamp = System.Diagnostics.Stopwatch.GetTimestamp();
        _size = export.Size;
        _readOnly = export.IsReadOnly;
        _alignment = BlockSizes(export, blockSizeRequested).Minimum;
        _writer.Extended = _extended;
        // BLOCK_STATUS is only allowed for the export named in the last SET_META_CONTEXT.
        if (_metaExportName == requestedName && _metaNames.Count > 0)
        {
            var contexts = new List<INbdMetaContext>();
            foreach (string name in _metaNames)
            {
                if (FindProvider(name)?.Open(export, name) is { } context) contexts.Add(context);
            }
            _contexts = [.. contexts];
        }
        _info = new NbdConnectionInfo(_peer, requestedName, ConnectedUtc, _readOnly, _tls, export);
        export.Opened(_info);
        // Info, not Debug: an operator wants to see who uses which disk (journald keeps it with the peer).
        _log.LogInformation("NBD {Peer}: opened export '{Export}' ({Size} bytes, {Mode}{ReadOnly}{Tls})", _peer, requestedName, _size,
            _extended ? "extended headers" : _structured ? "structured replies" : "simple replies",
            _readOnly ? ", read-only" : "", _tls ? ", TLS" : "");
    }

    private async Task TransmissionAsync()
    {
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(_stopping, _abort.Token);
        CancellationToken ct = linked.Token;
        int headerSize = _extended ? Protocol.ExtendedRequestSize : Protocol.CompactRequestSize;
        uint expectedMagic = _extended ? Protocol.ExtendedRequestMagic : Protocol.RequestMagic;
        byte[] header = new byte[Protocol.ExtendedRequestSize];
        try
        {
            await ServeRequestsAsync(headerSize, expectedMagic, header, ct).ConfigureAwait(false);
        }
        finally
        {
            // Replies gathered for the last requests, and every later one, go out at once (requests still in flight
            // answer after the loop has ended).
            try { await _writer.UncorkAsync(CancellationToken.None).ConfigureAwait(false); }
            catch (Exception e) when (e is IOException or ObjectDisposedException or SocketException) { }
        }
    }

    // The read loop. Replies of requests served inline are corked (see ReplyWriter) and sent together whenever the loop
    // is about to wait: for the next request, for room under the in-flight bound, or for the rest of a payload.
    private async Task ServeRequestsAsync(int headerSize, uint expectedMagic, byte[] header, CancellationToken ct)
    {
        while (true)
        {
            ValueTask<ReadResult> next = _reader.ReadAtLeastAsync(headerSize, ct);
            if (!next.IsCompleted) await _writer.UncorkAsync(ct).ConfigureAwait(false);
            ReadResult result = await next.ConfigureAwait(false);
            _writer.Cork();
            if (result.IsCanceled) return;
            ReadOnlySequence<byte> buffer = result.Buffer;
            if (buffer.Length < headerSize)
            {
                _reader.AdvanceTo(buffer.End);
                if (buffer.Length > 0) _log.LogDebug("NBD {Peer}: truncated request header", _peer);
                return;
            }
            buffer.Slice(0, headerSize).CopyTo(header);
            _reader.AdvanceTo(buffer.GetPosition(headerSize));

            if (BinaryPrimitives.ReadUInt32BigEndian(header) != expectedMagic)
                throw new NbdProtocolException("bad request magic");
            ushort flags = BinaryPrimitives.ReadUInt16BigEndian(header.AsSpan(4));
            ushort type = BinaryPrimitives.ReadUInt16BigEndian(header.AsSpan(6));
            ulong cookie = BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(8));
            ulong offset = BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(16));
            ulong length = _extended ? BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(24)) : BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(24));

            // Whether a payload follows decides how the stream continues, so it is settled before any validation.
            bool hasPayload = _extended ? (flags & Protocol.CmdFlagPayloadLen) != 0 : type == Protocol.CmdWrite;
            // A payload over the maximum block size is answered with an error after reading past it, which keeps the
            // stream in step (the spec: up to 32 MiB is never a denial of service); only one too large to be worth
            // reading ends the connection.
            if (hasPayload && length > NbdLimits.WritePayloadDiscardBytesMax)
                throw new NbdProtocolException($"payload of {length} bytes over limit");

            if (type == Protocol.CmdDisc)
            {
                _log.LogDebug("NBD {Peer}: disconnect requested", _peer);
                return;
            }

            var (error, message) = Validate(type, flags, offset, length, hasPayload);
            long payloadLength = hasPayload ? (long)length : 0;
            // A refused payload is skipped in small pieces, never held, so it takes no payload budget.
            long gateBytes = error != NbdError.None ? 0 : payloadLength + (type == Protocol.CmdRead ? (long)length : 0);
            ValueTask admitted = _gate.AcquireAsync(gateBytes, ct);
            if (!admitted.IsCompleted) await _writer.UncorkAsync(ct).ConfigureAwait(false);
            await admitted.ConfigureAwait(false);

            NbdRequest request = RentRequest();
            request.Flags = flags;
            request.Type = type;
            request.Cookie = cookie;
            request.Offset = offset;
            request.Length = (long)Math.Min(length, long.MaxValue);
            request.GateBytes = gateBytes;
            request.Error = error;
            request.Message = message;

            if (hasPayload)
            {
                bool complete;
                try
                {
                    if (error == NbdError.None)
                    {
                        request.Payload = ArrayPool<byte>.Shared.Rent((int)payloadLength);
                        ValueTask<bool> payload = ReadPayloadAsync(request.Payload.AsMemory(0, (int)payloadLength), ct);
                        if (!payload.IsCompleted) await _writer.UncorkAsync(ct).ConfigureAwait(false);
                        complete = await payload.ConfigureAwait(false);
                    }
                    else
                    {
                        // Refused writes still carry their data; reading past it keeps the stream in sync.
                        ValueTask<bool> skipped = _reader.SkipAsync(payloadLength, ct);
                        if (!skipped.IsCompleted) await _writer.UncorkAsync(ct).ConfigureAwait(false);
                        complete = await skipped.ConfigureAwait(false);
                    }
                }
                catch
                {
                    // Shutdown or a broken stream in the middle of a payload: this request never reaches the export,
                    // so its in-flight slot must be given back here or closing the connection waits for it forever.
                    ReturnRequest(request);
                    _gate.Release(gateBytes);
                    throw;
                }
                if (!complete)
                {
                    ReturnRequest(request);
                    _gate.Release(gateBytes);
                    return;
                }
            }

            if (error == NbdError.None)
            {
                switch (type)
                {
                    case Protocol.CmdWrite:
                    case Protocol.CmdTrim:
                    case Protocol.CmdWriteZeroes:
                        request.Epoch = _epoch;
                        _epoch.Enter();
                        break;
                    case Protocol.CmdFlush:
                        WriteEpoch sealedEpoch = _epoch;
                        Task barrier = sealedEpoch.Seal();
                        _epoch = new WriteEpoch(barrier);
                        request.Barrier = barrier;
                        break;
                }
            }
            // Start the request inline, on this connection's read loop. Exports answer reads and writes synchronously
            // (page cache, positional I/O), so a hop through the thread pool per request cost more than the work:
            // inline start measured 2x the 4 KiB IOPS of pool dispatch on 2 cores (docs/PERFORMANCE.md). Requests
            // that wait (flushes, replies blocked on the socket) still go on asynchronously, so replies stay out of order.
            _ = ProcessAsync(request);
        }
    }

    /// <summary>
    /// Reads a write's payload; false on end of stream. A large payload takes what the request pipe already holds, then
    /// the rest straight from the stream into the payload buffer: through the pipe, every byte of a 1 MiB write was
    /// copied once more (pipe segment to payload), 10% of the server's CPU on 1 MiB sequential writes
    /// (docs/PERFORMANCE.md, issue 15). Safe because the pipe reads its stream only inside its own ReadAsync, which
    /// nothing runs meanwhile (this is the connection's only reader), and the stream is read only once the pipe's buffer
    /// is empty, so the byte order is kept. Small payloads stay on the pipe, whose large reads take in many at once.
    /// </summary>
    private async ValueTask<bool> ReadPayloadAsync(Memory<byte> destination, CancellationToken ct)
    {
        if (destination.Length < NbdLimits.DirectPayloadBytesMin) return await _reader.ReadExactAsync(destination, ct).ConfigureAwait(false);
        if (_reader.TryRead(out ReadResult result))
        {
            if (result.IsCanceled) throw new OperationCanceledException();
            ReadOnlySequence<byte> buffer = result.Buffer;
            long take = Math.Min(buffer.Length, destination.Length);
            buffer.Slice(0, take).CopyTo(destination.Span);
            _reader.AdvanceTo(buffer.GetPosition(take));
            destination = destination[(int)take..];
        }
        while (destination.Length > 0)
        {
            int n = await _stream.ReadAsync(destination, ct).ConfigureAwait(false);
            if (n == 0) return false;
            destination = destination[n..];
        }
        return true;
    }

    /// <summary>Edge validation: everything the export may then assume about a request.</summary>
    private (NbdError, string?) Validate(ushort type, ushort flags, ulong offset, ulong length, bool hasPayload)
    {
        ushort allowed = Protocol.CmdFlagFua;
        if (_extended) allowed |= Protocol.CmdFlagPayloadLen;
        bool writes = false, ranged = true;
        ulong lengthMax = ulong.MaxValue;
        switch (type)
        {
            case Protocol.CmdRead:
                if (_structured) allowed |= Protocol.CmdFlagDf;
                lengthMax = NbdLimits.PayloadBytesMax;
                break;
            case Protocol.CmdWrite:
                writes = true;
                lengthMax = NbdLimits.PayloadBytesMax;
                if (!hasPayload) return (NbdError.InvalidArgument, "write without payload");
                break;
            case Protocol.CmdFlush:
                ranged = false;
                if (offset != 0 || length != 0) return (NbdError.InvalidArgument, "flush offset and length must be zero");
                break;
            case Protocol.CmdTrim:
                writes = true;
                break;
            case Protocol.CmdCache:
                lengthMax = NbdLimits.PayloadBytesMax;
                break;
            case Protocol.CmdWriteZeroes:
                writes = true;
                allowed |= Protocol.CmdFlagNoHole | Protocol.CmdFlagFastZero;
                break;
            case Protocol.CmdBlockStatus:
                allowed |= Protocol.CmdFlagReqOne;
                if (_contexts.Length == 0) return (NbdError.InvalidArgument, "no metadata context negotiated");
                if (length == 0) return (NbdError.InvalidArgument, "zero length");
                break;
            default:
                return (NbdError.InvalidArgument, $"unknown command {type}");
        }
        if ((flags & ~allowed) != 0) return (NbdError.InvalidArgument, $"invalid flags 0x{flags:x} for command {type}");
        if (hasPayload && type != Protocol.CmdWrite) return (NbdError.InvalidArgument, "unexpected payload");
        if (writes && _readOnly) return (NbdError.NotPermitted, "export is read-only");
        if (!ranged) return (NbdError.None, null);
        if (length > lengthMax)
        {
            bool df = type == Protocol.CmdRead && (flags & Protocol.CmdFlagDf) != 0;
            return (df ? NbdError.Overflow : NbdError.InvalidArgument, "length over maximum block size");
        }
        ulong size = (ulong)_size;
        if (offset > size || length > size - offset)
        {
            // The spec asks for ENOSPC when a write runs past the end, EINVAL for everything else.
            bool write = type is Protocol.CmdWrite or Protocol.CmdWriteZeroes;
            return (write ? NbdError.NoSpace : NbdError.InvalidArgument, "range beyond end of export");
        }
        if (_alignment > 1 && type != Protocol.CmdBlockStatus && ((offset | length) & (_alignment - 1)) != 0)
            return (NbdError.InvalidArgument, "request not aligned to minimum block size");
        return (NbdError.None, null);
    }

    private NbdRequest RentRequest()
    {
        if (!_requestPool.TryDequeue(out NbdRequest? request)) request = new NbdRequest();
        return request;
    }

    private void ReturnRequest(NbdRequest request)
    {
        if (request.Payload is { } payload) ArrayPool<byte>.Shared.Return(payload);
        request.Clear();
        if (_requestPool.Count < NbdLimits.InFlightRequestsPerConnectionMax) _requestPool.Enqueue(request);
    }

    internal async Task ProcessAsync(NbdRequest r)
    {
        CancellationToken ct = _abort.Token;
        try
        {
            if (r.Error != NbdError.None)
            {
                _log.LogDebug("NBD {Peer}: command {Type} refused: {Error} {Message}", _peer, r.Type, r.Error, r.Message);
                await ReplyErrorAsync(r, r.Error, r.Message, ct).ConfigureAwait(false);
                return;
            }
            INbdExport export = _export!;
            long offset = (long)r.Offset;
            bool fua = (r.Flags & Protocol.CmdFlagFua) != 0;
            NbdError error = NbdError.None;
            string? message = null;
            switch (r.Type)
            {
                case Protocol.CmdRead:
                    await ReadAsync(r, ct).ConfigureAwait(false);
                    return;
                case Protocol.CmdBlockStatus:
                    await BlockStatusAsync(r, ct).ConfigureAwait(false);
                    return;
                case Protocol.CmdWrite:
                    try { await export.WriteAsync(offset, r.Payload.AsMemory(0, (int)r.Length), fua, ct).ConfigureAwait(false); }
                    catch (Exception e) when (!ct.IsCancellationRequested) { (error, message) = MapException(e, r); }
                    finally { r.Epoch!.Exit(); }
                    break;
                case Protocol.CmdTrim:
                    try { await export.TrimAsync(offset, r.Length, fua, ct).ConfigureAwait(false); }
                    catch (Exception e) when (!ct.IsCancellationRequested) { (error, message) = MapException(e, r); }
                    finally { r.Epoch!.Exit(); }
                    break;
                case Protocol.CmdWriteZeroes:
                    try
                    {
                        await export.WriteZeroesAsync(offset, r.Length, mayDeallocate: (r.Flags & Protocol.CmdFlagNoHole) == 0,
                            fastOnly: (r.Flags & Protocol.CmdFlagFastZero) != 0, fua, ct).ConfigureAwait(false);
                    }
                    catch (Exception e) when (!ct.IsCancellationRequested) { (error, message) = MapException(e, r); }
                    finally { r.Epoch!.Exit(); }
                    break;
                case Protocol.CmdFlush:
                    try
                    {
                        await r.Barrier!.WaitAsync(ct).ConfigureAwait(false);
                        if (!_readOnly) await export.FlushAsync(ct).ConfigureAwait(false);
                    }
                    catch (Exception e) when (!ct.IsCancellationRequested) { (error, message) = MapException(e, r); }
                    break;
                case Protocol.CmdCache:
                    try { await export.CacheAsync(offset, r.Length, ct).ConfigureAwait(false); }
                    catch (Exception e) when (!ct.IsCancellationRequested) { (error, message) = MapException(e, r); }
                    break;
            }
            if (error == NbdError.None) await ReplyOkAsync(r, ct).ConfigureAwait(false);
            else await ReplyErrorAsync(r, error, message, ct).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            // Only reply sending (or cancellation of a dying connection) gets here: the stream is unusable.
            if (!ct.IsCancellationRequested) _log.LogDebug("NBD {Peer}: reply failed, closing: {Reason}", _peer, e.Message);
            Abort();
        }
        finally
        {
            long gateBytes = r.GateBytes;
            ReturnRequest(r);
            _gate.Release(gateBytes);
        }
    }

    private (NbdError, string?) MapException(Exception e, NbdRequest r)
    {
        if (e is NbdErrorException nbd && nbd.Error != NbdError.None)
        {
            _log.LogDebug("NBD {Peer}: command {Type} at {Offset}+{Length} failed: {Error} {Message}", _peer, r.Type, r.Offset, r.Length, nbd.Error, nbd.Message);
            return (nbd.Error, nbd.Message);
        }
        _log.LogError(e, "NBD {Peer}: command {Type} at {Offset}+{Length} failed", _peer, r.Type, r.Offset, r.Length);
        return (NbdError.IoError, "I/O error");
    }

    private ValueTask ReplyOkAsync(NbdRequest r, CancellationToken ct) =>
        _extended
            ? _writer.SendChunkAsync(r.Cookie, r.Offset, Protocol.ReplyFlagDone, Protocol.ReplyTypeNone, ChunkPrefix.None, default, ct)
            : _writer.SendSimpleAsync(r.Cookie, 0, default, ct);

    private async ValueTask ReplyErrorAsync(NbdRequest r, NbdError error, string? message, CancellationToken ct)
    {
        if (!_structured)
        {
            await _writer.SendSimpleAsync(r.Cookie, (uint)error, default, ct).ConfigureAwait(false);
            return;
        }
        byte[] text = ArrayPool<byte>.Shared.Rent(NbdLimits.ErrorMessageBytesMax);
        try
        {
            int n = message is null ? 0 : EncodeTruncated(message, text, NbdLimits.ErrorMessageBytesMax);
            await _writer.SendChunkAsync(r.Cookie, r.Offset, Protocol.ReplyFlagDone, Protocol.ReplyTypeError,
                ChunkPrefix.Error((uint)error, (ushort)n), text.AsMemory(0, n), ct).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(text);
        }
    }

    private async ValueTask ReadAsync(NbdRequest r, CancellationToken ct)
    {
        INbdExport export = _export!;
        long offset = (long)r.Offset;
        int length = (int)r.Length;
        if (length == 0)
        {
            // A READ never gets a simple reply once chunks are negotiated.
            if (_structured)
                await _writer.SendChunkAsync(r.Cookie, r.Offset, Protocol.ReplyFlagDone, Protocol.ReplyTypeNone, ChunkPrefix.None, default, ct).ConfigureAwait(false);
            else
                await _writer.SendSimpleAsync(r.Cookie, 0, default, ct).ConfigureAwait(false);
            return;
        }

        byte[] data = ArrayPool<byte>.Shared.Rent(length);
        try
        {
            if (_structured && !export.SparseReads)
            {
                // One data chunk, no allocation lookup: for an export where the lookup is a network round trip
                // (RBD), asking it on every read cost more than the read itself.
                await SendDataAsync(r, export, offset, offset, offset + length, last: true, data, ct).ConfigureAwait(false);
                return;
            }
            if (!_structured)
            {
                NbdError error = NbdError.None;
                try { await export.ReadAsync(offset, data.AsMemory(0, length), ct).ConfigureAwait(false); }
                catch (Exception e) when (!ct.IsCancellationRequested) { (error, _) = MapException(e, r); }
                await _writer.SendSimpleAsync(r.Cookie, (uint)error, error == NbdError.None ? data.AsMemory(0, length) : default, ct).ConfigureAwait(false);
                return;
            }
            await StructuredReadAsync(r, export, offset, length, data, ct).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(data);
        }
    }

    /// <summary>
    /// Answers a READ with OFFSET_HOLE chunks for ranges the export reports as reading zero and OFFSET_DATA chunks
    /// for the rest (adjacent data extents merged). Each data chunk is read before it is sent, so the DONE flag
    /// goes on the last content chunk and an export error becomes one final error chunk. With DF the whole range is
    /// one chunk: a hole only when all of it reads as zeros.
    /// </summary>
    private async ValueTask StructuredReadAsync(NbdRequest r, INbdExport export, long offset, int length, byte[] data, CancellationToken ct)
    {
        bool df = (r.Flags & Protocol.CmdFlagDf) != 0;
        long end = offset + length;
        AllocationExtent[] extents = ArrayPool<AllocationExtent>.Shared.Rent(NbdLimits.ReadAllocationExtentsBatch);
        try
        {
            long position = offset;
            long dataStart = -1;
            while (position < end)
            {
                int n;
                try
                {
                    n = export.GetAllocation(position, end - position, extents.AsSpan(0, df ? 1 : NbdLimits.ReadAllocationExtentsBatch));
                }
                catch (Exception e) when (!ct.IsCancellationRequested)
                {
                    var (error, message) = MapException(e, r);
                    await SendReadErrorAsync(r, error, message, ct).ConfigureAwait(false);
                    return;
                }
                if (n <= 0 || n > extents.Length)
                {
                    // An export that cannot describe the range: treat it all as data, which is always correct.
                    extents[0] = new AllocationExtent(end - position, AllocationFlags.None);
                    n = 1;
                }
                for (int i = 0; i < n && position < end; i++)
                {
                    long extentLength = extents[i].Length;
                    if (extentLength <= 0 || extentLength > end - position) extentLength = end - position;
                    bool zero = (extents[i].Flags & AllocationFlags.Zero) != 0 && (!df || (position == offset && extentLength == length));
                    if (zero)
                    {
                        if (dataStart >= 0)
                        {
                            if (!await SendDataAsync(r, export, offset, dataStart, position, last: false, data, ct).ConfigureAwait(false)) return;
                            dataStart = -1;
                        }
                        bool last = position + extentLength == end;
                        await _writer.SendChunkAsync(r.Cookie, r.Offset, last ? Protocol.ReplyFlagDone : (ushort)0, Protocol.ReplyTypeOffsetHole,
                            ChunkPrefix.Hole((ulong)position, (uint)extentLength), default, ct).ConfigureAwait(false);
                    }
                    else if (dataStart < 0)
                    {
                        dataStart = position;
                    }
                    position += extentLength;
                }
                if (df && dataStart >= 0) break;
            }
            if (dataStart >= 0) await SendDataAsync(r, export, offset, dataStart, end, last: true, data, ct).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<AllocationExtent>.Shared.Return(extents);
        }
    }

    private async ValueTask<bool> SendDataAsync(NbdRequest r, INbdExport export, long requestOffset, long from, long to, bool last, byte[] data, CancellationToken ct)
    {
        Memory<byte> slice = data.AsMemory((int)(from - requestOffset), (int)(to - from));
        try
        {
            await export.ReadAsync(from, slice, ct).ConfigureAwait(false);
        }
        catch (Exception e) when (!ct.IsCancellationRequested)
        {
            var (error, message) = MapException(e, r);
            await SendReadErrorAsync(r, error, message, ct).ConfigureAwait(false);
            return false;
        }
        await _writer.SendChunkAsync(r.Cookie, r.Offset, last ? Protocol.ReplyFlagDone : (ushort)0, Protocol.ReplyTypeOffsetData,
            ChunkPrefix.Offset((ulong)from), slice, ct).ConfigureAwait(false);
        return true;
    }

    private ValueTask SendReadErrorAsync(NbdRequest r, NbdError error, string? message, CancellationToken ct) =>
        ReplyErrorAsync(r, error, message, ct);

    private async ValueTask BlockStatusAsync(NbdRequest r, CancellationToken ct)
    {
        long offset = (long)r.Offset;
        long length = r.Length;
        bool reqOne = (r.Flags & Protocol.CmdFlagReqOne) != 0;
        int max = reqOne ? 1 : NbdLimits.BlockStatusExtentsMax;
        int descriptorSize = _extended ? 16 : 8;
        NbdStatusExtent[] extents = ArrayPool<NbdStatusExtent>.Shared.Rent(max);
        byte[] body = ArrayPool<byte>.Shared.Rent(max * descriptorSize);
        try
        {
            for (int c = 0; c < _contexts.Length; c++)
            {
                int n;
                try
                {
                    n = _contexts[c].GetStatus(offset, length, extents.AsSpan(0, max));
                }
                catch (Exception e) when (!ct.IsCancellationRequested)
                {
                    var (error, message) = MapException(e, r);
                    await ReplyErrorAsync(r, error, message, ct).ConfigureAwait(false);
                    return;
                }
                int count = EncodeExtents(extents.AsSpan(0, Math.Clamp(n, 0, max)), length, body);
                ushort type = _extended ? Protocol.ReplyTypeBlockStatusExt : Protocol.ReplyTypeBlockStatus;
                ushort flags = c == _contexts.Length - 1 ? Protocol.ReplyFlagDone : (ushort)0;
                await _writer.SendChunkAsync(r.Cookie, r.Offset, flags, type, ChunkPrefix.BlockStatus((uint)(c + 1), _extended, (uint)count),
                    body.AsMemory(0, count * descriptorSize), ct).ConfigureAwait(false);
            }
        }
        finally
        {
            ArrayPool<NbdStatusExtent>.Shared.Return(extents);
            ArrayPool<byte>.Shared.Return(body);
        }
    }

    /// <summary>
    /// Writes descriptors that keep the spec's promises whatever the provider returned: at least one, every
    /// length nonzero, never past the requested length, and within 32 bits for compact replies.
    /// </summary>
    private int EncodeExtents(ReadOnlySpan<NbdStatusExtent> extents, long length, Span<byte> body)
    {
        int count = 0;
        long covered = 0;
        long lengthMax = _extended ? long.MaxValue : uint.MaxValue;
        foreach (var extent in extents)
        {
            if (covered >= length || extent.Length <= 0) break;
            long l = Math.Min(Math.Min(extent.Length, length - covered), lengthMax);
            WriteDescriptor(body, count++, l, extent.Flags);
            covered += l;
            if (l != extent.Length) break;
        }
        if (count == 0) WriteDescriptor(body, count++, Math.Min(length, lengthMax), 0);
        return count;
    }

    private void WriteDescriptor(Span<byte> body, int index, long length, uint flags)
    {
        if (_extended)
        {
            Span<byte> d = body.Slice(index * 16, 16);
            BinaryPrimitives.WriteUInt64BigEndian(d, (ulong)length);
            BinaryPrimitives.WriteUInt32BigEndian(d[8..], 0);
            BinaryPrimitives.WriteUInt32BigEndian(d[12..], flags);
        }
        else
        {
            Span<byte> d = body.Slice(index * 8, 8);
            BinaryPrimitives.WriteUInt32BigEndian(d, (uint)length);
            BinaryPrimitives.WriteUInt32BigEndian(d[4..], flags);
        }
    }
}
