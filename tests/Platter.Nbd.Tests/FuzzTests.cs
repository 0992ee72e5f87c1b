using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using Xunit.Abstractions;
using static Platter.Testing.NbdTestClient;

namespace Platter.Nbd.Tests;

/// <summary>
/// Seeded random and mutated client byte streams against <see cref="NbdServer.ServeConnectionAsync"/>: the server
/// must end every connection on its own (no hang), never fault, never log an unexpected error, and keep serving; and
/// every reply it sends must be well-formed and in step with what the client sent (<see cref="ReplyChecker"/>).
/// Replay a failure with PLATTER_FUZZ_SEED=&lt;seed&gt;.
/// </summary>
public class FuzzTests(ITestOutputHelper output)
{
    private static readonly TimeSpan ConnectionDeadline = TimeSpan.FromSeconds(15);

    private sealed class SocketPairFactory : IDisposable
    {
        private readonly Socket _listener;
        private readonly TempDirectory _dir = new("pnbdf");
        private readonly string _path;

        public SocketPairFactory()
        {
            _path = _dir.Combine("s");
            _listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            _listener.Bind(new UnixDomainSocketEndPoint(_path));
            _listener.Listen(16);
        }

        public async Task<(Socket Client, NetworkStream Server)> CreateAsync()
        {
            var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            var accept = _listener.AcceptAsync();
            await client.ConnectAsync(new UnixDomainSocketEndPoint(_path));
            return (client, new NetworkStream(await accept, ownsSocket: true));
        }

        public void Dispose()
        {
            _listener.Dispose();
            _dir.Dispose();
        }
    }

    private static int Seed()
    {
        string? fixedSeed = Environment.GetEnvironmentVariable("PLATTER_FUZZ_SEED");
        return fixedSeed is not null ? int.Parse(fixedSeed) : Random.Shared.Next();
    }

    [Fact]
    public async Task HandshakeAndTransmission_SurviveRandomAndMutatedInput()
    {
        int seed = Seed();
        output.WriteLine($"fuzz seed {seed} (replay with PLATTER_FUZZ_SEED={seed})");
        var rng = new Random(seed);
        var exports = new MemoryExportProvider(new MemoryExport("disk", 1 << 20), new MemoryExport("ro", 1 << 20, readOnly: true));
        var logger = new RecordingLogger();
        await using var server = new NbdServer(exports, new NbdServerOptions(), logger);
        using var pairs = new SocketPairFactory();

        // A budget, not an assertion: stop early on a slow machine so the whole test stays well under ~20 s.
        var budget = Stopwatch.StartNew();
        int iterations = 0, optionReplies = 0, replies = 0;
        for (; iterations < 3000 && budget.Elapsed < TimeSpan.FromSeconds(12); iterations++)
        {
            int kind = rng.Next(4);
            byte[] input = kind switch
            {
                0 => RandomBytes(rng, rng.Next(0, 200)),
                1 => Mutate(rng, BuildSession(rng, transmission: false)),
                _ => Mutate(rng, BuildSession(rng, transmission: true)),
            };
            var outcome = await RunOneAsync(server, pairs, input, $"seed {seed} iteration {iterations} kind {kind}");
            optionReplies += outcome.OptionReplies;
            replies += outcome.Replies;
        }
        output.WriteLine($"{iterations} connections fuzzed; {optionReplies} option replies and {replies} transmission replies checked");
        Assert.True(iterations >= 100, $"only {iterations} iterations ran (seed {seed})");
        // The reply check proves something only if replies came: most sessions are well-formed enough to get some.
        Assert.True(optionReplies >= iterations && replies >= iterations,
            $"seed {seed}: only {optionReplies} option replies and {replies} transmission replies in {iterations} connections");
        Assert.True(logger.Errors.Length == 0, $"seed {seed}: unexpected errors logged: {string.Join("\n", logger.Errors.Take(5))}");
        Assert.Equal(0, server.ActiveConnections);

        // The server still serves a well-behaved client.
        var (socket, serverStream) = await pairs.CreateAsync();
        var serving = server.ServeConnectionAsync(serverStream, CancellationToken.None);
        await using (var client = new NbdTestClient(new NetworkStream(socket, ownsSocket: true), socket))
        {
            await client.HandshakeAsync();
            Assert.Equal(RepAck, await client.StructuredReplyAsync());
            Assert.Equal(RepAck, await client.InfoOrGoAsync(OptGo, "disk"));
            Assert.Equal(0u, await client.WriteAsync(0, [1, 2, 3]));
            Assert.Equal(new byte[] { 1, 2, 3 }, (await client.ReadAsync(0, 3)).Data);
            await client.DisconnectAsync();
        }
        await serving.WaitAsync(ConnectionDeadline);
    }

    private static async Task<ReplyChecker.Outcome> RunOneAsync(NbdServer server, SocketPairFactory pairs, byte[] input, string context)
    {
        var (client, serverStream) = await pairs.CreateAsync();
        using (client)
        {
            Task serving = server.ServeConnectionAsync(serverStream, CancellationToken.None);
            // Read and check the replies concurrently, so a chatty server never blocks on a full socket buffer.
            var replies = new NetworkStream(client, ownsSocket: false);
            Task<ReplyChecker.Outcome> check = Task.Run(() => ReplyChecker.CheckAsync(replies, input));
            try
            {
                await client.SendAsync(input);
                client.Shutdown(SocketShutdown.Send);
            }
            catch (SocketException)
            {
                // The server may legitimately hang up before reading everything.
            }
            try
            {
                await serving.WaitAsync(ConnectionDeadline);
            }
            catch (TimeoutException)
            {
                Assert.Fail($"connection did not end ({context}), input {Convert.ToHexString(input.AsSpan(0, Math.Min(input.Length, 256)))}");
            }
            Assert.True(serving.IsCompletedSuccessfully, $"ServeConnectionAsync faulted ({context}): {serving.Exception}");
            var outcome = await check.WaitAsync(ConnectionDeadline);
            Assert.True(outcome.Fault is null,
                $"a malformed or out-of-step reply ({context}): {outcome.Fault}; input {Convert.ToHexString(input.AsSpan(0, Math.Min(input.Length, 256)))}");
            return outcome;
        }
    }

    private static byte[] RandomBytes(Random rng, int length)
    {
        byte[] b = new byte[length];
        rng.NextBytes(b);
        return b;
    }

    private static readonly uint[] Interesting = [0, 1, 0xffffffff, 0x80000000, 0x7fffffff, 32u << 20, (32u << 20) + 1, 4096, 0x49484156, 0x25609513, 0x21e41c71];

    private static byte[] Mutate(Random rng, byte[] input)
    {
        var b = new List<byte>(input);
        int mutations = rng.Next(0, 4);
        for (int m = 0; m < mutations && b.Count > 0; m++)
        {
            switch (rng.Next(5))
            {
                case 0:
                    b[rng.Next(b.Count)] ^= (byte)(1 << rng.Next(8));
                    break;
                case 1:
                    b[rng.Next(b.Count)] = (byte)rng.Next(256);
                    break;
                case 2:
                    int cut = rng.Next(b.Count);
                    b.RemoveRange(cut, b.Count - cut);
                    break;
                case 3:
                    b.InsertRange(rng.Next(b.Count), RandomBytes(rng, rng.Next(1, 16)));
                    break;
                case 4:
                    if (b.Count >= 4)
                    {
                        int at = rng.Next(b.Count - 3);
                        byte[] v = BE32(Interesting[rng.Next(Interesting.Length)]);
                        for (int i = 0; i < 4; i++) b[at + i] = v[i];
                    }
                    break;
            }
        }
        return [.. b];
    }

    private static byte[] Option(uint option, byte[] data) =>
        [.. BE32(0x49484156), .. BE32(0x454F5054), .. BE32(option), .. BE32((uint)data.Length), .. data];

    /// <summary>A plausible client byte stream: options in random order, then (optionally) GO and requests.</summary>
    private static byte[] BuildSession(Random rng, bool transmission)
    {
        var b = new List<byte>();
        b.AddRange(BE32(rng.Next(4) == 0 ? 1u : 3u));
        bool structured = false, extended = false;
        string export = rng.Next(3) == 0 ? "ro" : "disk";
        int options = rng.Next(0, 6);
        for (int i = 0; i < options; i++)
        {
            switch (rng.Next(9))
            {
                case 0: b.AddRange(Option(OptList, [])); break;
                case 1: b.AddRange(Option(OptInfo, InfoRequest(export, 0, 1, 2, 3))); break;
                case 2: b.AddRange(Option(OptStructuredReply, [])); structured |= !extended; break;
                case 3: b.AddRange(Option(OptExtendedHeaders, [])); extended = structured = true; break;
                case 4: b.AddRange(Option(OptListMetaContext, MetaContextRequest(export, "base:"))); break;
                case 5: b.AddRange(Option(OptSetMetaContext, MetaContextRequest(export, "base:allocation"))); break;
                case 6: b.AddRange(Option((uint)rng.Next(12, 100), RandomBytes(rng, rng.Next(0, 20)))); break;
                case 7: b.AddRange(Option(OptGo, InfoRequest("nope"))); break;
                case 8: b.AddRange(Option(OptStartTls, [])); break;
            }
        }
        if (!transmission)
        {
            if (rng.Next(2) == 0) b.AddRange(Option(OptAbort, []));
            return [.. b];
        }
        if (!extended && rng.Next(4) == 0) b.AddRange(Option(OptExportName, Encoding.UTF8.GetBytes(export)));
        else b.AddRange(Option(OptGo, InfoRequest(export, 3)));

        int requests = rng.Next(1, 24);
        for (int i = 0; i < requests; i++)
        {
            ushort type = (ushort)(rng.Next(10) == 0 ? rng.Next(8, 300) : rng.Next(0, 8));
            if (type == CmdDisc && rng.Next(3) != 0) type = CmdRead;
            ushort flags = (ushort)(rng.Next(3) == 0 ? rng.Next(0, 64) : 0);
            ulong offset = (ulong)(rng.Next(4) == 0 ? rng.NextInt64() : rng.Next(0, 1 << 20) & ~511);
            ulong length = (ulong)(rng.Next(8) == 0 ? rng.Next(0, 1 << 26) : rng.Next(0, 70000));
            if (type == CmdFlush && rng.Next(2) == 0) offset = length = 0;
            bool payload = extended ? type == CmdWrite || (flags & FlagPayloadLen) != 0 : type == CmdWrite;
            if (extended && type == CmdWrite) flags |= FlagPayloadLen;
            if (payload) length = Math.Min(length, 20000);
            byte[] h = new byte[extended ? 32 : 28];
            System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(h, extended ? 0x21e41c71u : 0x25609513u);
            System.Buffers.Binary.BinaryPrimitives.WriteUInt16BigEndian(h.AsSpan(4), flags);
            System.Buffers.Binary.BinaryPrimitives.WriteUInt16BigEndian(h.AsSpan(6), type);
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64BigEndian(h.AsSpan(8), (ulong)i);
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64BigEndian(h.AsSpan(16), offset);
            if (extended) System.Buffers.Binary.BinaryPrimitives.WriteUInt64BigEndian(h.AsSpan(24), length);
            else System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(24), (uint)length);
            b.AddRange(h);
            if (payload) b.AddRange(RandomBytes(rng, (int)length));
            if (type == CmdDisc) break;
        }
        return [.. b];
    }
}
