using System.Text;
using System.Text.Json;

namespace Platter.Interop.Tests;

/// <summary>
/// Requests a well-behaved client never sends, sent with libnbd's client-side checks turned off
/// (set_strict_mode(0)) so the server, not libnbd, has to answer them. Each must get the protocol's error
/// and leave the connection usable.
/// </summary>
public sealed class NbdshNegativeTests(ServerFixture fixture, ITestOutputHelper output) : InteropTest(fixture, output), IClassFixture<ServerFixture>
{
    private const int EPERM = 1, ENOENT = 2, EINVAL = 22, ENOSPC = 28;

    // attempt() returns the error a call raised; "command failed" in libnbd's message means the server sent
    // an error reply, as opposed to libnbd refusing the call locally.
    private const string Prelude = """
        import errno, json, os, nbd

        def attempt(f):
            try:
                f()
                return {"errno": 0, "message": ""}
            except nbd.Error as e:
                return {"errno": e.errnum or 0, "message": e.string}

        def connect(strict=True):
            h = nbd.NBD()
            if not strict:
                h.set_strict_mode(0)
            h.connect_uri(os.environ["URI"])
            return h

        """;

    [Fact]
    public async Task Requests_past_the_end_get_the_spec_errors_and_the_connection_stays_usable()
    {
        var export = await Fixture.CreateExportAsync("past-end", 64 * MiB);

        var r = await RunAsync(export, """
            h = connect(strict=False)
            size = h.get_size()
            r = {
                "straddling_read": attempt(lambda: h.pread(8192, size - 4096)),
                "read_beyond": attempt(lambda: h.pread(512, size + 4096)),
                "write_beyond": attempt(lambda: h.pwrite(b"\x01" * 4096, size - 2048)),
                "trim_beyond": attempt(lambda: h.trim(8192, size - 4096)),
            }
            h.pwrite(b"\x5a" * 4096, size - 4096)
            r["last_block_ok"] = h.pread(4096, size - 4096) == b"\x5a" * 4096
            h.shutdown()
            print(json.dumps(r))
            """);

        AssertServerError(r, "straddling_read", EINVAL);
        AssertServerError(r, "read_beyond", EINVAL);
        AssertServerError(r, "write_beyond", ENOSPC);
        AssertServerError(r, "trim_beyond", EINVAL);
        Assert.True(r.GetProperty("last_block_ok").GetBoolean(), "the connection must stay usable after the errors");
    }

    [Fact]
    public async Task Refused_write_past_the_end_leaves_the_last_block_untouched()
    {
        var export = await Fixture.CreateExportAsync("past-end-data", 64 * MiB);

        var r = await RunAsync(export, """
            h = connect(strict=False)
            size = h.get_size()
            h.pwrite(b"\x33" * 4096, size - 4096)
            h.flush()
            refused = attempt(lambda: h.pwrite(b"\x44" * 8192, size - 4096))
            h.shutdown()
            h = connect()
            print(json.dumps({"refused": refused, "intact": h.pread(4096, size - 4096) == b"\x33" * 4096}))
            """);

        AssertServerError(r, "refused", ENOSPC);
        Assert.True(r.GetProperty("intact").GetBoolean(), "a refused write changed data inside the export");
    }

    [Fact]
    public async Task Write_to_a_read_only_export_is_eperm()
    {
        // Its own server: data goes in through a writable server, which then restarts with --read-only.
        await using var server = new PlatterServer();
        await server.StartAsync();
        var export = await server.CreateExportAsync("ro", 64 * MiB);
        try
        {
            await RunAsync(export, """
                h = connect()
                h.pwrite(b"\x5c" * 8192, 0)
                h.flush()
                h.shutdown()
                print(json.dumps({}))
                """);
            Assert.Equal(0, await server.StopAsync());

            server.ReadOnly = true;
            await server.StartAsync();
            var r = await RunAsync(export, """
                h = connect(strict=False)
                r = {
                    "read_only": h.is_read_only(),
                    "write": attempt(lambda: h.pwrite(b"\x01" * 4096, 0)),
                    "trim": attempt(lambda: h.trim(4096, 0)),
                    "zero": attempt(lambda: h.zero(4096, 0)),
                    "flush": attempt(lambda: h.flush()),
                }
                r["intact"] = h.pread(8192, 0) == b"\x5c" * 8192
                h.shutdown()
                print(json.dumps(r))
                """);

            Assert.True(r.GetProperty("read_only").GetBoolean(), "export must advertise NBD_FLAG_READ_ONLY");
            AssertServerError(r, "write", EPERM);
            AssertServerError(r, "trim", EPERM);
            AssertServerError(r, "zero", EPERM);
            Assert.Equal(0, r.GetProperty("flush").GetProperty("errno").GetInt32());
            Assert.True(r.GetProperty("intact").GetBoolean(), "refused writes changed the data");

            // Only NBD is read-only: the catalog is still managed through the API.
            var listed = await server.CliAsync("volume", "list", "--json");
            Assert.True(listed.ExitCode == 0, listed.Describe());
            Assert.Contains("\"ro\"", listed.Stdout);
        }
        catch
        {
            Output.WriteLine("--- read-only server log ---");
            Output.WriteLine(server.Log);
            throw;
        }
    }

    [Fact]
    public async Task Unknown_export_gets_an_error_reply_and_another_go_on_the_same_connection_succeeds()
    {
        var export = await Fixture.CreateExportAsync("known", 64 * MiB);

        var r = await RunAsync(export, """
            h = nbd.NBD()
            h.set_opt_mode(True)
            h.connect_uri(os.environ["URI"])
            h.set_export_name("no-such-volume")
            r = {"unknown": attempt(lambda: h.opt_go())}
            r["still_negotiating"] = h.aio_is_negotiating()
            h.set_export_name(os.environ["EXPORT"])
            r["second_go"] = attempt(lambda: h.opt_go())
            r["size"] = h.get_size()
            h.pwrite(b"\x42" * 4096, 0)
            r["io_ok"] = h.pread(4096, 0) == b"\x42" * 4096
            print(json.dumps(r))
            """);

        // libnbd maps NBD_REP_ERR_UNKNOWN (the spec's reply for an export that does not exist) to ENOENT.
        Assert.Equal(ENOENT, r.GetProperty("unknown").GetProperty("errno").GetInt32());
        Assert.True(r.GetProperty("still_negotiating").GetBoolean(), "server must keep negotiating after a failed NBD_OPT_GO");
        Assert.Equal(0, r.GetProperty("second_go").GetProperty("errno").GetInt32());
        Assert.Equal(export.SizeBytes, r.GetProperty("size").GetInt64());
        Assert.True(r.GetProperty("io_ok").GetBoolean());
    }

    [Fact]
    public async Task Oversized_read_is_refused_and_the_connection_stays_usable()
    {
        var export = await Fixture.CreateExportAsync("oversized", 128 * MiB);

        var r = await RunAsync(export, """
            h = connect(strict=False)
            maximum = h.get_block_size(nbd.SIZE_MAXIMUM)
            # 64 MiB is libnbd's own hard limit, and above the 32 MiB the server advertises.
            r = {"maximum": maximum, "oversized": attempt(lambda: h.pread(64 * 1024 * 1024, 0))}
            h.pwrite(b"\x24" * 65536, 65536)
            r["io_ok"] = h.pread(65536, 65536) == b"\x24" * 65536
            print(json.dumps(r))
            """);

        Assert.True(r.GetProperty("maximum").GetInt64() < 64 * MiB, "the test needs the request to exceed the advertised maximum");
        // EINVAL: a request over the advertised maximum is a bad request. (EOVERFLOW is the answer only when the
        // client set DF and the reply cannot fit one chunk; libnbd's pread does not set DF.)
        AssertServerError(r, "oversized", EINVAL);
        Assert.True(r.GetProperty("io_ok").GetBoolean(), "the connection must stay usable after an oversized request");
    }

    [Fact]
    public async Task Unknown_command_is_einval_and_the_connection_stays_usable()
    {
        // libnbd cannot send a command type it does not know, so this one speaks the protocol directly.
        var export = await Fixture.CreateExportAsync("unknown-cmd", 64 * MiB);
        await using var client = await NbdTestClient.ConnectAsync(export.SocketPath, export.Name);
        Assert.Equal(export.SizeBytes, client.Size);

        foreach (ushort type in new ushort[] { 0x00ff, 0x4242 })
        {
            var (error, _) = await client.RequestAsync(type, 0, 0);
            Assert.True(error == EINVAL, $"command type 0x{type:x4} answered with error {error}, expected EINVAL ({EINVAL})");
        }

        byte[] data = Encoding.ASCII.GetBytes(new string('p', 4096));
        var (writeError, _) = await client.RequestAsync(NbdTestClient.CmdWrite, 8192, 4096, data);
        Assert.Equal(0u, writeError);
        var (flushError, _) = await client.RequestAsync(NbdTestClient.CmdFlush, 0, 0);
        Assert.Equal(0u, flushError);
        var (readError, read) = await client.RequestAsync(NbdTestClient.CmdRead, 8192, 4096);
        Assert.Equal(0u, readError);
        Assert.Equal(data, read);
        Assert.True(await client.DisconnectAndWaitForCloseAsync(), "server must close the connection after NBD_CMD_DISC");
    }

    private Task<JsonElement> RunAsync(NbdExport export, string body) =>
        Nbdsh.RunAsync(Prelude + body, new Dictionary<string, string> { ["URI"] = export.Uri, ["EXPORT"] = export.Name });

    private static void AssertServerError(JsonElement result, string name, int expected)
    {
        var e = result.GetProperty(name);
        int errnum = e.GetProperty("errno").GetInt32();
        string message = e.GetProperty("message").GetString() ?? "";
        Assert.True(errnum == expected && message.Contains("command failed"),
            $"{name}: expected an error reply with errno {expected} from the server, got errno {errnum} \"{message}\"");
    }
}
