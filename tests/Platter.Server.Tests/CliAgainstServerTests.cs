using System.Text.Json;
using Platter.Cli;
using Platter.Server.Api;
using Xunit;

namespace Platter.Server.Tests;

/// <summary>The CLI against a real server: what a person and a script see.</summary>
public class CliAgainstServerTests
{
    [Fact]
    public async Task VolumeCommandsForPeopleAndScripts()
    {
        await using var server = await RunningHost.StartAsync();
        var env = server.CliEnvironment();

        var empty = await CliRunner.RunAsync(env, "volume", "list");
        Assert.Equal(0, empty.ExitCode);
        Assert.Contains("no volumes", empty.Out);

        var created = await CliRunner.RunAsync(env, "volume", "create", "vm1", "--size", "20G");
        Assert.True(created.ExitCode == 0, created.ToString());
        Assert.Equal("created volume 'vm1' (20 GiB)\n", created.Out);

        var json = await CliRunner.RunAsync(env, "volume", "create", "db", "--size", "1.5G", "--json");
        Assert.True(json.ExitCode == 0, json.ToString());
        var dto = JsonSerializer.Deserialize(json.Out, PlatterJsonContext.Default.VolumeDto)!;
        Assert.Equal("db", dto.Name);
        Assert.Equal(3L << 29, dto.SizeBytes);

        var table = await CliRunner.RunAsync(env, "volume", "list");
        var lines = table.Out.TrimEnd('\n').Split('\n');
        Assert.Equal(3, lines.Length);
        Assert.StartsWith("NAME", lines[0]);
        Assert.Matches(@"^db\s+1\.5 GiB\s+0 B\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ$", lines[1]);
        Assert.Matches(@"^vm1\s+20 GiB\s+0 B\s+", lines[2]);
        // Columns line up: SIZE is right-aligned, so every row ends the column at the same place.
        Assert.Equal(lines[0].IndexOf("SIZE") + 4, lines[1].IndexOf("GiB") + 3);

        var list = JsonSerializer.Deserialize((await CliRunner.RunAsync(env, "volume", "list", "--json")).Out, PlatterJsonContext.Default.VolumeListDto)!;
        Assert.Equal(["db", "vm1"], list.Volumes.Select(v => v.Name).Order().ToArray());

        var info = await CliRunner.RunAsync(env, "volume", "info", "vm1");
        Assert.Contains("size:       20 GiB (21474836480 bytes)", info.Out);

        var resized = await CliRunner.RunAsync(env, "volume", "resize", "vm1", "--size", "30G");
        Assert.Equal("resized volume 'vm1' to 30 GiB\n", resized.Out);
        var renamed = await CliRunner.RunAsync(env, "volume", "rename", "vm1", "web1");
        Assert.Equal("renamed volume 'vm1' to 'web1'\n", renamed.Out);
        var du = await CliRunner.RunAsync(env, "du", "--json");
        var usage = JsonSerializer.Deserialize(du.Out, PlatterJsonContext.Default.UsageDto)!;
        Assert.Equal(2, usage.VolumeCount);
        Assert.Equal((30L << 30) + (3L << 29), usage.ProvisionedBytes);

        var deleted = await CliRunner.RunAsync(env, "volume", "delete", "web1", "--json");
        Assert.Equal("{\"deleted\":\"web1\"}\n", deleted.Out);
        Assert.Equal(["db"], server.Host.Store.ListVolumes().Select(v => v.Name).ToArray());
    }

    [Fact]
    public async Task ServerSideErrorsAreOneLine()
    {
        await using var server = await RunningHost.StartAsync();
        var env = server.CliEnvironment();
        await CliRunner.RunAsync(env, "volume", "create", "vm1", "--size", "1G");

        foreach (var (args, fragment) in new (string[], string)[]
        {
            (["volume", "info", "ghost"], "no volume named 'ghost'"),
            (["volume", "resize", "ghost", "--size", "1G"], "no volume named 'ghost'"),
            (["volume", "delete", "ghost"], "no volume named 'ghost'"),
            (["attach", "ghost"], "no volume named 'ghost'"),
            (["volume", "create", "vm1", "--size", "1G"], "vm1"),
            (["volume", "create", "odd", "--size", "1000"], "multiple of 512"),
        })
        {
            var result = await CliRunner.RunAsync(env, args);
            Assert.True(result.ExitCode == 1, string.Join(' ', args) + "\n" + result);
            var line = Assert.Single(result.Error.Split('\n', StringSplitOptions.RemoveEmptyEntries));
            Assert.StartsWith("platter: ", line);
            Assert.Contains(fragment, line);
        }
    }

    [Fact]
    public async Task AttachUsesTheServersSocketOrTheGivenTransport()
    {
        await using var server = await RunningHost.StartAsync();
        var env = server.CliEnvironment();
        await CliRunner.RunAsync(env, "volume", "create", "vm1", "--size", "1G");

        // This host runs without NBD listeners: the user has to say where NBD is.
        var none = await CliRunner.RunAsync(env, "attach", "vm1");
        Assert.Equal(1, none.ExitCode);
        Assert.Contains("no NBD listener", none.Error);

        var tcp = await CliRunner.RunAsync(env, "attach", "vm1", "--tcp", "192.0.2.7:10809", "--json");
        Assert.True(tcp.ExitCode == 0, tcp.ToString());
        using var doc = JsonDocument.Parse(tcp.Out);
        Assert.Equal("nbd://192.0.2.7:10809/vm1", doc.RootElement.GetProperty("uri").GetString());

        var qemu = await CliRunner.RunAsync(env, "attach", "vm1", "--socket", "/run/p/nbd.sock", "--qemu");
        Assert.True(qemu.ExitCode == 0, qemu.ToString());
        Assert.StartsWith("-blockdev driver=nbd,node-name=platter-vm1,server.type=unix,server.path=/run/p/nbd.sock,export=vm1,reconnect-delay=60,", qemu.Out);
        Assert.EndsWith(" -device virtio-blk-pci,drive=platter-vm1,id=platter-vm1\n", qemu.Out);

        // Every name can be chosen, and the reconnect setting turned off.
        var chosen = await CliRunner.RunAsync(env, "attach", "vm1", "--socket", "/run/p/nbd.sock", "--node-name", "boot", "--id", "disk1",
            "--target", "vdb", "--reconnect-delay", "0", "--json");
        Assert.True(chosen.ExitCode == 0, chosen.ToString());
        using var chosenDoc = JsonDocument.Parse(chosen.Out);
        var blockdev = chosenDoc.RootElement.GetProperty("qemuBlockdev").GetString()!;
        Assert.Contains("node-name=boot,", blockdev);
        Assert.Contains("drive=boot,id=disk1", blockdev);
        Assert.DoesNotContain("reconnect", blockdev + chosenDoc.RootElement.GetProperty("libvirtXml").GetString());
        Assert.Contains("<target dev='vdb' bus='virtio'/>", chosenDoc.RootElement.GetProperty("libvirtXml").GetString());
        Assert.Contains("<alias name='ua-disk1'/>", chosenDoc.RootElement.GetProperty("libvirtXml").GetString());

        foreach (var (option, value) in new[] { ("--node-name", "1abc"), ("--id", "a,b"), ("--target", "sda"), ("--reconnect-delay", "-1") })
        {
            var bad = await CliRunner.RunAsync(env, "attach", "vm1", "--socket", "/run/p/nbd.sock", option, value);
            Assert.True(bad.ExitCode == 2, bad.ToString());
            Assert.Contains(option, bad.Error);
        }

        var libvirt = await CliRunner.RunAsync(env, "attach", "vm1", "--socket", "/run/p/nbd.sock", "--libvirt");
        Assert.StartsWith("<disk type='network' device='disk'>", libvirt.Out);
    }

    [Fact]
    public async Task CheckRefusesWhileServingAndPassesAfterwards()
    {
        var server = await RunningHost.StartAsync();
        try
        {
            await CliRunner.RunAsync(server.CliEnvironment(), "volume", "create", "vm1", "--size", "1G");
            var busy = await CliRunner.RunAsync(null, "check", "--store", server.StorePath);
            Assert.Equal(1, busy.ExitCode);
            Assert.Contains("in use by a running server", busy.Error);

            await server.Host.StopAsync();
            var ok = await CliRunner.RunAsync(null, "check", "--store", server.StorePath, "--verify-checksums");
            Assert.True(ok.ExitCode == 0, ok.ToString());
            Assert.Contains("volumes:        1", ok.Out);
            Assert.Contains("ok: no problems found", ok.Out);

            var json = await CliRunner.RunAsync(null, "check", "--store", server.StorePath, "--json");
            using var doc = JsonDocument.Parse(json.Out);
            Assert.True(doc.RootElement.GetProperty("ok").GetBoolean());
        }
        finally
        {
            await server.DisposeAsync();
        }
    }

    [Fact]
    public async Task ServeInProcessCreatesTheStoreAndStopsCleanly()
    {
        using var dir = new TempDirectory();
        var stop = new TaskCompletionSource();
        var serving = new TaskCompletionSource<PlatterHost>(TaskCreationOptions.RunContinuationsAsynchronously);
        var output = new StringWriter();
        var error = new StringWriter();
        var context = new CliContext
        {
            Out = output,
            Error = error,
            GetEnvironment = name => name == "PLATTER_STORE" ? dir.Combine("store") : name == "HOME" ? dir.Path : null,
            ShutdownRequested = stop.Task,
            Serving = host => serving.TrySetResult(host),
            CreateLoggerFactory = _ => Microsoft.Extensions.Logging.Abstractions.NullLoggerFactory.Instance,
        };
        var run = PlatterCli.RunAsync(["serve", "--listen", "none", "--socket", "none"], context);
        var finished = await Task.WhenAny(serving.Task, run);
        Assert.True(finished == serving.Task, $"serve ended early: {error}");

        // The CLI finds the server through PLATTER_STORE alone.
        var env = new Dictionary<string, string> { ["PLATTER_STORE"] = dir.Combine("store"), ["HOME"] = dir.Path };
        var created = await CliRunner.RunAsync(env, "volume", "create", "vm1", "--size", "4K");
        Assert.True(created.ExitCode == 0, created.ToString());

        stop.SetResult();
        Assert.Equal(0, await run);
        Assert.Equal("", error.ToString());
        Assert.False(File.Exists(dir.Combine("store/api.sock")));
        var check = await CliRunner.RunAsync(null, "check", "--store", dir.Combine("store"));
        Assert.True(check.ExitCode == 0, check.ToString());
    }

    [Fact]
    public async Task ServeRefusesAStoreHeldByAnotherServer()
    {
        await using var server = await RunningHost.StartAsync();
        var result = await CliRunner.RunAsync(null, "serve", "--store", server.StorePath, "--listen", "none", "--socket", "none",
            "--api-socket", server.Directory.Combine("other.sock"));
        Assert.Equal(1, result.ExitCode);
        var line = Assert.Single(result.Error.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Equal($"platter: the store at {server.StorePath} is in use by another Platter process (another `platter serve`?)", line);
    }

    [Fact]
    public async Task SigtermStopsTheServerProcessCleanly()
    {
        using var dir = new TempDirectory();
        await using var server = new PlatterServer(dir.Path) { ServeNbd = false, Verbose = true };
        await server.StartAsync();
        using (var client = PlatterApiClient.ForUnixSocket(server.ApiSocketPath))
        {
            await ExpectAsync(server, () => client.CreateVolumeAsync("vm1", 1L << 20));
        }

        int exitCode = await server.StopAsync();
        string log = server.Log;
        Assert.True(exitCode == 0, $"exit {exitCode}\n{log}");
        Assert.Contains("SIGTERM: shutting down", log);
        Assert.Contains("stopped", log);
        Assert.False(File.Exists(server.ApiSocketPath));

        var check = await CliRunner.RunAsync(null, "check", "--store", server.StoreDirectory);
        Assert.True(check.ExitCode == 0, check.ToString());
        Assert.Contains("volumes:        1", check.Out);
    }

    [Fact]
    public async Task ServerKeepsServingWhenNobodyReadsItsLog()
    {
        // Regression: the console logger's queue used to block every logging call once the pipe to a consumer
        // that does not read was full (64 KiB of pipe plus 2500 queued lines), so the server stopped answering
        // after about 700 API requests. With --verbose each request logs four lines: 3000 requests are over
        // four times what fits before the old logger blocked.
        const int requests = 3000;
        using var dir = new TempDirectory();
        await using var server = new PlatterServer(dir.Path) { ServeNbd = false, Verbose = true, ReadOutput = false };
        await server.StartAsync();
        using (var client = PlatterApiClient.ForUnixSocket(server.ApiSocketPath, timeout: TimeSpan.FromSeconds(30)))
        {
            for (int i = 0; i < requests; i++)
            {
                int request = i;
                await ExpectAsync(server, () => client.GetHealthAsync(), $"request {request} of {requests}");
            }
            await ExpectAsync(server, () => client.CreateVolumeAsync("vm1", 1L << 20));
        }

        // Still nobody reads: shutdown must not wait for the log either.
        int exitCode = await server.StopAsync();
        string log = server.Log;
        Assert.True(exitCode == 0, $"exit {exitCode}\n{log[^Math.Min(log.Length, 4000)..]}");
        var check = await CliRunner.RunAsync(null, "check", "--store", server.StoreDirectory);
        Assert.True(check.ExitCode == 0, check.ToString());
        Assert.Contains("volumes:        1", check.Out);
    }

    /// <summary>
    /// Runs an API call against a server child process; on failure, fails the test with the server's output. The
    /// server is killed first: only an exited server's output can be read when nobody drained it.
    /// </summary>
    private static async Task ExpectAsync(PlatterServer server, Func<Task> call, string? what = null)
    {
        Exception failure;
        try
        {
            await call();
            return;
        }
        catch (Exception e) when (e is ServerUnreachableException or PlatterApiException or TaskCanceledException)
        {
            failure = e;
        }
        if (server.IsRunning) await server.KillAsync();
        Assert.Fail($"{what}: {failure.GetType().Name}: {failure.Message}\n{server.Log}");
    }
}
