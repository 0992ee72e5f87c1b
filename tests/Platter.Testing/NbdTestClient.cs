using System.Buffers.Binary;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography.X509Certificates;
using System.Text;

namespace Platter.Testing;

public sealed record OptionReply(uint Option, uint Type, byte[] Data)
{
    public bool IsError => (Type & 0x80000000) != 0;
}

public sealed record ExportInfo(long Size, ushort Flags, uint MinBlock, uint PreferredBlock, uint MaxBlock, string? Name, string? Description);

public sealed class Chunk
{
    public bool Simple;
    public uint Error;          // simple replies
    public ushort Flags;
    public ushort Type;
    public ulong Cookie;
    public ulong Offset;        // extended replies only
    public byte[] Payload = [];
}

public sealed class ReadResultData
{
    public uint Error;
    public byte[] Data = [];
    public List<Chunk> Chunks = [];
}

/// <summary>
/// The NBD client of every test project, written from the protocol document (NetworkBlockDevice/nbd doc/proto.md):
/// every message is built by hand, so tests can also send what a real client never would (unknown commands, bad
/// lengths, options out of order). It speaks fixed newstyle with NBD_OPT_GO or NBD_OPT_EXPORT_NAME, simple,
/// structured and extended replies, meta contexts and STARTTLS. Every read has a deadline (<see cref="IoTimeout"/>),
/// so a silent server fails the test instead of hanging it.
/// </summary>
public sealed class NbdTestClient : IAsyncDisposable
{
    /// <summary>The longest a test waits for bytes it expects; a server that says nothing for this long is hung.</summary>
    public static readonly TimeSpan IoTimeout = TimeSpan.FromSeconds(30);

    public const uint OptExportName = 1, OptAbort = 2, OptList = 3, OptStartTls = 5, OptInfo = 6, OptGo = 7,
        OptStructuredReply = 8, OptListMetaContext = 9, OptSetMetaContext = 10, OptExtendedHeaders = 11;
    public const uint RepAck = 1, RepServer = 2, RepInfo = 3, RepMetaContext = 4;
    public const uint ErrUnsup = 0x80000001, ErrPolicy = 0x80000002, ErrInvalid = 0x80000003, ErrTlsReqd = 0x80000005,
        ErrUnknown = 0x80000006, ErrTooBig = 0x80000009, ErrExtHeaderReqd = 0x8000000A;
    public const ushort CmdRead = 0, CmdWrite = 1, CmdDisc = 2, CmdFlush = 3, CmdTrim = 4, CmdCache = 5, CmdWriteZeroes = 6, CmdBlockStatus = 7;
    public const ushort FlagFua = 1, FlagNoHole = 2, FlagDf = 4, FlagReqOne = 8, FlagFastZero = 16, FlagPayloadLen = 32;
    public const ushort ReplyNone = 0, ReplyOffsetData = 1, ReplyOffsetHole = 2, ReplyBlockStatus = 5, ReplyBlockStatusExt = 6, ReplyError = 0x8001;
    public const ushort TxHasFlags = 1, TxReadOnly = 2, TxSendFlush = 4, TxSendFua = 8, TxSendTrim = 32, TxSendWriteZeroes = 64,
        TxSendDf = 128, TxCanMultiConn = 256, TxSendCache = 1024, TxSendFastZero = 2048;

    private Stream _stream;
    private readonly Socket? _socket;
    private readonly Dictionary<ulong, int> _pendingReads = [];
    private ulong _nextCookie = 1;

    public bool Structured { get; private set; }
    public bool Extended { get; private set; }
    public ushort HandshakeFlags { get; private set; }
    public ExportInfo? Info { get; private set; }

    public NbdTestClient(Stream stream, Socket? socket = null)
    {
        _stream = stream;
        _socket = socket;
    }

    public static async Task<NbdTestClient> ConnectUnixAsync(string path, bool handshake = true)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await socket.ConnectAsync(new UnixDomainSocketEndPoint(path));
        var client = new NbdTestClient(new NetworkStream(socket, ownsSocket: true), socket);
        if (handshake) await client.HandshakeAsync();
        return client;
    }

    /// <summary>
    /// Connects, negotiates fixed newstyle (and structured replies when <paramref name="structured"/>) and enters
    /// transmission on <paramref name="exportName"/> with NBD_OPT_GO; <see cref="Info"/> holds the export's size and
    /// flags. A refused export fails with the server's error type and message.
    /// </summary>
    public static async Task<NbdTestClient> ConnectAsync(string socketPath, string exportName, bool structured = false)
    {
        var client = await ConnectUnixAsync(socketPath);
        try
        {
            if (structured && await client.StructuredReplyAsync() != RepAck) throw new InvalidDataException("structured replies refused");
            var replies = await client.OptionAsync(OptGo, InfoRequest(exportName));
            var final = replies.Last();
            if (final.Type != RepAck)
                throw new InvalidDataException($"NBD_OPT_GO {exportName} refused: 0x{final.Type:x8} {Encoding.UTF8.GetString(final.Data)}");
            client.Info = ParseInfo(replies);
            return client;
        }
        catch
        {
            await client.DisposeAsync();
            throw;
        }
    }

    /// <summary>
    /// Connects and enters transmission on <paramref name="exportName"/> with NBD_OPT_EXPORT_NAME, the oldest way in
    /// (no error reply: an unknown name closes the connection); <see cref="Info"/> holds the size and flags.
    /// </summary>
    public static async Task<NbdTestClient> ConnectWithExportNameAsync(string socketPath, string exportName)
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
        var client = new NbdTestClient(new NetworkStream(socket, ownsSocket: true), socket);
        try
        {
            byte[] greeting = await client.ReadExactAsync(18);
            if (BinaryPrimitives.ReadUInt64BigEndian(greeting) != 0x4e42444d41474943 || BinaryPrimitives.ReadUInt64BigEndian(greeting.AsSpan(8)) != 0x49484156454F5054)
                throw new InvalidDataException("not a newstyle NBD greeting");
            client.HandshakeFlags = BinaryPrimitives.ReadUInt16BigEndian(greeting.AsSpan(16));
            // NO_ZEROES only when offered: the protocol forbids a client flag the server did not advertise.
            bool noZeroes = (client.HandshakeFlags & 2) != 0;
            await client.WriteAsync(BE32((uint)(client.HandshakeFlags & 3)));
            await client.SendOptionAsync(OptExportName, Encoding.UTF8.GetBytes(exportName));
            byte[] reply = await client.ReadExactAsync(noZeroes ? 10 : 134);
            client.Info = new ExportInfo((long)BinaryPrimitives.ReadUInt64BigEndian(reply), BinaryPrimitives.ReadUInt16BigEndian(reply.AsSpan(8)),
                0, 0, 0, null, null);
            return client;
        }
        catch
        {
            await client.DisposeAsync();
            throw;
        }
    }

    /// <summary>The export's size, once in transmission.</summary>
    public long Size => (Info ?? throw new InvalidOperationException("not in transmission")).Size;

    /// <summary>The export's transmission flags (<c>Tx*</c>), once in transmission.</summary>
    public ushort TransmissionFlags => (Info ?? throw new InvalidOperationException("not in transmission")).Flags;

    public Stream Stream => _stream;

    public async Task HandshakeAsync(uint clientFlags = 3)
    {
        byte[] greeting = await ReadExactAsync(18);
        if (BinaryPrimitives.ReadUInt64BigEndian(greeting) != 0x4e42444d41474943) throw new InvalidDataException("bad NBDMAGIC");
        if (BinaryPrimitives.ReadUInt64BigEndian(greeting.AsSpan(8)) != 0x49484156454F5054) throw new InvalidDataException("bad IHAVEOPT");
        HandshakeFlags = BinaryPrimitives.ReadUInt16BigEndian(greeting.AsSpan(16));
        await WriteAsync(BE32(clientFlags));
    }

    public async Task SendOptionAsync(uint option, byte[] data, uint? lengthOverride = null)
    {
        byte[] header = new byte[16];
        BinaryPrimitives.WriteUInt64BigEndian(header, 0x49484156454F5054);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(8), option);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(12), lengthOverride ?? (uint)data.Length);
        await WriteAsync([.. header, .. data]);
    }

    public async Task<OptionReply> ReadOptionReplyAsync()
    {
        byte[] h = await ReadExactAsync(20);
        if (BinaryPrimitives.ReadUInt64BigEndian(h) != 0x3e889045565a9) throw new InvalidDataException("bad option reply magic");
        uint option = BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(8));
        uint type = BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(12));
        uint length = BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(16));
        if (length > 1 << 20) throw new InvalidDataException("option reply too long");
        return new OptionReply(option, type, await ReadExactAsync((int)length));
    }

    /// <summary>Sends an option and collects replies up to and including the final one (ACK or error).</summary>
    public async Task<List<OptionReply>> OptionAsync(uint option, byte[]? data = null)
    {
        await SendOptionAsync(option, data ?? []);
        var replies = new List<OptionReply>();
        while (true)
        {
            var reply = await ReadOptionReplyAsync();
            if (reply.Option != option) throw new InvalidDataException($"reply for option {reply.Option}, expected {option}");
            replies.Add(reply);
            if (reply.Type == RepAck || reply.IsError) return replies;
        }
    }

    public async Task<uint> StructuredReplyAsync()
    {
        var r = (await OptionAsync(OptStructuredReply)).Last();
        if (r.Type == RepAck) Structured = true;
        return r.Type;
    }

    public async Task<uint> ExtendedHeadersAsync()
    {
        var r = (await OptionAsync(OptExtendedHeaders)).Last();
        if (r.Type == RepAck) { Extended = true; Structured = true; }
        return r.Type;
    }

    public static byte[] InfoRequest(string name, params ushort[] infos)
    {
        byte[] n = Encoding.UTF8.GetBytes(name);
        var data = new List<byte>();
        data.AddRange(BE32((uint)n.Length));
        data.AddRange(n);
        data.AddRange(BE16((ushort)infos.Length));
        foreach (ushort i in infos) data.AddRange(BE16(i));
        return [.. data];
    }

    /// <summary>INFO or GO; returns the final reply type and fills <see cref="Info"/> on success.</summary>
    public async Task<uint> InfoOrGoAsync(uint option, string name, params ushort[] infos)
    {
        var replies = await OptionAsync(option, InfoRequest(name, infos));
        uint final = replies.Last().Type;
        if (final == RepAck) Info = ParseInfo(replies);
        return final;
    }

    private static ExportInfo ParseInfo(List<OptionReply> replies)
    {
        long size = -1; ushort flags = 0; uint min = 0, pref = 0, max = 0; string? canonical = null, description = null;
        foreach (var r in replies.Where(r => r.Type == RepInfo))
        {
            ushort type = BinaryPrimitives.ReadUInt16BigEndian(r.Data);
            switch (type)
            {
                case 0:
                    if (r.Data.Length != 12) throw new InvalidDataException("INFO_EXPORT length");
                    size = (long)BinaryPrimitives.ReadUInt64BigEndian(r.Data.AsSpan(2));
                    flags = BinaryPrimitives.ReadUInt16BigEndian(r.Data.AsSpan(10));
                    break;
                case 1: canonical = Encoding.UTF8.GetString(r.Data.AsSpan(2)); break;
                case 2: description = Encoding.UTF8.GetString(r.Data.AsSpan(2)); break;
                case 3:
                    if (r.Data.Length != 14) throw new InvalidDataException("INFO_BLOCK_SIZE length");
                    min = BinaryPrimitives.ReadUInt32BigEndian(r.Data.AsSpan(2));
                    pref = BinaryPrimitives.ReadUInt32BigEndian(r.Data.AsSpan(6));
                    max = BinaryPrimitives.ReadUInt32BigEndian(r.Data.AsSpan(10));
                    break;
            }
        }
        if (size < 0) throw new InvalidDataException("ACK without INFO_EXPORT");
        return new ExportInfo(size, flags, min, pref, max, canonical, description);
    }

    public static byte[] MetaContextRequest(string export, params string[] queries)
    {
        var data = new List<byte>();
        byte[] n = Encoding.UTF8.GetBytes(export);
        data.AddRange(BE32((uint)n.Length));
        data.AddRange(n);
        data.AddRange(BE32((uint)queries.Length));
        foreach (string q in queries)
        {
            byte[] b = Encoding.UTF8.GetBytes(q);
            data.AddRange(BE32((uint)b.Length));
            data.AddRange(b);
        }
        return [.. data];
    }

    /// <summary>Returns (id, name) pairs, or throws with the error type.</summary>
    public async Task<(uint Final, List<(uint Id, string Name)> Contexts)> MetaContextAsync(uint option, string export, params string[] queries)
    {
        var replies = await OptionAsync(option, MetaContextRequest(export, queries));
        var contexts = replies.Where(r => r.Type == RepMetaContext)
            .Select(r => (BinaryPrimitives.ReadUInt32BigEndian(r.Data), Encoding.UTF8.GetString(r.Data.AsSpan(4)))).ToList();
        return (replies.Last().Type, contexts);
    }

    public async Task StartTlsAsync(string targetHost, X509Certificate2? clientCertificate = null)
    {
        var r = (await OptionAsync(OptStartTls)).Last();
        if (r.Type != RepAck) throw new InvalidDataException($"STARTTLS refused: 0x{r.Type:x}");
        var ssl = new SslStream(_stream, leaveInnerStreamOpen: false);
        var options = new SslClientAuthenticationOptions
        {
            TargetHost = targetHost,
            // Tests use a self-signed certificate; trust is pinned by thumbprint instead of a store.
            RemoteCertificateValidationCallback = (_, cert, _, _) => cert is not null,
        };
        if (clientCertificate is not null) options.ClientCertificates = [clientCertificate];
        await ssl.AuthenticateAsClientAsync(options);
        _stream = ssl;
        Structured = false;
        Extended = false;
    }

    // ---- transmission ----

    public ulong NextCookie() => _nextCookie++;

    public async Task SendRequestAsync(ushort type, ushort flags, ulong cookie, ulong offset, ulong length, byte[]? payload = null, bool? extended = null)
    {
        bool ext = extended ?? Extended;
        byte[] h = new byte[ext ? 32 : 28];
        BinaryPrimitives.WriteUInt32BigEndian(h, ext ? 0x21e41c71u : 0x25609513u);
        BinaryPrimitives.WriteUInt16BigEndian(h.AsSpan(4), flags);
        BinaryPrimitives.WriteUInt16BigEndian(h.AsSpan(6), type);
        BinaryPrimitives.WriteUInt64BigEndian(h.AsSpan(8), cookie);
        BinaryPrimitives.WriteUInt64BigEndian(h.AsSpan(16), offset);
        if (ext) BinaryPrimitives.WriteUInt64BigEndian(h.AsSpan(24), length);
        else BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(24), (uint)length);
        if (type == CmdRead) _pendingReads[cookie] = (int)Math.Min(length, int.MaxValue);
        await WriteAsync(payload is null ? h : [.. h, .. payload]);
    }

    /// <summary>Reads one reply message (a simple reply or one chunk).</summary>
    public async Task<Chunk> ReadChunkAsync()
    {
        byte[] magic = await ReadExactAsync(4);
        uint m = BinaryPrimitives.ReadUInt32BigEndian(magic);
        var chunk = new Chunk();
        if (m == 0x67446698)
        {
            byte[] rest = await ReadExactAsync(12);
            chunk.Simple = true;
            chunk.Error = BinaryPrimitives.ReadUInt32BigEndian(rest);
            chunk.Cookie = BinaryPrimitives.ReadUInt64BigEndian(rest.AsSpan(4));
            chunk.Flags = 1;
            if (chunk.Error == 0 && _pendingReads.TryGetValue(chunk.Cookie, out int n)) chunk.Payload = await ReadExactAsync(n);
            return chunk;
        }
        if (m == 0x668e33ef)
        {
            if (Extended) throw new InvalidDataException("structured reply in extended mode");
            byte[] rest = await ReadExactAsync(16);
            chunk.Flags = BinaryPrimitives.ReadUInt16BigEndian(rest);
            chunk.Type = BinaryPrimitives.ReadUInt16BigEndian(rest.AsSpan(2));
            chunk.Cookie = BinaryPrimitives.ReadUInt64BigEndian(rest.AsSpan(4));
            uint length = BinaryPrimitives.ReadUInt32BigEndian(rest.AsSpan(12));
            chunk.Payload = await ReadExactAsync(checked((int)length));
            return chunk;
        }
        if (m == 0x6e8a278c)
        {
            if (!Extended) throw new InvalidDataException("extended reply without negotiation");
            byte[] rest = await ReadExactAsync(28);
            chunk.Flags = BinaryPrimitives.ReadUInt16BigEndian(rest);
            chunk.Type = BinaryPrimitives.ReadUInt16BigEndian(rest.AsSpan(2));
            chunk.Cookie = BinaryPrimitives.ReadUInt64BigEndian(rest.AsSpan(4));
            chunk.Offset = BinaryPrimitives.ReadUInt64BigEndian(rest.AsSpan(12));
            ulong length = BinaryPrimitives.ReadUInt64BigEndian(rest.AsSpan(20));
            chunk.Payload = await ReadExactAsync(checked((int)length));
            return chunk;
        }
        throw new InvalidDataException($"bad reply magic 0x{m:x}");
    }

    /// <summary>Reads chunks of one request until DONE (replies must not interleave for this helper).</summary>
    public async Task<List<Chunk>> ReadReplyAsync(ulong cookie)
    {
        var chunks = new List<Chunk>();
        while (true)
        {
            Chunk c = await ReadChunkAsync();
            if (c.Cookie != cookie) throw new InvalidDataException($"reply for cookie {c.Cookie}, expected {cookie}");
            chunks.Add(c);
            if ((c.Flags & 1) != 0) { _pendingReads.Remove(cookie); return chunks; }
        }
    }

    public static uint ErrorOf(List<Chunk> chunks)
    {
        foreach (var c in chunks)
        {
            if (c.Simple && c.Error != 0) return c.Error;
            if ((c.Type & 0x8000) != 0) return BinaryPrimitives.ReadUInt32BigEndian(c.Payload);
        }
        return 0;
    }

    public async Task<ReadResultData> ReadAsync(long offset, int length, ushort flags = 0)
    {
        ulong cookie = NextCookie();
        await SendRequestAsync(CmdRead, flags, cookie, (ulong)offset, (ulong)length);
        var chunks = await ReadReplyAsync(cookie);
        var result = new ReadResultData { Chunks = chunks, Error = ErrorOf(chunks) };
        if (result.Error != 0) return result;
        if (chunks.Count == 1 && chunks[0].Simple) { result.Data = chunks[0].Payload; return result; }
        byte[] data = new byte[length];
        bool[] covered = new bool[length];
        foreach (var c in chunks)
        {
            if (c.Type == ReplyOffsetData)
            {
                long at = (long)BinaryPrimitives.ReadUInt64BigEndian(c.Payload) - offset;
                int n = c.Payload.Length - 8;
                if (at < 0 || at + n > length) throw new InvalidDataException("data chunk out of bounds");
                c.Payload.AsSpan(8).CopyTo(data.AsSpan((int)at));
                for (int i = 0; i < n; i++) { if (covered[at + i]) throw new InvalidDataException("overlap"); covered[at + i] = true; }
            }
            else if (c.Type == ReplyOffsetHole)
            {
                if (c.Payload.Length != 12) throw new InvalidDataException("hole chunk length");
                long at = (long)BinaryPrimitives.ReadUInt64BigEndian(c.Payload) - offset;
                uint n = BinaryPrimitives.ReadUInt32BigEndian(c.Payload.AsSpan(8));
                if (n == 0 || at < 0 || at + n > length) throw new InvalidDataException("hole chunk out of bounds");
                for (int i = 0; i < n; i++) { if (covered[at + i]) throw new InvalidDataException("overlap"); covered[at + i] = true; }
            }
            else if (c.Type != ReplyNone) throw new InvalidDataException($"unexpected chunk type {c.Type}");
        }
        if (covered.Any(x => !x)) throw new InvalidDataException("read reply does not cover the request");
        result.Data = data;
        return result;
    }

    public async Task<uint> CommandAsync(ushort type, ushort flags, long offset, long length, byte[]? payload = null)
    {
        ulong cookie = NextCookie();
        await SendRequestAsync(type, flags, cookie, (ulong)offset, (ulong)length, payload);
        return ErrorOf(await ReadReplyAsync(cookie));
    }

    public Task<uint> WriteAsync(long offset, byte[] data, ushort flags = 0) =>
        CommandAsync(CmdWrite, (ushort)(flags | (Extended ? FlagPayloadLen : 0)), offset, data.Length, data);

    public Task<uint> FlushAsync() => CommandAsync(CmdFlush, 0, 0, 0);

    /// <summary>
    /// Sends one request of any <paramref name="type"/> (even one the protocol does not define) and reads its whole
    /// reply; returns the reply's error (0 for success) and, for a successful read, the data.
    /// </summary>
    public async Task<(uint Error, byte[] Data)> RequestAsync(ushort type, long offset, int length, byte[]? payload = null, ushort flags = 0)
    {
        if (type == CmdRead)
        {
            var read = await ReadAsync(offset, length, flags);
            return (read.Error, read.Data);
        }
        if (type == CmdWrite && Extended) flags |= FlagPayloadLen;
        return (await CommandAsync(type, flags, offset, length, payload), []);
    }

    /// <summary>Sends NBD_CMD_DISC (which has no reply) and returns whether the server then closed the connection.</summary>
    public async Task<bool> DisconnectAndWaitForCloseAsync()
    {
        await DisconnectAsync();
        return await IsClosedByServerAsync();
    }

    /// <summary>BLOCK_STATUS; returns per context id its (length, flags) descriptors.</summary>
    public async Task<(uint Error, Dictionary<uint, List<(ulong Length, uint Flags)>> Extents, List<Chunk> Chunks)> BlockStatusAsync(long offset, long length, ushort flags = 0)
    {
        ulong cookie = NextCookie();
        await SendRequestAsync(CmdBlockStatus, flags, cookie, (ulong)offset, (ulong)length);
        var chunks = await ReadReplyAsync(cookie);
        var result = new Dictionary<uint, List<(ulong, uint)>>();
        foreach (var c in chunks)
        {
            if (c.Type == ReplyBlockStatus)
            {
                if (Extended) throw new InvalidDataException("compact status in extended mode (allowed, but this server never does it)");
                uint id = BinaryPrimitives.ReadUInt32BigEndian(c.Payload);
                var list = new List<(ulong, uint)>();
                for (int i = 4; i < c.Payload.Length; i += 8)
                    list.Add((BinaryPrimitives.ReadUInt32BigEndian(c.Payload.AsSpan(i)), BinaryPrimitives.ReadUInt32BigEndian(c.Payload.AsSpan(i + 4))));
                result[id] = list;
            }
            else if (c.Type == ReplyBlockStatusExt)
            {
                if (!Extended) throw new InvalidDataException("extended status without negotiation");
                uint id = BinaryPrimitives.ReadUInt32BigEndian(c.Payload);
                uint count = BinaryPrimitives.ReadUInt32BigEndian(c.Payload.AsSpan(4));
                if (c.Payload.Length != 8 + 16 * count) throw new InvalidDataException("descriptor count mismatch");
                var list = new List<(ulong, uint)>();
                for (int i = 8; i < c.Payload.Length; i += 16)
                    list.Add((BinaryPrimitives.ReadUInt64BigEndian(c.Payload.AsSpan(i)), BinaryPrimitives.ReadUInt32BigEndian(c.Payload.AsSpan(i + 12))));
                result[id] = list;
            }
        }
        return (ErrorOf(chunks), result, chunks);
    }

    public async Task DisconnectAsync()
    {
        await SendRequestAsync(CmdDisc, 0, NextCookie(), 0, 0);
    }

    /// <summary>
    /// True when the server closed the connection (read returns end of stream); false when it sent a byte instead.
    /// A server that does neither within <see cref="IoTimeout"/> fails the test.
    /// </summary>
    public async Task<bool> IsClosedByServerAsync()
    {
        byte[] one = new byte[1];
        using var deadline = new CancellationTokenSource(IoTimeout);
        try
        {
            return await _stream.ReadAsync(one, deadline.Token) == 0;
        }
        catch (OperationCanceledException)
        {
            throw new TimeoutException($"the server neither closed the connection nor sent anything within {IoTimeout.TotalSeconds:0} s");
        }
        catch (IOException)
        {
            return true;
        }
    }

    public async Task WriteAsync(byte[] data)
    {
        await _stream.WriteAsync(data);
        await _stream.FlushAsync();
    }

    /// <summary>Reads exactly <paramref name="n"/> bytes; end of stream throws <see cref="EndOfStreamException"/>, silence past <see cref="IoTimeout"/> a <see cref="TimeoutException"/>.</summary>
    public async Task<byte[]> ReadExactAsync(int n)
    {
        byte[] b = new byte[n];
        using var deadline = new CancellationTokenSource(IoTimeout);
        try
        {
            await _stream.ReadExactlyAsync(b, deadline.Token);
        }
        catch (OperationCanceledException) when (deadline.IsCancellationRequested)
        {
            throw new TimeoutException($"no answer from the server within {IoTimeout.TotalSeconds:0} s while {n} bytes were expected");
        }
        return b;
    }

    public static byte[] BE32(uint v) { byte[] b = new byte[4]; BinaryPrimitives.WriteUInt32BigEndian(b, v); return b; }
    public static byte[] BE16(ushort v) { byte[] b = new byte[2]; BinaryPrimitives.WriteUInt16BigEndian(b, v); return b; }

    public async ValueTask DisposeAsync()
    {
        try { await _stream.DisposeAsync(); } catch { }
        _socket?.Dispose();
    }
}
