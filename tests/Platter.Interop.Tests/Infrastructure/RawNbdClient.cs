using System.Buffers.Binary;
using System.Net.Sockets;
using System.Text;
using Xunit.Sdk;

namespace Platter.Interop.Tests.Infrastructure;

/// <summary>
/// The smallest NBD client that can say things libnbd refuses to send (unknown command types): fixed
/// newstyle handshake, NBD_OPT_GO, then simple-reply transmission. Written from the protocol document
/// (NetworkBlockDevice/nbd doc/proto.md) for the tests only; every read has a timeout.
/// </summary>
public sealed class RawNbdClient : IAsyncDisposable
{
    private const ulong NbdMagic = 0x4e42444d41474943;            // "NBDMAGIC"
    private const ulong IHaveOpt = 0x49484156454F5054;            // "IHAVEOPT"
    private const ulong OptionReplyMagic = 0x0003e889045565a9;
    private const uint RequestMagic = 0x25609513;
    private const uint SimpleReplyMagic = 0x67446698;
    private const ushort FlagFixedNewstyle = 1;
    private const ushort FlagNoZeroes = 2;
    private const uint OptGo = 7;
    private const uint RepAck = 1;
    private const uint RepInfo = 3;
    private const ushort InfoExport = 0;

    public const ushort CmdRead = 0;
    public const ushort CmdWrite = 1;
    public const ushort CmdDisconnect = 2;
    public const ushort CmdFlush = 3;

    private static readonly TimeSpan IoTimeout = TimeSpan.FromSeconds(30);

    private readonly Socket _socket;
    private readonly NetworkStream _stream;
    private ulong _nextHandle = 1;

    private RawNbdClient(Socket socket)
    {
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: false);
    }

    /// <summary>Size from NBD_INFO_EXPORT.</summary>
    public long ExportSize { get; private set; }

    /// <summary>Transmission flags from NBD_INFO_EXPORT.</summary>
    public ushort TransmissionFlags { get; private set; }

    /// <summary>Connects, negotiates fixed newstyle and enters transmission on <paramref name="exportName"/>.</summary>
    public static async Task<RawNbdClient> ConnectAsync(string socketPath, string exportName)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath));
        var client = new RawNbdClient(socket);
        try
        {
            await client.HandshakeAsync(exportName);
            return client;
        }
        catch
        {
            await client.DisposeAsync();
            throw;
        }
    }

    private async Task HandshakeAsync(string exportName)
    {
        var greeting = await ReadExactAsync(18);
        if (BinaryPrimitives.ReadUInt64BigEndian(greeting) != NbdMagic || BinaryPrimitives.ReadUInt64BigEndian(greeting.AsSpan(8)) != IHaveOpt)
            throw new XunitException("server did not greet with NBDMAGIC IHAVEOPT (fixed newstyle)");
        ushort serverFlags = BinaryPrimitives.ReadUInt16BigEndian(greeting.AsSpan(16));
        if ((serverFlags & FlagFixedNewstyle) == 0) throw new XunitException("server does not offer fixed newstyle");

        // NO_ZEROES only when offered: the protocol forbids a client flag the server did not advertise.
        uint clientFlags = FlagFixedNewstyle | (uint)(serverFlags & FlagNoZeroes);
        var flags = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(flags, clientFlags);
        await _stream.WriteAsync(flags);

        byte[] name = Encoding.UTF8.GetBytes(exportName);
        var option = new byte[16 + 4 + name.Length + 2];
        BinaryPrimitives.WriteUInt64BigEndian(option, IHaveOpt);
        BinaryPrimitives.WriteUInt32BigEndian(option.AsSpan(8), OptGo);
        BinaryPrimitives.WriteUInt32BigEndian(option.AsSpan(12), (uint)(4 + name.Length + 2));
        BinaryPrimitives.WriteUInt32BigEndian(option.AsSpan(16), (uint)name.Length);
        name.CopyTo(option, 20);
        // Zero information requests: the server still sends NBD_INFO_EXPORT.
        await _stream.WriteAsync(option);

        while (true)
        {
            var header = await ReadExactAsync(20);
            if (BinaryPrimitives.ReadUInt64BigEndian(header) != OptionReplyMagic) throw new XunitException("bad option reply magic");
            uint replyOption = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8));
            uint type = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(12));
            uint length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(16));
            if (replyOption != OptGo) throw new XunitException($"reply to option {replyOption}, expected NBD_OPT_GO");
            if (length > 64 * 1024) throw new XunitException($"option reply of {length} bytes");
            var data = await ReadExactAsync((int)length);
            if ((type & 0x80000000) != 0)
                throw new XunitException($"NBD_OPT_GO failed: reply type 0x{type:x8} {Encoding.UTF8.GetString(data)}");
            if (type == RepInfo && length >= 12 && BinaryPrimitives.ReadUInt16BigEndian(data) == InfoExport)
            {
                ExportSize = (long)BinaryPrimitives.ReadUInt64BigEndian(data.AsSpan(2));
                TransmissionFlags = BinaryPrimitives.ReadUInt16BigEndian(data.AsSpan(10));
            }
            if (type == RepAck) break;
        }
        if (ExportSize == 0) throw new XunitException("server sent no NBD_INFO_EXPORT before NBD_REP_ACK");
    }

    /// <summary>Sends one request (with <paramref name="payload"/> for writes) and reads its simple reply.</summary>
    /// <returns>The reply's error (0 for success) and, for a successful read, <paramref name="length"/> bytes of data.</returns>
    public async Task<(uint Error, byte[] Data)> RequestAsync(ushort type, long offset, uint length, ReadOnlyMemory<byte> payload = default, ushort flags = 0)
    {
        ulong handle = _nextHandle++;
        var request = new byte[28];
        BinaryPrimitives.WriteUInt32BigEndian(request, RequestMagic);
        BinaryPrimitives.WriteUInt16BigEndian(request.AsSpan(4), flags);
        BinaryPrimitives.WriteUInt16BigEndian(request.AsSpan(6), type);
        BinaryPrimitives.WriteUInt64BigEndian(request.AsSpan(8), handle);
        BinaryPrimitives.WriteUInt64BigEndian(request.AsSpan(16), (ulong)offset);
        BinaryPrimitives.WriteUInt32BigEndian(request.AsSpan(24), length);
        await _stream.WriteAsync(request);
        if (!payload.IsEmpty) await _stream.WriteAsync(payload);

        var reply = await ReadExactAsync(16);
        if (BinaryPrimitives.ReadUInt32BigEndian(reply) != SimpleReplyMagic)
            throw new XunitException($"expected a simple reply, got magic 0x{BinaryPrimitives.ReadUInt32BigEndian(reply):x8}");
        uint error = BinaryPrimitives.ReadUInt32BigEndian(reply.AsSpan(4));
        ulong replyHandle = BinaryPrimitives.ReadUInt64BigEndian(reply.AsSpan(8));
        if (replyHandle != handle) throw new XunitException($"reply for handle {replyHandle}, expected {handle}");
        byte[] data = type == CmdRead && error == 0 ? await ReadExactAsync((int)length) : [];
        return (error, data);
    }

    /// <summary>Sends NBD_CMD_DISC (which has no reply) and waits for the server to close the connection.</summary>
    public async Task<bool> DisconnectAndWaitForCloseAsync()
    {
        var request = new byte[28];
        BinaryPrimitives.WriteUInt32BigEndian(request, RequestMagic);
        BinaryPrimitives.WriteUInt16BigEndian(request.AsSpan(6), CmdDisconnect);
        BinaryPrimitives.WriteUInt64BigEndian(request.AsSpan(8), _nextHandle++);
        await _stream.WriteAsync(request);
        using var cts = new CancellationTokenSource(IoTimeout);
        var one = new byte[1];
        return await _stream.ReadAsync(one, cts.Token) == 0;
    }

    private async Task<byte[]> ReadExactAsync(int count)
    {
        var buffer = new byte[count];
        using var cts = new CancellationTokenSource(IoTimeout);
        try
        {
            await _stream.ReadExactlyAsync(buffer, cts.Token);
        }
        catch (EndOfStreamException)
        {
            throw new XunitException($"server closed the connection while {count} bytes were expected");
        }
        catch (OperationCanceledException)
        {
            throw new XunitException($"no answer from the server within {IoTimeout.TotalSeconds} s");
        }
        return buffer;
    }

    public ValueTask DisposeAsync()
    {
        _stream.Dispose();
        _socket.Dispose();
        return ValueTask.CompletedTask;
    }
}
