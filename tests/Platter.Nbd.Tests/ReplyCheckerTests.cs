using System.Buffers.Binary;
using static Platter.Testing.NbdTestClient;

namespace Platter.Nbd.Tests;

/// <summary>
/// The fuzzer's reply check must be able to fail: hand-made server streams, one right and each other wrong in one
/// way, against one client session (fixed newstyle, NBD_OPT_GO "disk", a 512-byte read with cookie 7, a flush).
/// </summary>
public class ReplyCheckerTests
{
    private static readonly byte[] Session =
    [
        .. BE32(3),
        .. Option(OptGo, InfoRequest("disk")),
        .. Request(CmdRead, cookie: 7, offset: 4096, length: 512),
        .. Request(CmdFlush, cookie: 8, offset: 0, length: 0),
    ];

    private static byte[] Greeting => [.. BE64(0x4e42444d41474943), .. BE64(0x49484156454F5054), .. BE16(3)];

    private static byte[] GoAccepted(uint option = OptGo) =>
    [
        .. OptionReply(option, RepInfo, [.. BE16(0), .. BE64(1 << 20), .. BE16(TxHasFlags | TxSendFlush)]),
        .. OptionReply(option, RepAck, []),
    ];

    [Fact]
    public async Task Right_replies_pass()
    {
        byte[] server = [.. Greeting, .. GoAccepted(), .. SimpleReply(8, 0), .. SimpleReply(7, 0), .. new byte[512]];
        var outcome = await CheckAsync(server);
        Assert.Null(outcome.Fault);
        Assert.Equal((2, 2), (outcome.OptionReplies, outcome.Replies));
    }

    [Fact]
    public async Task A_reply_for_a_cookie_never_sent_is_out_of_step()
    {
        byte[] server = [.. Greeting, .. GoAccepted(), .. SimpleReply(9, 0)];
        Assert.Contains("cookie 9", (await CheckAsync(server)).Fault);
    }

    [Fact]
    public async Task An_option_reply_naming_another_option_is_out_of_step()
    {
        byte[] server = [.. Greeting, .. GoAccepted(OptInfo)];
        Assert.Contains("out of step", (await CheckAsync(server)).Fault);
    }

    [Fact]
    public async Task Read_data_shorter_than_asked_is_malformed()
    {
        byte[] server = [.. Greeting, .. GoAccepted(), .. SimpleReply(7, 0), .. new byte[100]];
        Assert.Contains("cut short", (await CheckAsync(server)).Fault);
    }

    [Fact]
    public async Task A_bad_reply_magic_is_malformed()
    {
        byte[] server = [.. Greeting, .. GoAccepted(), .. BE32(0x12345678), .. new byte[12]];
        Assert.Contains("reply magic 0x12345678", (await CheckAsync(server)).Fault);
    }

    [Fact]
    public async Task A_later_request_answered_before_an_earlier_one_was_dropped_is_out_of_step()
    {
        byte[] server = [.. Greeting, .. GoAccepted(), .. SimpleReply(8, 0)];
        Assert.Contains("request 0 was never answered", (await CheckAsync(server)).Fault);
    }

    private static Task<ReplyChecker.Outcome> CheckAsync(byte[] server) => ReplyChecker.CheckAsync(new MemoryStream(server), Session);

    private static byte[] Option(uint option, byte[] data) => [.. BE64(0x49484156454F5054), .. BE32(option), .. BE32((uint)data.Length), .. data];

    private static byte[] OptionReply(uint option, uint type, byte[] data) =>
        [.. BE64(0x3e889045565a9), .. BE32(option), .. BE32(type), .. BE32((uint)data.Length), .. data];

    private static byte[] Request(ushort type, ulong cookie, ulong offset, uint length) =>
        [.. BE32(0x25609513), .. BE16(0), .. BE16(type), .. BE64(cookie), .. BE64(offset), .. BE32(length)];

    private static byte[] SimpleReply(ulong cookie, uint error) => [.. BE32(0x67446698), .. BE32(error), .. BE64(cookie)];

    private static byte[] BE64(ulong v)
    {
        byte[] b = new byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(b, v);
        return b;
    }
}
