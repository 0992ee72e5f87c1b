using System.Buffers.Binary;
using System.Text;
using static Platter.Testing.NbdTestClient;

namespace Platter.Nbd.Tests;

/// <summary>
/// Reads everything a server sends on one fuzzed connection and checks it against the bytes the client sent: that
/// every message is well-formed (valid magic, lengths that add up, known reply and chunk types, each kind only where
/// the negotiation allows it) and in step with the client (option replies in the order the options were sent and
/// naming them; transmission replies only for requests that were sent and not yet answered, with the right cookie,
/// read data of the requested length and inside the requested range; the answered requests a prefix of those sent).
/// The client's bytes may be mutated: they are parsed the way the protocol frames them, and where they stop making a
/// frame the server may only hang up. Written from the protocol document, not from the server.
/// </summary>
/// <remarks>
/// The checker reads until the server closes even after it found a fault, so a server blocked on a full socket never
/// turns a wrong reply into a hang; the first fault is the verdict.
/// </remarks>
internal sealed class ReplyChecker
{
    private const ulong NbdMagic = 0x4e42444d41474943, IHaveOpt = 0x49484156454F5054, OptionReplyMagic = 0x3e889045565a9;
    private const uint RequestMagic = 0x25609513, ExtendedRequestMagic = 0x21e41c71;
    private const uint SimpleReplyMagic = 0x67446698, StructuredReplyMagic = 0x668e33ef, ExtendedReplyMagic = 0x6e8a278c;
    private const ushort ReplyFlagDone = 1, ReplyErrorOffset = 0x8002, InfoExport = 0, InfoBlockSize = 3;
    // The longest option reply payload this client accepts: names, descriptions and messages are at most 4 KiB each.
    private const int OptionReplyBytesMax = 64 * 1024;

    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    private readonly Stream _server;
    private readonly byte[] _input;
    private readonly byte[] _buffer = new byte[64 * 1024];
    private int _at;                  // next unparsed byte of the client's input
    private bool _structured, _extended, _noZeroes;
    private string? _fault;
    private long _serverBytes;
    private int _optionReplies, _replies;

    private sealed record Request(int Index, ushort Type, ulong Cookie, ulong Offset, ulong Length);

    private readonly List<Request> _sent = [];
    private readonly HashSet<int> _answered = [];

    private ReplyChecker(Stream server, byte[] input)
    {
        _server = server;
        _input = input;
    }

    /// <summary>What one connection's check found.</summary>
    /// <param name="Fault">The first fault, or null when every reply was right.</param>
    /// <param name="OptionReplies">Option replies checked.</param>
    /// <param name="Replies">Transmission replies (simple replies and chunks) checked.</param>
    public sealed record Outcome(string? Fault, int OptionReplies, int Replies);

    /// <summary>Reads <paramref name="server"/> to its end and checks every reply against <paramref name="input"/>.</summary>
    public static async Task<Outcome> CheckAsync(Stream server, byte[] input)
    {
        var checker = new ReplyChecker(server, input);
        try
        {
            await checker.RunAsync();
        }
        catch (Violation v)
        {
            checker._fault ??= $"{v.Message} (after {checker._serverBytes} bytes from the server)";
        }
        // Drain whatever follows, so the server never blocks on a reader that stopped.
        while (await checker.ReadSomeAsync() > 0) { }
        return new Outcome(checker._fault, checker._optionReplies, checker._replies);
    }

    private sealed class Violation(string message) : Exception(message);

    private async Task RunAsync()
    {
        byte[] greeting = await ExpectAsync(18, "the greeting");
        if (BE64(greeting, 0) != NbdMagic || BE64(greeting, 8) != IHaveOpt) throw new Violation("greeting without NBDMAGIC IHAVEOPT");

        if (!TakeInput(4, out int flagsAt)) { await ExpectEndAsync("the client sent no flags"); return; }
        uint clientFlags = BE32(_input, flagsAt);
        if ((clientFlags & ~3u) != 0) { await ExpectEndAsync($"unknown client flags 0x{clientFlags:x}"); return; }
        _noZeroes = (clientFlags & 2) != 0;

        if (!await NegotiateAsync()) return;
        await TransmissionAsync();
    }

    /// <returns>True when the server entered transmission.</returns>
    private async Task<bool> NegotiateAsync()
    {
        while (true)
        {
            if (!TakeInput(16, out int h)) { await ExpectEndAsync("the client's options ended"); return false; }
            if (BE64(_input, h) != IHaveOpt) { await ExpectEndAsync("an option without IHAVEOPT"); return false; }
            uint option = BE32(_input, h + 8);
            uint length = BE32(_input, h + 12);
            if (!TakeInput(length, out int dataAt)) { await ExpectEndAsync($"option {option}'s data was cut short"); return false; }

            if (option == OptExportName)
            {
                // No option reply: the export's size and flags (and 124 zero bytes unless NO_ZEROES), or a hang-up.
                byte[]? reply = await ReadOrEndAsync(_noZeroes ? 10 : 134, "NBD_OPT_EXPORT_NAME's reply");
                if (reply is null) return false;
                if ((BE16(reply, 8) & TxHasFlags) == 0) throw new Violation("NBD_OPT_EXPORT_NAME reply without NBD_FLAG_HAS_FLAGS");
                if (!_noZeroes && reply.AsSpan(10).ContainsAnyExcept((byte)0)) throw new Violation("NBD_OPT_EXPORT_NAME reply padding is not zeros");
                return true;
            }

            bool first = true;
            while (true)
            {
                byte[]? header = await ReadOrEndAsync(20, $"a reply to option {option}");
                if (header is null)
                {
                    if (!first) throw new Violation($"the server hung up in the middle of its replies to option {option}");
                    return false;
                }
                first = false;
                if (BE64(header, 0) != OptionReplyMagic) throw new Violation($"option reply magic 0x{BE64(header, 0):x}");
                uint repliedTo = BE32(header, 8), type = BE32(header, 12), replyLength = BE32(header, 16);
                _optionReplies++;
                if (repliedTo != option) throw new Violation($"a reply to option {repliedTo} where option {option} was sent (out of step)");
                if (replyLength > OptionReplyBytesMax) throw new Violation($"option {option} reply of {replyLength} bytes");
                byte[] data = await ExpectAsync((int)replyLength, $"option {option}'s reply data");
                if ((type & 0x80000000) != 0)
                {
                    try { StrictUtf8.GetString(data); }
                    catch (DecoderFallbackException) { throw new Violation($"option {option}'s error message is not UTF-8"); }
                    break;
                }
                switch (type)
                {
                    case RepAck:
                        if (replyLength != 0) throw new Violation($"NBD_REP_ACK to option {option} with {replyLength} bytes of data");
                        if (option == OptStructuredReply) _structured = true;
                        if (option == OptExtendedHeaders) _structured = _extended = true;
                        if (option == OptGo) return true;
                        if (option == OptAbort) { await ExpectEndAsync("NBD_OPT_ABORT was acknowledged"); return false; }
                        // Past an accepted STARTTLS the bytes are TLS records: nothing more to check here.
                        if (option == OptStartTls) throw new Violation("STARTTLS accepted by a server without a certificate");
                        break;
                    case RepServer when option == OptList:
                        if (replyLength < 4 || 4 + BE32(data, 0) > replyLength) throw new Violation("NBD_REP_SERVER with a bad name length");
                        continue;
                    case RepInfo when option is OptInfo or OptGo:
                        CheckInfo(data);
                        continue;
                    case RepMetaContext when option is OptListMetaContext or OptSetMetaContext:
                        if (replyLength < 5) throw new Violation("NBD_REP_META_CONTEXT without a name");
                        continue;
                    default:
                        throw new Violation($"reply type 0x{type:x} to option {option}");
                }
                break;
            }
        }
    }

    private static void CheckInfo(byte[] data)
    {
        if (data.Length < 2) throw new Violation("NBD_REP_INFO without a type");
        ushort info = BE16(data, 0);
        if (info == InfoExport && (data.Length != 12 || (BE16(data, 10) & TxHasFlags) == 0))
            throw new Violation($"NBD_INFO_EXPORT of {data.Length} bytes, flags 0x{(data.Length >= 12 ? BE16(data, 10) : 0):x}");
        if (info == InfoBlockSize && data.Length != 14) throw new Violation($"NBD_INFO_BLOCK_SIZE of {data.Length} bytes");
    }

    private async Task TransmissionAsync()
    {
        ParseRequests();
        Request? current = null;   // the read or block status whose chunks are still coming
        while (true)
        {
            byte[]? m = await ReadOrEndAsync(4, "a reply");
            if (m is null) break;
            uint magic = BE32(m, 0);
            _replies++;
            if (magic == SimpleReplyMagic)
            {
                if (_extended) throw new Violation("a simple reply after extended headers were negotiated");
                byte[] rest = await ExpectAsync(12, "a simple reply");
                uint error = BE32(rest, 0);
                var request = Answer(BE64(rest, 4), done: true);
                if (request.Type == CmdRead && error == 0)
                {
                    if (_structured) throw new Violation($"read {request.Cookie} answered with a simple reply after structured replies were negotiated");
                    await SkipAsync(request.Length, $"read {request.Cookie}'s {request.Length} bytes");
                }
                continue;
            }
            if (magic != StructuredReplyMagic && magic != ExtendedReplyMagic) throw new Violation($"reply magic 0x{magic:x8}");
            if (magic == StructuredReplyMagic && (!_structured || _extended))
                throw new Violation(_extended ? "a structured reply after extended headers were negotiated" : "a structured reply without negotiation");
            if (magic == ExtendedReplyMagic && !_extended) throw new Violation("an extended reply without negotiation");
            byte[] header = await ExpectAsync(magic == ExtendedReplyMagic ? 28 : 16, "a chunk header");
            ushort flags = BE16(header, 0), type = BE16(header, 2);
            ulong cookie = BE64(header, 4);
            ulong length = magic == ExtendedReplyMagic ? BE64(header, 20) : BE32(header, 12);
            current = Answer(cookie, (flags & ReplyFlagDone) != 0);
            await CheckChunkAsync(current, type, flags, length);
        }
        // In step to the end: the requests the server answered are the first ones it was sent, none skipped.
        var unanswered = _sent.Where(r => !_answered.Contains(r.Index)).Select(r => r.Index).DefaultIfEmpty(int.MaxValue).Min();
        var lastAnswered = _answered.DefaultIfEmpty(-1).Max();
        if (unanswered < lastAnswered)
            throw new Violation($"request {unanswered} was never answered although the later request {lastAnswered} was");
    }

    private async Task CheckChunkAsync(Request request, ushort type, ushort flags, ulong length)
    {
        if ((flags & ~ReplyFlagDone) != 0) throw new Violation($"chunk flags 0x{flags:x}");
        switch (type)
        {
            case ReplyNone:
                if (length != 0 || (flags & ReplyFlagDone) == 0) throw new Violation($"NBD_REPLY_TYPE_NONE of {length} bytes, flags {flags}");
                return;
            case ReplyOffsetData:
            {
                if (request.Type != CmdRead) throw new Violation($"read data for command {request.Type}");
                if (length <= 8) throw new Violation($"NBD_REPLY_TYPE_OFFSET_DATA of {length} bytes");
                ulong offset = BE64(await ExpectAsync(8, "a data chunk's offset"), 0);
                CheckInside(request, offset, length - 8, "data");
                await SkipAsync(length - 8, "a data chunk");
                return;
            }
            case ReplyOffsetHole:
            {
                if (request.Type != CmdRead) throw new Violation($"a hole for command {request.Type}");
                if (length != 12) throw new Violation($"NBD_REPLY_TYPE_OFFSET_HOLE of {length} bytes");
                byte[] hole = await ExpectAsync(12, "a hole chunk");
                CheckInside(request, BE64(hole, 0), BE32(hole, 8), "hole");
                return;
            }
            case ReplyBlockStatus:
            case ReplyBlockStatusExt:
            {
                bool ext = type == ReplyBlockStatusExt;
                if (request.Type != CmdBlockStatus) throw new Violation($"block status for command {request.Type}");
                if (ext != _extended) throw new Violation(ext ? "extended block status without extended headers" : "compact block status after extended headers");
                ulong fixedBytes = ext ? 8u : 4u, descriptor = ext ? 16u : 8u;
                if (length < fixedBytes + descriptor || (length - fixedBytes) % descriptor != 0 || length > 1 << 20)
                    throw new Violation($"block status chunk of {length} bytes");
                byte[] status = await ExpectAsync((int)length, "a block status chunk");
                if (ext && BE32(status, 4) != (length - 8) / 16) throw new Violation("extended block status count does not match its length");
                return;
            }
            case ReplyError:
            case ReplyErrorOffset:
            {
                ulong fixedBytes = type == ReplyErrorOffset ? 14u : 6u;
                if (length < fixedBytes || length > 1 << 16) throw new Violation($"error chunk of {length} bytes");
                byte[] error = await ExpectAsync((int)length, "an error chunk");
                if (BE32(error, 0) == 0) throw new Violation("an error chunk with error 0");
                if (fixedBytes + BE16(error, 4) != length) throw new Violation("an error chunk whose message length does not add up");
                return;
            }
            default:
                throw new Violation($"chunk type 0x{type:x}");
        }
    }

    private static void CheckInside(Request request, ulong offset, ulong length, string what)
    {
        if (length == 0 || offset < request.Offset || offset + length > request.Offset + request.Length || offset + length < offset)
            throw new Violation($"{what} [{offset}, +{length}) outside read {request.Cookie} [{request.Offset}, +{request.Length})");
    }

    // The client's requests as the protocol frames them, up to the first that is not a whole request (or NBD_CMD_DISC).
    private void ParseRequests()
    {
        int headerBytes = _extended ? 32 : 28;
        while (TakeInput((uint)headerBytes, out int h))
        {
            if (BE32(_input, h) != (_extended ? ExtendedRequestMagic : RequestMagic)) return;
            ushort flags = BE16(_input, h + 4), type = BE16(_input, h + 6);
            ulong cookie = BE64(_input, h + 8), offset = BE64(_input, h + 16);
            ulong length = _extended ? BE64(_input, h + 24) : BE32(_input, h + 24);
            if (type == CmdDisc) return; // no reply, and nothing after it is read
            // Whether a payload follows is framing: with extended headers the flag says so, without only writes carry one.
            bool payload = _extended ? (flags & FlagPayloadLen) != 0 : type == CmdWrite;
            _sent.Add(new Request(_sent.Count, type, cookie, offset, length));
            if (payload && !TakeInput(length, out _)) return;
        }
    }

    // The oldest sent, unanswered request with this cookie; an unknown cookie is a reply out of step.
    private Request Answer(ulong cookie, bool done)
    {
        var request = _sent.FirstOrDefault(r => r.Cookie == cookie && !_answered.Contains(r.Index))
            ?? throw new Violation($"a reply for cookie {cookie}, which no unanswered request has");
        if (done) _answered.Add(request.Index);
        return request;
    }

    private bool TakeInput(ulong count, out int at)
    {
        at = _at;
        if (count > (ulong)(_input.Length - _at)) return false;
        _at += (int)count;
        return true;
    }

    private async Task ExpectEndAsync(string why)
    {
        if (await ReadSomeAsync() > 0) throw new Violation($"the server sent more after {why}");
    }

    private async Task<byte[]> ExpectAsync(int count, string what) =>
        await ReadOrEndAsync(count, what) ?? throw new Violation($"the server hung up before {what}");

    // Null on a clean end (no byte of the message read); a message cut short is a violation.
    private async Task<byte[]?> ReadOrEndAsync(int count, string what)
    {
        byte[] b = new byte[count];
        int got = 0;
        while (got < count)
        {
            int n = await ReadAsync(b.AsMemory(got));
            if (n == 0)
            {
                if (got == 0) return null;
                throw new Violation($"{what} cut short after {got} of {count} bytes");
            }
            got += n;
            _serverBytes += n;
        }
        return b;
    }

    private async Task SkipAsync(ulong count, string what)
    {
        while (count > 0)
        {
            int n = await ReadAsync(_buffer.AsMemory(0, (int)Math.Min(count, (ulong)_buffer.Length)));
            if (n == 0) throw new Violation($"{what} cut short with {count} bytes missing");
            count -= (ulong)n;
            _serverBytes += n;
        }
    }

    private async Task<int> ReadSomeAsync()
    {
        int n = await ReadAsync(_buffer);
        _serverBytes += n;
        return n;
    }

    // A reset connection ends the stream like a close does: what was received before it is still checked.
    private async ValueTask<int> ReadAsync(Memory<byte> into)
    {
        try
        {
            return await _server.ReadAsync(into);
        }
        catch (IOException)
        {
            return 0;
        }
    }

    private static ulong BE64(byte[] b, int at) => BinaryPrimitives.ReadUInt64BigEndian(b.AsSpan(at));
    private static uint BE32(byte[] b, int at) => BinaryPrimitives.ReadUInt32BigEndian(b.AsSpan(at));
    private static ushort BE16(byte[] b, int at) => BinaryPrimitives.ReadUInt16BigEndian(b.AsSpan(at));
}
