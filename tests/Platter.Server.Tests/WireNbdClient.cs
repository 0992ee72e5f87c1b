using System.Buffers.Binary;
using System.Net.Sockets;
using System.Text;

namespace Platter.Server.Tests;

/// <summary>
/// Just enough NBD client to check what the server puts on the wire: fixed newstyle, NBD_OPT_EXPORT_NAME, then
/// simple replies (no structured replies are negotiated). Written from the protocol document
/// (NetworkBlockDevice/nbd doc/proto.md); every read has a deadline so a silent server fails the test instead
/// of hanging it.
/// </summary>
internal sealed class WireNbdClient : IAsyncDisposable
{
    public const ushort FlagHasFlags = 1 << 0;
    public const ushort FlagReadOnly = 1 << 1;
    public const ushort CmdRead = 0;
    public const ushort CmdWrite = 1;
    public const ushort CmdDisconnect = 2;
    public const ushort CmdFlush = 3;
    public const ushort CmdTrim = 4;
    public const ushort CmdWriteZeroes = 6;

    private const ulong NbdMagic = 0x4e42444d41474943;   // "NBDMAGIC"
    private const ulong IHaveOpt = 0x49484156454F5054;   // "IHAVEOPT"
    private const uint OptExportName = 1;
    private const uint RequestMagic = 0x25609513;
    private const uint SimpleReplyMagic = 0x67446698;
    private const ushort ServerFixedNewstyle = 1;
    private const ushort ServerNoZeroes = 2;

    private static readonly TimeSpan IoTimeout = TimeSpan.FromSeconds(30);

    private readonly Socket _socket;
    private readonly NetworkStream _stream;
    private ulong _cookie;

    private WireNbdClient(Socket socket)
    {
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: false);
    }

    public long Size { get; private set; }
    public ushort TransmissionFlags { get; private set; }

    public static async Task<WireNbdClient> ConnectAsync(string socketPath, string exportName)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath));
        }
        catch
        {
            socket.Dispose();
            throw;
        }
        var client = new WireNbdClient(socket);
        try
        {
            await client.NegotiateAsync(exportName);
            return client;
        }
        catch
        {
            await client.DisposeAsync();
            throw;
        }
    }

    private async Task NegotiateAsync(string exportName)
    {
        var greeting = await ReadExactAsync(18);
        if (BinaryPrimitives.ReadUInt64BigEndian(greeting) != NbdMagic || BinaryPrimitives.ReadUInt64BigEndian(greeting.AsSpan(8)) != IHaveOpt)
            throw new InvalidDataException("not a newstyle NBD greeting");
        ushort serverFlags = BinaryPrimitives.ReadUInt16BigEndian(greeting.AsSpan(16));
        bool noZeroes = (serverFlags & ServerNoZeroes) != 0;
        var clientFlags = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(clientFlags, (uint)(serverFlags & (ServerFixedNewstyle | ServerNoZeroes)));
        await _stream.WriteAsync(clientFlags);

        var name = Encoding.UTF8.GetBytes(exportName);
        var option = new byte[16 + name.Length];
        BinaryPrimitives.WriteUInt64BigEndian(option, IHaveOpt);
        BinaryPrimitives.WriteUInt32BigEndian(option.AsSpan(8), OptExportName);
        BinaryPrimitives.WriteUInt32BigEndian(option.AsSpan(12), (uint)name.Length);
        name.CopyTo(option, 16);
        await _stream.WriteAsync(option);

        // NBD_OPT_EXPORT_NAME has no error reply: an unknown name closes the connection.
        var reply = await ReadExactAsync(noZeroes ? 10 : 134);
        Size = (long)BinaryPrimitives.ReadUInt64BigEndian(reply);
        TransmissionFlags = BinaryPrimitives.ReadUInt16BigEndian(reply.AsSpan(8));
    }

    /// <summary>Sends one request and returns the reply's error (0 for success) and, for a successful read, the data.</summary>
    public async Task<(uint Error, byte[] Data)> RequestAsync(ushort type, long offset, int length, byte[]? payload = null)
    {
        var request = new byte[28 + (payload?.Length ?? 0)];
        ulong cookie = ++_cookie;
        BinaryPrimitives.WriteUInt32BigEndian(request, RequestMagic);
        BinaryPrimitives.WriteUInt16BigEndian(request.AsSpan(4), 0);
        BinaryPrimitives.WriteUInt16BigEndian(request.AsSpan(6), type);
        BinaryPrimitives.WriteUInt64BigEndian(request.AsSpan(8), cookie);
        BinaryPrimitives.WriteUInt64BigEndian(request.AsSpan(16), (ulong)offset);
        BinaryPrimitives.WriteUInt32BigEndian(request.AsSpan(24), (uint)length);
        payload?.CopyTo(request, 28);
        await _stream.WriteAsync(request);

        var header = await ReadExactAsync(16);
        if (BinaryPrimitives.ReadUInt32BigEndian(header) != SimpleReplyMagic) throw new InvalidDataException("expected a simple reply");
        uint error = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(4));
        if (BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(8)) != cookie) throw new InvalidDataException("reply to another request");
        var data = type == CmdRead && error == 0 ? await ReadExactAsync(length) : [];
        return (error, data);
    }

    private async Task<byte[]> ReadExactAsync(int count)
    {
        var buffer = new byte[count];
        using var deadline = new CancellationTokenSource(IoTimeout);
        await _stream.ReadExactlyAsync(buffer, deadline.Token);
        return buffer;
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            var disconnect = new byte[28];
            BinaryPrimitives.WriteUInt32BigEndian(disconnect, RequestMagic);
            BinaryPrimitives.WriteUInt16BigEndian(disconnect.AsSpan(6), CmdDisconnect);
            if (_socket.Connected) await _stream.WriteAsync(disconnect);
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
        {
            // Already gone: nothing to say goodbye to.
        }
        await _stream.DisposeAsync();
        _socket.Dispose();
    }
}
