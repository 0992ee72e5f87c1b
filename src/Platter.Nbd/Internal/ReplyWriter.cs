using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.CompilerServices;

namespace Platter.Nbd.Internal;

[InlineArray(16)]
internal struct Bytes16
{
    private byte _element0;
}

/// <summary>Up to 16 fixed bytes that follow a reply chunk header (offset, hole size, error code, context id).</summary>
internal struct ChunkPrefix
{
    public Bytes16 Data;
    public int Length;

    public static ChunkPrefix None => default;

    public static ChunkPrefix Offset(ulong offset)
    {
        ChunkPrefix p = default;
        BinaryPrimitives.WriteUInt64BigEndian(p.Data, offset);
        p.Length = 8;
        return p;
    }

    public static ChunkPrefix Hole(ulong offset, uint length)
    {
        ChunkPrefix p = default;
        BinaryPrimitives.WriteUInt64BigEndian(p.Data, offset);
        BinaryPrimitives.WriteUInt32BigEndian(((Span<byte>)p.Data)[8..], length);
        p.Length = 12;
        return p;
    }

    public static ChunkPrefix Error(uint error, ushort messageLength)
    {
        ChunkPrefix p = default;
        BinaryPrimitives.WriteUInt32BigEndian(p.Data, error);
        BinaryPrimitives.WriteUInt16BigEndian(((Span<byte>)p.Data)[4..], messageLength);
        p.Length = 6;
        return p;
    }

    public static ChunkPrefix BlockStatus(uint contextId, bool extended, uint count)
    {
        ChunkPrefix p = default;
        BinaryPrimitives.WriteUInt32BigEndian(p.Data, contextId);
        p.Length = 4;
        if (extended)
        {
            BinaryPrimitives.WriteUInt32BigEndian(((Span<byte>)p.Data)[4..], count);
            p.Length = 8;
        }
        return p;
    }
}

/// <summary>
/// Serializes every reply of a connection onto its stream: one lock, one reusable buffer. A reply with a
/// small payload leaves in a single write; a large payload goes out as header then payload with no copy.
/// After a failed write the stream is in an unknown state, so the writer is broken for good and the
/// connection is torn down.
///
/// Corked (<see cref="Cork"/>) while the read loop serves requests it has already received: replies gather in the
/// buffer and leave together when the loop is about to wait (<see cref="UncorkAsync"/>), one send for a batch of
/// replies instead of one each. At depth 32 that send per 4 KiB write was the largest share of the server's
/// syscalls (docs/PERFORMANCE.md, issue 15). A client that waits for a reply before it sends more finds the loop
/// waiting for it, so the reply is never held back.
/// </summary>
internal sealed class ReplyWriter : IDisposable
{
    // Largest reply header with its fixed prefix (extended chunk header and a 16-byte chunk prefix).
    private const int HeaderBytesMax = Protocol.ExtendedReplySize + 16;

    private readonly SemaphoreSlim _lock = new(1, 1);
    private byte[] _buffer = ArrayPool<byte>.Shared.Rent(NbdLimits.ReplyBufferBytes);
    private Stream _stream;
    private bool _broken;
    // Bytes at the start of _buffer not sent yet (only while corked, or inside the lock). Guarded by _lock.
    private int _pending;
    // Set by the read loop without the lock (a sender that misses it just sends at once); cleared under the lock.
    private volatile bool _corked;

    /// <summary>Holds replies in the buffer until <see cref="UncorkAsync"/> (called by the read loop only).</summary>
    public void Cork() => _corked = true;

    /// <summary>Sends the replies gathered while corked, and sends each later one at once.</summary>
    public async ValueTask UncorkAsync(CancellationToken cancellationToken)
    {
        if (!_corked) return;
        await _lock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            _corked = false;
            if (_pending > 0 && !_broken) await SendPendingAsync(flush: true, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _lock.Release();
        }
    }

    public ReplyWriter(Stream stream) => _stream = stream;

    /// <summary>Called before every send (<see cref="INbdRepliesSending"/>), or null.</summary>
    public Action? BeforeSend { get; set; }

    /// <summary>Extended headers negotiated: every reply is a 32-byte extended chunk header.</summary>
    public bool Extended { get; set; }

    public void SetStream(Stream stream) => _stream = stream;

    /// <summary>Handshake messages, already encoded.</summary>
    public async ValueTask SendRawAsync(ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        await _lock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            ThrowIfBroken();
            if (_pending > 0) await SendPendingAsync(flush: false, cancellationToken).ConfigureAwait(false);
            await WriteAsync(data, cancellationToken).ConfigureAwait(false);
            await FlushAsync(cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _lock.Release();
        }
    }

    public async ValueTask SendSimpleAsync(ulong cookie, uint error, ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        await _lock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            ThrowIfBroken();
            await MakeRoomForHeaderAsync(cancellationToken).ConfigureAwait(false);
            Span<byte> h = _buffer.AsSpan(_pending, Protocol.SimpleReplySize);
            BinaryPrimitives.WriteUInt32BigEndian(h, Protocol.SimpleReplyMagic);
            BinaryPrimitives.WriteUInt32BigEndian(h[4..], error);
            BinaryPrimitives.WriteUInt64BigEndian(h[8..], cookie);
            await WriteWithHeaderAsync(Protocol.SimpleReplySize, data, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _lock.Release();
        }
    }

    public async ValueTask SendChunkAsync(ulong cookie, ulong requestOffset, ushort flags, ushort type, ChunkPrefix prefix,
        ReadOnlyMemory<byte> body, CancellationToken cancellationToken)
    {
        await _lock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            ThrowIfBroken();
            await MakeRoomForHeaderAsync(cancellationToken).ConfigureAwait(false);
            long payload = prefix.Length + body.Length;
            int headerSize;
            Span<byte> h = _buffer.AsSpan(_pending);
            if (Extended)
            {
                BinaryPrimitives.WriteUInt32BigEndian(h, Protocol.ExtendedReplyMagic);
                BinaryPrimitives.WriteUInt16BigEndian(h[4..], flags);
                BinaryPrimitives.WriteUInt16BigEndian(h[6..], type);
                BinaryPrimitives.WriteUInt64BigEndian(h[8..], cookie);
                BinaryPrimitives.WriteUInt64BigEndian(h[16..], requestOffset);
                BinaryPrimitives.WriteUInt64BigEndian(h[24..], (ulong)payload);
                headerSize = Protocol.ExtendedReplySize;
            }
            else
            {
                BinaryPrimitives.WriteUInt32BigEndian(h, Protocol.StructuredReplyMagic);
                BinaryPrimitives.WriteUInt16BigEndian(h[4..], flags);
                BinaryPrimitives.WriteUInt16BigEndian(h[6..], type);
                BinaryPrimitives.WriteUInt64BigEndian(h[8..], cookie);
                BinaryPrimitives.WriteUInt32BigEndian(h[16..], checked((uint)payload));
                headerSize = Protocol.StructuredReplySize;
            }
            ((ReadOnlySpan<byte>)prefix.Data)[..prefix.Length].CopyTo(h[headerSize..]);
            await WriteWithHeaderAsync(headerSize + prefix.Length, body, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _lock.Release();
        }
    }

    // The header is in _buffer at _pending; the reply joins what is pending, and goes out unless the writer is corked.
    private async ValueTask WriteWithHeaderAsync(int headerSize, ReadOnlyMemory<byte> body, CancellationToken cancellationToken)
    {
        int end = _pending + headerSize;
        if (end + body.Length <= _buffer.Length)
        {
            body.CopyTo(_buffer.AsMemory(end));
            _pending = end + body.Length;
            if (_corked) return;
            await SendPendingAsync(flush: true, cancellationToken).ConfigureAwait(false);
        }
        else
        {
            _pending = end;
            await SendPendingAsync(flush: false, cancellationToken).ConfigureAwait(false);
            await WriteAsync(body, cancellationToken).ConfigureAwait(false);
            await FlushAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    // A full buffer goes out before another header is written after what it holds.
    private ValueTask MakeRoomForHeaderAsync(CancellationToken cancellationToken) =>
        _pending + HeaderBytesMax <= _buffer.Length ? default : SendPendingAsync(flush: false, cancellationToken);

    private async ValueTask SendPendingAsync(bool flush, CancellationToken cancellationToken)
    {
        int pending = _pending;
        _pending = 0;
        await WriteAsync(_buffer.AsMemory(0, pending), cancellationToken).ConfigureAwait(false);
        if (flush) await FlushAsync(cancellationToken).ConfigureAwait(false);
    }

    private async ValueTask WriteAsync(ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        try
        {
            BeforeSend?.Invoke();
            await _stream.WriteAsync(data, cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            _broken = true;
            throw;
        }
    }

    private async ValueTask FlushAsync(CancellationToken cancellationToken)
    {
        try
        {
            await _stream.FlushAsync(cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            _broken = true;
            throw;
        }
    }

    private void ThrowIfBroken()
    {
        if (_broken) throw new IOException("The connection failed while sending an earlier reply.");
    }

    public void Dispose()
    {
        // Only called once no reply can be in progress (all requests finished or the connection aborted),
        // so taking the lock with a zero timeout tells whether a sender still holds the buffer.
        if (_lock.Wait(0))
        {
            byte[] buffer = Interlocked.Exchange(ref _buffer, []);
            if (buffer.Length > 0) ArrayPool<byte>.Shared.Return(buffer);
        }
    }
}
