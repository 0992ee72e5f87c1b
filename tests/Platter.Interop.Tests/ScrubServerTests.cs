using System.Diagnostics;
using System.Text.Json;
using Platter.Server.Api;
using Xunit.Sdk;

namespace Platter.Interop.Tests;

/// <summary>
/// The online scrub through the real binary: `platter scrub start|status --json|stop` against `platter serve`,
/// paused progress kept across a SIGKILL, a running scrub resumed after one, and a byte flipped on disk under the
/// running server found and named while clients keep reading the other blocks. Each test has its own server.
/// </summary>
public sealed class ScrubServerTests(ITestOutputHelper output) : IAsyncLifetime
{
    private const long MiB = 1024 * 1024;
    // 40 MiB of data: two and a half scrub batches (16 MiB each), so there is progress between start and end.
    private const long DataBytes = 40 * MiB;
    private const long Blocks = DataBytes / 4096;
    private readonly PlatterServer _server = new();

    public Task InitializeAsync() => _server.StartAsync();

    public async Task DisposeAsync()
    {
        await _server.DisposeAsync();
        var log = _server.Log;
        output.WriteLine(log.Length <= 16_000 ? log : "[...]\n" + log[^16_000..]);
    }

    private async Task<ScrubStatusDto> CliStatusAsync(params string[] args)
    {
        var result = await _server.CliAsync(["scrub", .. args, "--json"]);
        if (result.ExitCode != 0) throw new XunitException($"platter scrub {string.Join(' ', args)} failed\n{result.Describe()}\n{_server.Log}");
        return JsonSerializer.Deserialize(result.Stdout, PlatterJsonContext.Default.ScrubStatusDto)!;
    }

    // Polls `platter scrub status --json` until the condition holds (a bound against a hang, not a timing assertion).
    private async Task<ScrubStatusDto> WaitForAsync(Func<ScrubStatusDto, bool> condition, string what)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            var status = await CliStatusAsync("status");
            if (condition(status)) return status;
            if (clock.Elapsed > TimeSpan.FromMinutes(3))
                throw new XunitException($"scrub never reached: {what}; last status {JsonSerializer.Serialize(status, PlatterJsonContext.Default.ScrubStatusDto)}");
            await Task.Delay(200);
        }
    }

    private string ProgressFile => Path.Combine(_server.StoreDirectory, "scrub.json");

    private async Task<NbdExport> WriteDataAsync()
    {
        var export = await _server.CreateExportAsync("vm1", DataBytes);
        await Clients.QemuIoAsync(export.Uri, $"write -P 0xab 0 {DataBytes}", "flush");
        return export;
    }

    [Fact]
    public async Task Stop_keeps_progress_across_a_kill_and_start_resumes_it()
    {
        await WriteDataAsync();
        var none = await CliStatusAsync("status");
        Assert.Equal("none", none.State);

        // 1 MB/s: the first 16 MiB batch takes about 17 s, the whole store about 42 s (a CLI call on a loaded machine
        // takes seconds: the stop must land well before the end).
        var started = await CliStatusAsync("start", "--rate", "1");
        Assert.Equal("running", started.State);
        Assert.Equal(1_000_000, started.RateBytesPerSecond);
        Assert.Equal(Blocks, started.BlocksTotal);
        var partial = await WaitForAsync(s => s.BlocksChecked > 0 || s.State != "running", "some progress");
        Assert.Equal("running", partial.State);
        Assert.True(partial.EtaSeconds > 0, "a running scrub estimates its end");

        var paused = await CliStatusAsync("stop");
        Assert.Equal("paused", paused.State);
        Assert.InRange(paused.BlocksChecked, 1, Blocks - 1);

        await _server.KillAsync();
        await _server.StartAsync();
        var kept = await CliStatusAsync("status");
        Assert.Equal("paused", kept.State);
        Assert.Equal(paused.BlocksChecked, kept.BlocksChecked);
        Assert.Equal(paused.StartedUtc, kept.StartedUtc);

        var resumed = await CliStatusAsync("start", "--rate", "0");
        Assert.Equal(paused.StartedUtc, resumed.StartedUtc); // the same scrub, not a new one
        var done = await WaitForAsync(s => s.State == "finished", "finished");
        Assert.Equal(Blocks, done.BlocksChecked); // each block once: nothing read twice, nothing skipped
        Assert.Equal(0, done.BadBlocksFound);
        await _server.AssertLogContainsAsync("Resuming the scrub of the whole store");

        var text = await _server.CliAsync("scrub", "status");
        Assert.Contains("finished, 100.0%", text.Stdout);
    }

    [Fact]
    public async Task A_scrub_running_when_the_server_is_killed_resumes_when_it_starts_again()
    {
        await WriteDataAsync();
        await CliStatusAsync("start", "--rate", "2");
        // Wait until the progress file itself records a finished batch, then kill: what survives is on disk.
        var clock = Stopwatch.StartNew();
        long onDisk = 0;
        while (onDisk == 0)
        {
            if (clock.Elapsed > TimeSpan.FromMinutes(3)) throw new XunitException("the progress file never recorded a batch\n" + _server.Log);
            await Task.Delay(100);
            using var doc = JsonDocument.Parse(await File.ReadAllBytesAsync(ProgressFile));
            if (doc.RootElement.GetProperty("state").GetString() == "running") onDisk = doc.RootElement.GetProperty("blocksChecked").GetInt64();
        }
        await _server.KillAsync();
        await _server.StartAsync();
        await _server.AssertLogContainsAsync($"Resuming the scrub of the whole store at {onDisk} of {Blocks} blocks");
        var first = await CliStatusAsync("status");
        Assert.True(first.BlocksChecked >= onDisk, $"progress went back: {first.BlocksChecked} < {onDisk}");
        await CliStatusAsync("start", "--rate", "0"); // same targets while running: takes the new rate
        var done = await WaitForAsync(s => s.State == "finished", "finished");
        Assert.Equal(Blocks, done.BlocksChecked);
    }

    [Fact]
    public async Task A_byte_flipped_under_the_running_server_is_found_named_and_keeps_failing_reads()
    {
        var export = await _server.CreateExportAsync("vm1", 8 * MiB);
        await Clients.QemuIoAsync(export.Uri, $"write -P 0xab 0 {8 * MiB}", $"write -P 0x5a {1 * MiB} 4k", "flush");
        Assert.Equal(0, (await _server.CliAsync("snapshot", "create", "vm1@s1")).ExitCode);
        // Flip one bit of the 0x5a block in the data file, under the server (python does not take the file's lock).
        var flip = await ProcessRunner.RunAsync("python3", ["-c", """
            import sys
            path = sys.argv[1]
            data = open(path, 'rb').read()
            at = data.find(b'\x5a' * 4096)
            assert at >= 0 and data.find(b'\x5a' * 4096, at + 1) < 0, 'the block is not in the data file exactly once'
            with open(path, 'r+b') as f:
                f.seek(at + 100)
                f.write(b'\x5b')
            """, Path.Combine(_server.StoreDirectory, "data")]);
        flip.EnsureSuccess("flipping a byte in the data file");

        await CliStatusAsync("start", "--rate", "0");
        var done = await WaitForAsync(s => s.State == "finished", "finished");
        Assert.Equal(1, done.BadBlocksFound);
        var bad = Assert.Single(done.BadBlocks);
        Assert.Equal("checksum_mismatch", bad.Reason);
        Assert.Equal(["vm1:1048576", "vm1@s1:1048576"], bad.References.Select(r => $"{r.Version}:{r.Offset}").Order(StringComparer.Ordinal).ToArray());

        // Nothing is repaired: a client reading the block gets EIO; the blocks around it read fine.
        var read = await ProcessRunner.RunAsync(Tools.QemuIo, ["-f", "raw", "-r", "-c", $"read {1 * MiB} 4k", export.Uri]);
        Assert.Contains("Input/output error", read.Stdout + read.Stderr);
        await Clients.QemuIoAsync(export.Uri, readOnly: true, $"read -P 0xab 0 {1 * MiB}", $"read -P 0xab {1 * MiB + 4096} {7 * MiB - 4096}");

        var metrics = await ProcessRunner.RunAsync("curl", ["-s", "--unix-socket", _server.ApiSocketPath, "http://x/metrics"]);
        Assert.Contains("platter_scrub_bad_blocks_total 1", metrics.Stdout);
        Assert.Contains("platter_scrub_bad_blocks 1", metrics.Stdout);
        var text = await _server.CliAsync("scrub", "status");
        Assert.Contains("vm1 at offset 1048576", text.Stdout);
        await _server.AssertLogContainsAsync("Scrub found a bad block");

        // Restoring the range (here: writing it again) frees the bad copy in the volume; the snapshot still holds it.
        await Clients.QemuIoAsync(export.Uri, $"write -P 0x5a {1 * MiB} 4k", "flush");
        var after = await CliStatusAsync("status");
        Assert.Equal(["vm1@s1:1048576"], Assert.Single(after.BadBlocks).References.Select(r => $"{r.Version}:{r.Offset}").ToArray());
    }
}
