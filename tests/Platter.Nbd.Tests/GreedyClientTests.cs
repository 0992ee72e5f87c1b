using System.Text;
using static Platter.Testing.NbdTestClient;

namespace Platter.Nbd.Tests;

/// <summary>
/// Careless and greedy clients (issue 12): an over-size write, a client that never finishes its handshake, one that
/// opens too many connections, one that skips TLS when client certificates are required; and an export that exists
/// but cannot be opened (issue 9).
/// </summary>
public class GreedyClientTests
{
    [Fact]
    public async Task An_oversize_write_is_answered_EINVAL_and_the_connection_stays_in_step()
    {
        await using var server = await TestServer.StartDefaultAsync();
        await using var client = await server.OpenAsync("disk");
        var oversize = new byte[NbdLimits.PayloadBytesMax + 4096];
        Array.Fill(oversize, (byte)0x5a);

        Assert.Equal(22u, await client.WriteAsync(0, oversize)); // EINVAL, after the server read past the payload

        // Nothing of the refused write landed, and the next requests are parsed where they begin.
        var small = Enumerable.Repeat((byte)0x33, 4096).ToArray();
        Assert.Equal(0u, await client.WriteAsync(8192, small));
        var read = await client.ReadAsync(0, 12288);
        Assert.Equal(0u, read.Error);
        Assert.All(read.Data.AsSpan(0, 8192).ToArray(), b => Assert.Equal(0, b));
        Assert.Equal(small, read.Data.AsSpan(8192).ToArray());
    }

    [Fact]
    public async Task A_write_too_large_to_skip_ends_only_that_connection()
    {
        await using var server = await TestServer.StartDefaultAsync();
        await using (var client = await server.OpenAsync("disk"))
        {
            // Header only: a client announcing more than twice the maximum is not worth reading.
            await client.SendRequestAsync(CmdWrite, 0, client.NextCookie(), 0, (ulong)NbdLimits.WritePayloadDiscardBytesMax + 1);
            Assert.True(await client.IsClosedByServerAsync());
        }
        await using var other = await server.OpenAsync("disk");
        Assert.Equal(0u, await other.FlushAsync());
    }

    [Fact]
    public async Task A_client_over_its_connection_cap_is_refused_while_others_keep_room()
    {
        // On a unix socket a peer is a process: this test process is one peer.
        await using var server = await TestServer.StartAsync(TestServer.DefaultExports(), new NbdServerOptions { MaxConnectionsPerPeer = 2 });
        await using var first = await server.OpenAsync("disk");
        await using var second = await server.OpenAsync("ro");

        await using (var third = await server.ConnectAsync(handshake: false))
            Assert.True(await third.IsClosedByServerAsync(), "a third connection from the same process must be refused");

        // The registry shows the two clients with their exports and modes.
        var clients = server.Server.Connections.OrderBy(c => c.Export, StringComparer.Ordinal).ToList();
        Assert.Equal(["disk", "ro"], clients.Select(c => c.Export));
        Assert.Equal([false, true], clients.Select(c => c.ReadOnly));
        Assert.All(clients, c => Assert.StartsWith($"unix pid {Environment.ProcessId} uid ", c.Peer));

        // A slot comes back when a connection ends.
        await first.DisposeAsync();
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (server.Server.ActiveConnections > 1 && DateTime.UtcNow < deadline) await Task.Delay(20);
        await using var again = await server.OpenAsync("disk");
        Assert.Equal(0u, await again.FlushAsync());
    }

    [Fact]
    public async Task A_client_that_never_finishes_its_handshake_is_disconnected()
    {
        var options = new NbdServerOptions { HandshakeTimeout = TimeSpan.FromMilliseconds(300) };
        await using var server = await TestServer.StartAsync(TestServer.DefaultExports(), options);
        await using var idle = await server.ConnectAsync(handshake: false);
        // The greeting arrives, then nothing is sent: the server hangs up instead of holding the slot.
        var greeting = new byte[18];
        await idle.Stream.ReadExactlyAsync(greeting);
        Assert.True(await idle.IsClosedByServerAsync().WaitAsync(TimeSpan.FromSeconds(30)));
        // The slot is released just after the socket closes (the client can see the close first).
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (server.Server.ActiveConnections > 0 && DateTime.UtcNow < deadline) await Task.Delay(20);
        Assert.Equal(0, server.Server.ActiveConnections);
    }

    [Fact]
    public async Task A_client_CA_implies_TLS_required()
    {
        using var cert = TlsTests.SelfSignedForTests("localhost");
        using var ca = TlsTests.SelfSignedForTests("test-ca", ca: true);
        var options = new NbdServerOptions { TlsCertificate = cert, TlsClientCertificateAuthority = ca }; // TlsRequired not set
        await using var server = await TestServer.StartAsync(TestServer.DefaultExports(), options);
        await using var client = await server.ConnectAsync();
        Assert.Equal(ErrTlsReqd, await client.InfoOrGoAsync(OptGo, "disk"));
        Assert.Equal(ErrTlsReqd, (await client.OptionAsync(OptList)).Single().Type);
    }

    [Theory]
    [InlineData(false, 0x80000006u)] // NBD_REP_ERR_UNKNOWN: "export not available"
    [InlineData(true, 0x80000007u)]  // NBD_REP_ERR_SHUTDOWN
    public async Task An_export_that_fails_to_open_is_answered_with_its_reason(bool shuttingDown, uint expected)
    {
        var provider = new FailingProvider(TestServer.DefaultExports(), "broken", new NbdExportUnavailableException("the store failed: disk gone", shuttingDown));
        var logger = new RecordingLogger();
        await using var server = await TestServer.StartDefaultAsync(); // for its temp directory
        // A second server over the failing provider, on its own socket.
        var socket = Path.Combine(server.Directory, "failing");
        await using var failing = new NbdServer(provider, new NbdServerOptions(), logger);
        failing.Listen(new System.Net.Sockets.UnixDomainSocketEndPoint(socket));
        await failing.StartAsync();

        await using var client = await NbdTestClient.ConnectUnixAsync(socket);
        var reply = (await client.OptionAsync(OptGo, InfoRequest("broken"))).Last();
        Assert.Equal(expected, reply.Type);
        Assert.Contains("the store failed: disk gone", Encoding.UTF8.GetString(reply.Data));
        Assert.DoesNotContain("unknown export", Encoding.UTF8.GetString(reply.Data));
        Assert.Contains(logger.Entries, e => e.Message.Contains("exists but cannot be opened") && e.Message.Contains("disk gone"));

        // A name that does not exist is still "unknown export"; the connection goes on negotiating.
        var unknown = (await client.OptionAsync(OptGo, InfoRequest("nope"))).Last();
        Assert.Equal(ErrUnknown, unknown.Type);
        Assert.Equal(RepAck, await client.InfoOrGoAsync(OptGo, "disk"));
    }

    private sealed class FailingProvider(MemoryExportProvider inner, string failing, Exception error) : INbdExportProvider
    {
        public INbdExport? TryOpen(string name) => name == failing ? throw error : inner.TryOpen(name);
        public IReadOnlyList<(string Name, string? Description)> List() => inner.List();
        public string? DefaultExportName => null;
    }
}
