using Platter.Server.Api;
using Xunit;

namespace Platter.Server.Tests;

/// <summary>
/// Fail-stop as a user of a real <c>platter serve</c> sees it. One server serves one store, so a store that fails
/// (here: an engine invariant broken on purpose by tests/Platter.FaultHook, a startup hook loaded into the server)
/// fails for every volume in it: NBD clients of every volume, connected before or after, get EIO for writes and
/// flushes at once (no hang) while reads of durable data still work; catalog changes are refused with a message
/// that says to restart; the health endpoint reports the failure; the log has one critical line naming the broken
/// invariant. The server stays up (reads keep working) until it is stopped; a restart recovers everything that was
/// flushed.
/// </summary>
public sealed class FailStopServerTests
{
    private const int Block = 4096;
    private const uint Eio = 5;

    private static byte[] Pattern(int seed)
    {
        var bytes = new byte[Block];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    [Fact]
    public async Task An_invariant_violation_fails_the_store_for_every_client_with_clear_errors()
    {
        using var dir = new TempDirectory("plfs");
        string trigger = dir.Combine("fault");
        await using var server = new PlatterServer(dir.Path);
        server.Environment["DOTNET_STARTUP_HOOKS"] = Path.Combine(AppContext.BaseDirectory, "Platter.FaultHook.dll");
        server.Environment["PLATTER_FAULT_TRIGGER"] = trigger;
        await server.StartAsync();
        var a = await server.CreateExportAsync("a", 4 << 20);
        var b = await server.CreateExportAsync("b", 4 << 20);

        await using var clientA = await NbdTestClient.ConnectAsync(a.SocketPath, a.Name);
        await using var clientB = await NbdTestClient.ConnectAsync(b.SocketPath, b.Name);
        Assert.Equal(0u, await clientA.WriteAsync(0, Pattern(1)));
        Assert.Equal(0u, await clientB.WriteAsync(0, Pattern(2)));
        Assert.Equal(0u, await clientA.FlushAsync());
        Assert.Equal(0u, await clientB.FlushAsync());

        // Break the invariant in volume a while nothing writes to it, and wait (bounded) until the hook has done so.
        File.WriteAllText(trigger + ".tmp", "a");
        File.Move(trigger + ".tmp", trigger);
        string outcome = await WaitForFileAsync(trigger + ".done", TimeSpan.FromSeconds(60), server);
        Assert.Contains("without a journaled change", outcome);

        // Every client of every volume: writes and flushes fail with EIO, reads of flushed data still work.
        Assert.Equal(Eio, await clientA.WriteAsync(Block, Pattern(3)));
        Assert.Equal(Eio, await clientA.FlushAsync());
        Assert.Equal(Eio, await clientB.WriteAsync(Block, Pattern(4)));
        Assert.Equal(Eio, await clientB.FlushAsync());
        Assert.Equal(Pattern(1), (await clientA.ReadAsync(0, Block)).Data);
        Assert.Equal(Pattern(2), (await clientB.ReadAsync(0, Block)).Data);
        await using (var late = await NbdTestClient.ConnectAsync(b.SocketPath, b.Name))
        {
            Assert.Equal(Eio, await late.WriteAsync(0, Pattern(5)));
            Assert.Equal(Pattern(2), (await late.ReadAsync(0, Block)).Data);
        }

        // The management API: health reports the failure; a catalog change is refused, saying to restart.
        using (var api = PlatterApiClient.ForUnixSocket(server.ApiSocketPath, timeout: TimeSpan.FromSeconds(30)))
        {
            var health = await api.GetHealthAsync();
            Assert.Equal("failed", health.Status);
            Assert.Contains("engine invariant broken", health.StoreFailure);
        }
        var refused = await server.CliAsync("volume", "create", "c", "--size", "1M");
        Assert.NotEqual(0, refused.ExitCode);
        Assert.Contains("restart the server", refused.Stderr);

        // One critical line in the log says what the store does now; the exception under it names the broken invariant.
        var critical = server.Log.Split('\n').Where(l => l.Contains(" crit ", StringComparison.Ordinal)).ToList();
        Assert.True(critical.Count == 1, server.Log);
        Assert.Contains("the store now refuses writes until it is reopened", critical[0]);
        await server.AssertLogContainsAsync("engine invariant broken: volume 'a' freed 1 blocks without a journaled change");
        Assert.True(server.IsRunning, "the server stays up, serving reads, until it is stopped");

        // A stop ends the server (its final flush fails, so the exit code says the shutdown was not clean), and a
        // restart without the fault recovers what was flushed and takes writes again.
        int exitCode = await server.StopAsync();
        Assert.True(exitCode != 0, $"a failed store's server exits non-zero\n{server.Log}");
        server.Environment.Clear();
        await server.StartAsync();
        await using var again = await NbdTestClient.ConnectAsync(a.SocketPath, a.Name);
        Assert.Equal(Pattern(1), (await again.ReadAsync(0, Block)).Data);
        Assert.Equal(0u, await again.WriteAsync(Block, Pattern(6)));
        Assert.Equal(0u, await again.FlushAsync());
        using (var api = PlatterApiClient.ForUnixSocket(server.ApiSocketPath, timeout: TimeSpan.FromSeconds(30)))
            Assert.Equal("ok", (await api.GetHealthAsync()).Status);
    }

    private static async Task<string> WaitForFileAsync(string path, TimeSpan limit, PlatterServer server)
    {
        var deadline = DateTime.UtcNow + limit;
        while (!File.Exists(path))
        {
            if (DateTime.UtcNow > deadline || !server.IsRunning)
                throw new Xunit.Sdk.XunitException($"the fault hook did not report within {limit.TotalSeconds:0} s\n{server.Log}");
            await Task.Delay(50);
        }
        return File.ReadAllText(path);
    }
}
