using System.Text.Json;
using System.Globalization;
using Platter.Storage;

namespace Platter.Interop.Tests;

/// <summary>
/// Issue 12 through the real `platter` binary and real clients: commands that would pull a disk from under a
/// connected client ask first, names an older version accepted can still be managed, every command takes --store,
/// and greedy or careless clients cannot lock others out or knock a connection out of step.
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class SafetyTests(ServerFixture fixture, ITestOutputHelper output) : InteropTest(fixture, output), IClassFixture<ServerFixture>
{
    // A libnbd client that holds its connection (like a VM that keeps its disk open) until released. Every wait on
    // it is bounded (NbdHolder), so a client that never connects or never leaves fails the test instead of hanging it.
    private static NbdHolder Hold(string uri) => new(uri);

    private static async Task Release(NbdHolder holder)
    {
        await holder.CloseAsync(TimeSpan.FromSeconds(30));
        holder.Dispose();
    }

    private async Task<JsonElement> StatusAsync(string volume)
    {
        var result = (await Server.CliAsync("volume", "status", volume, "--json")).EnsureSuccess("platter volume status failed");
        return Clients.ParseJson(result, result.Stdout);
    }

    private static void AssertOneLineRefusal(ProcessResult result, string fragment)
    {
        Assert.True(result.ExitCode == 1, result.Describe());
        var lines = result.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(lines.Length == 1 && lines[0].StartsWith("platter: ", StringComparison.Ordinal), result.Describe());
        Assert.Contains(fragment, lines[0]);
    }

    [Fact]
    public async Task Delete_and_rollback_are_refused_while_a_client_is_connected_and_status_lists_it()
    {
        var export = await Fixture.CreateExportAsync("busy", 16 * MiB);
        await Clients.QemuIoAsync(export.Uri, $"write -P 0x11 0 {1 * MiB}", "flush");
        (await Server.CliAsync("snapshot", "create", export.Name + "@s1")).EnsureSuccess();
        await Clients.QemuIoAsync(export.Uri, $"write -P 0x22 0 {1 * MiB}", "flush");

        using var vm = Hold(export.Uri);
        using var reader = Hold(NbdExport.NbdUri(export.Name + "@s1", Server.NbdSocketPath));
        try
        {
            var clients = (await StatusAsync(export.Name)).GetProperty("clients").EnumerateArray().ToList();
            Assert.Equal(2, clients.Count);
            var writer = clients.Single(c => c.GetProperty("export").GetString() == export.Name);
            Assert.Equal($"unix pid {vm.Id} uid 0", writer.GetProperty("peer").GetString());
            Assert.False(writer.GetProperty("readOnly").GetBoolean());
            var snapshotReader = clients.Single(c => c.GetProperty("export").GetString() == export.Name + "@s1");
            Assert.True(snapshotReader.GetProperty("readOnly").GetBoolean());
            Assert.True(DateTimeOffset.UtcNow - writer.GetProperty("connectedUtc").GetDateTimeOffset() < TimeSpan.FromMinutes(5));
            var table = (await Server.CliAsync("volume", "status", export.Name)).EnsureSuccess();
            Assert.Contains($"unix pid {vm.Id} uid 0", table.Stdout);
            Assert.Contains("read-write", table.Stdout);

            AssertOneLineRefusal(await Server.CliAsync("volume", "delete", export.Name, "--recursive"), "2 connected NBD clients");
            AssertOneLineRefusal(await Server.CliAsync("rollback", export.Name + "@s1"), $"unix pid {vm.Id} uid 0");
            AssertOneLineRefusal(await Server.CliAsync("snapshot", "delete", export.Name + "@s1"), $"unix pid {reader.Id} uid 0");
            // Nothing happened: the volume still has its new data.
            await Clients.QemuIoAsync(export.Uri, $"read -P 0x22 0 {1 * MiB}");

            // --force goes ahead; the connected client sees the old content.
            (await Server.CliAsync("rollback", export.Name + "@s1", "--force")).EnsureSuccess("rollback --force failed");
            await Clients.QemuIoAsync(export.Uri, $"read -P 0x11 0 {1 * MiB}");
        }
        finally
        {
            await Release(vm);
            await Release(reader);
        }
        // Once the clients are gone, nothing stands in the way.
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while ((await StatusAsync(export.Name)).GetProperty("clients").GetArrayLength() > 0 && DateTime.UtcNow < deadline) await Task.Delay(100);
        (await Server.CliAsync("volume", "delete", export.Name, "--recursive")).EnsureSuccess("delete after the clients left failed");
    }

    [Fact]
    public async Task An_oversize_write_from_libnbd_gets_EINVAL_and_the_connection_goes_on()
    {
        var export = await Fixture.CreateExportAsync("oversize", 64 * MiB);
        var r = await Nbdsh.RunAsync("""
            import json, os, nbd
            h = nbd.NBD()
            h.set_strict_mode(0)   # let the request reach the server instead of libnbd refusing it
            h.connect_uri(os.environ["URI"])
            r = {}
            try:
                h.pwrite(b"\x5a" * (33 * 1024 * 1024), 0)
                r["errno"] = 0
            except nbd.Error as e:
                r["errno"] = e.errnum or 0
                r["message"] = e.string
            h.pwrite(b"\x33" * 4096, 4096)
            r["after"] = h.pread(8192, 0) == b"\x00" * 4096 + b"\x33" * 4096
            h.shutdown()
            print(json.dumps(r))
            """, new Dictionary<string, string> { ["URI"] = export.Uri });
        Assert.True(r.GetProperty("errno").GetInt32() == 22, r.ToString()); // EINVAL from the server
        Assert.True(r.GetProperty("after").GetBoolean(), "the connection must stay in step: " + r);
    }

    [Fact]
    public async Task Every_command_takes_store()
    {
        await using var server = new PlatterServer();
        server.ApiSocketPath = Path.Combine(server.StoreDirectory, "api.sock");
        await server.StartAsync();
        async Task<ProcessResult> Platter(params string[] args) =>
            await ProcessRunner.RunAsync(PlatterServer.DotnetHost, [PlatterServer.PlatterDll, .. args, "--store", server.StoreDirectory],
                TimeSpan.FromSeconds(60), new Dictionary<string, string?> { ["PLATTER_API_SOCKET"] = null, ["PLATTER_STORE"] = null });

        (await Platter("volume", "create", "v1", "--size", "8M")).EnsureSuccess();
        (await Platter("snapshot", "create", "v1@s")).EnsureSuccess();
        (await Platter("clone", "v1@s", "v2")).EnsureSuccess();
        Assert.Contains("v2", (await Platter("volume", "list")).EnsureSuccess().Stdout);
        (await Platter("diff", "v1@s")).EnsureSuccess();
        (await Platter("du")).EnsureSuccess();
        (await Platter("attach", "v1", "--qemu")).EnsureSuccess();
        (await Platter("volume", "status", "v1")).EnsureSuccess();
        (await Platter("volume", "delete", "v2")).EnsureSuccess();
    }

    [Fact]
    public async Task Names_an_older_version_accepted_can_still_be_renamed_and_deleted()
    {
        await using var server = new PlatterServer();
        // The store as an older version left it: names today's rules refuse.
        using (var store = VolumeStore.Open(server.StoreDirectory))
        {
            store.CreateVolumeUnchecked("..", 8 * MiB);
            store.CreateVolumeUnchecked("-x", 8 * MiB);
            store.CreateVolumeUnchecked("rtl\u202Eevil", 8 * MiB);
        }
        await server.StartAsync();
        // The API socket goes before "--": after it nothing is an option (that is how a name starting with '-' is given).
        Task<ProcessResult> Platter(params string[] args) =>
            ProcessRunner.RunAsync(PlatterServer.DotnetHost, [PlatterServer.PlatterDll, args[0], args[1], "--api-socket", server.ApiSocketPath, .. args[2..]],
                TimeSpan.FromSeconds(60), new Dictionary<string, string?> { ["PLATTER_API_SOCKET"] = null });

        // Served as they are: the data is reachable over NBD.
        await Clients.QemuIoAsync(NbdExport.NbdUri("..", server.NbdSocketPath), $"write -P 0x44 0 {1 * MiB}", "flush");

        (await server.CliAsync("volume", "rename", "..", "dotdot")).EnsureSuccess("rename of '..' failed");
        (await Platter("volume", "delete", "--", "-x")).EnsureSuccess("delete of '-x' failed");
        (await server.CliAsync("volume", "rename", "rtl\u202Eevil", "plain")).EnsureSuccess("rename of a bidi name failed");
        var list = (await server.CliAsync("volume", "list", "--json")).EnsureSuccess();
        var names = Clients.ParseJson(list, list.Stdout).GetProperty("volumes").EnumerateArray().Select(v => v.GetProperty("name").GetString()).ToList();
        Assert.Equal(["dotdot", "plain"], names.Order(StringComparer.Ordinal));
        await Clients.QemuIoAsync(NbdExport.NbdUri("dotdot", server.NbdSocketPath), $"read -P 0x44 0 {1 * MiB}");

        // And none of them can be made again.
        foreach (var name in new[] { "..", "-x", "rtl\u202Eevil" })
        {
            var refused = await Platter("volume", "create", "--size", "1M", "--", name);
            Assert.True(refused.ExitCode == 2 && refused.Stderr.StartsWith("platter: invalid volume name", StringComparison.Ordinal), refused.Describe());
        }
    }

    [Fact]
    public async Task One_greedy_client_cannot_take_every_connection()
    {
        await using var server = new PlatterServer { Listen = "127.0.0.1:0", ExtraArguments = ["--max-connections-per-client", "2"] };
        await server.StartAsync();
        var port = int.Parse((await server.WaitForLogMatchAsync(@"NBD on 127\.0\.0\.1:(\d+)")).Groups[1].Value, CultureInfo.InvariantCulture);
        await server.CreateVolumeAsync("shared", "8M", 8 * MiB);
        var tcp = $"nbd://127.0.0.1:{port}/shared";

        using var first = Hold(tcp);
        using var second = Hold(tcp);
        try
        {
            // A third connection from the same address is refused ...
            var third = await ProcessRunner.RunAsync(Tools.NbdInfo, ["--size", tcp]);
            Assert.True(third.ExitCode != 0, "a third connection from 127.0.0.1 must be refused\n" + third.Describe());
            await server.AssertLogContainsAsync("per-client limit");
            // ... while another client still gets in.
            var other = await ProcessRunner.RunAsync(Tools.NbdInfo, ["--size", NbdExport.NbdUri("shared", server.NbdSocketPath)]);
            Assert.Equal($"{8 * MiB}", other.EnsureSuccess().Stdout.Trim());
        }
        finally
        {
            await Release(first);
            await Release(second);
        }
    }

    [Fact]
    public async Task A_silent_client_is_dropped_after_the_handshake_timeout_and_the_total_cap_holds()
    {
        // --max-connections alone: the per-client cap follows it (a quarter, at least 1) instead of refusing to start.
        await using var server = new PlatterServer { ExtraArguments = ["--handshake-timeout", "2", "--max-connections", "2"] };
        await server.StartAsync();
        await server.CreateVolumeAsync("capped", "8M", 8 * MiB);
        var uri = NbdExport.NbdUri("capped", server.NbdSocketPath);

        // A client that connects and never negotiates gets the greeting, then the server hangs up on it.
        using (var silent = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified))
        {
            await silent.ConnectAsync(new System.Net.Sockets.UnixDomainSocketEndPoint(server.NbdSocketPath));
            using var bound = new CancellationTokenSource(TimeSpan.FromSeconds(60));
            var buffer = new byte[4096];
            int received = 0, n;
            while ((n = await silent.ReceiveAsync(buffer, System.Net.Sockets.SocketFlags.None, bound.Token)) > 0) received += n;
            Assert.Equal(18, received); // NBDMAGIC, IHAVEOPT, handshake flags: nothing more, then end of stream
        }

        // Two connected clients fill the server: a third is refused, and gets in once one of them leaves.
        using var first = Hold(uri);
        using var second = Hold(uri);
        var third = await ProcessRunner.RunAsync(Tools.NbdInfo, ["--size", uri]);
        Assert.True(third.ExitCode != 0, "a third connection must be refused by --max-connections 2\n" + third.Describe());
        await server.AssertLogContainsAsync("connection limit 2 reached");
        await Release(first);
        var deadline = DateTime.UtcNow.AddSeconds(60);
        ProcessResult again;
        do again = await ProcessRunner.RunAsync(Tools.NbdInfo, ["--size", uri]);
        while (again.ExitCode != 0 && DateTime.UtcNow < deadline);
        Assert.Equal($"{8 * MiB}", again.EnsureSuccess("a client must get in once a slot is free").Stdout.Trim());
        await Release(second);
    }

    [Fact]
    public async Task The_api_refuses_names_that_could_not_be_managed()
    {
        // Straight to the management API with curl (the CLI checks names first): the server refuses them too.
        foreach (var name in new[] { ".", "..", "-x", "rtl\u202Eevil", "esc\u001b[31m" })
        {
            string body = JsonSerializer.Serialize(new { name, sizeBytes = 1 * MiB });
            var result = await ProcessRunner.RunAsync("curl", ["-s", "-w", "\n%{http_code}", "--unix-socket", Server.ApiSocketPath,
                "-H", "Content-Type: application/json", "-d", body, "http://x/v1/volumes"]);
            string[] lines = result.EnsureSuccess("curl failed").Stdout.TrimEnd().Split('\n');
            Assert.True(lines[^1] == "400" && lines[0].Contains("invalid_name", StringComparison.Ordinal),
                $"creating volume {JsonSerializer.Serialize(name)} through the API: {result.Stdout}");
        }
        var list = (await Server.CliAsync("volume", "list", "--json")).EnsureSuccess();
        var names = Clients.ParseJson(list, list.Stdout).GetProperty("volumes").EnumerateArray().Select(v => v.GetProperty("name").GetString()!).ToList();
        Assert.DoesNotContain(names, n => n is "." or ".." or "-x" || n.Contains('\u202E') || n.Contains('\u001b'));
    }

    [Fact]
    public async Task Nbd_is_off_tcp_by_default_and_a_tcp_listener_warns_who_can_reach_every_volume()
    {
        // No --listen at all: the unix socket only (owner-only, in the private store directory), no TCP port.
        await using (var plain = new PlatterServer { Listen = null })
        {
            await plain.StartAsync();
            await plain.AssertLogContainsAsync("NBD on unix:");
            Assert.DoesNotMatch(@"NBD on (\d|\[|TCP)", plain.Log);
            Assert.True((File.GetUnixFileMode(plain.NbdSocketPath) & (UnixFileMode.GroupWrite | UnixFileMode.OtherWrite)) == 0,
                $"the default NBD socket is writable by others: {File.GetUnixFileMode(plain.NbdSocketPath)}");
            Assert.Equal(0, await plain.StopAsync());
        }

        // TCP on loopback, without client certificates: served, with a warning that names the exposure.
        await using var tcp = new PlatterServer { Listen = "127.0.0.1:0" };
        await tcp.StartAsync();
        await tcp.AssertLogContainsAsync("has no client authentication: every local user can read and write every volume");
        Assert.Equal(0, await tcp.StopAsync());
    }

    [Fact]
    public async Task Socket_group_and_mode_let_that_group_in_and_nobody_else()
    {
        // A directory others may pass through, holding the sockets (the store directory itself is private).
        using var shared = new TempDirectory("plt-g");
        File.SetUnixFileMode(shared.Path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute);
        var setpriv = Tools.Require("setpriv", "util-linux");
        async Task<ProcessResult> AsNobody(string group, string uri) =>
            await ProcessRunner.RunAsync(setpriv, ["--reuid=nobody", $"--regid={group}", "--clear-groups", Tools.NbdInfo, "--size", uri]);

        await using (var open = new PlatterServer { ExtraArguments = ["--socket-group", "nogroup", "--socket-mode", "0660"] })
        {
            open.NbdSocketPath = shared.Combine("g.sock");
            open.ApiSocketPath = shared.Combine("g-api.sock");
            await open.StartAsync();
            await open.CreateVolumeAsync("vm", "4M", 4 * MiB);
            var uri = NbdExport.NbdUri("vm", open.NbdSocketPath);
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.GroupWrite,
                File.GetUnixFileMode(open.NbdSocketPath));
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.GroupWrite,
                File.GetUnixFileMode(open.ApiSocketPath));
            Assert.Equal($"{4 * MiB}", (await AsNobody("nogroup", uri)).EnsureSuccess("a member of the socket's group must get in").Stdout.Trim());
        }

        await using (var closed = new PlatterServer())
        {
            closed.NbdSocketPath = shared.Combine("c.sock");
            closed.ApiSocketPath = shared.Combine("c-api.sock");
            await closed.StartAsync();
            await closed.CreateVolumeAsync("vm", "4M", 4 * MiB);
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(closed.NbdSocketPath));
            var refused = await AsNobody("nogroup", NbdExport.NbdUri("vm", closed.NbdSocketPath));
            Assert.True(refused.ExitCode != 0, "by default only the owner may connect\n" + refused.Describe());
        }
    }
}
