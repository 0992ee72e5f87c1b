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
/// </summary>
internal sealed class ReplyWriter : IDisposable
{
    private readonly SemaphoreSlim _lock = new(1, 1);
    private byte[] _buffer = ArrayPool<byte>.Shared.Rent(NbdLimits.ReplyBufferBytes);
    private Stream _stream;
    private bool _broken;

    public ReplyWriter(Stream stream) => _stream = stream;

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
            Span<byte> h = _buffer.AsSpan(0, Protocol.SimpleReplySize);
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
            long payload = prefix.Length + body.Length;
            int headerSize;
            Span<byte> h = _buffer;
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

    private async ValueTask WriteWithHeaderAsync(int headerSize, ReadOnlyMemory<byte> body, CancellationToken cancellationToken)
    {
        if (headerSize + body.Length <= _buffer.Length)
        {
            body.CopyTo(_buffer.AsMemory(headerSize));
            await WriteAsync(_buffer.AsMemory(0, headerSize + body.Length), cancellationToken).ConfigureAwait(false);
        }
        else
        {
            await WriteAsync(_buffer.AsMemory(0, headerSize), cancellationToken).ConfigureAwait(false);
            await WriteAsync(body, cancellationToken).ConfigureAwait(false);
        }
        await FlushAsync(cancellationToken).ConfigureAwait(false);
    }

    private async ValueTask WriteAsync(ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        try
        {
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
