using System.Text.Json;
using Xunit.Sdk;

namespace Platter.Interop.Tests;

/// <summary>
/// Moving volumes with real tools and real servers: `platter import`/`export` checked by qemu-img compare, and
/// `platter send | platter receive` between two `platter serve` processes on separate stores, including streams
/// that are cut, damaged, made for another base, or interrupted by a crash of the receiving server.
/// </summary>
public sealed class MovingTests(ServerFixture fixture, ITestOutputHelper output) : InteropTest(fixture, output), IClassFixture<ServerFixture>
{
    private const long Size = 64 * MiB;

    [Fact]
    public async Task Import_of_a_qcow2_with_data_and_holes_matches_it_stays_sparse_and_exports_back()
    {
        string qcow2 = Scratch.Combine("src.qcow2");
        (await ProcessRunner.RunAsync(Tools.QemuImg, ["create", "-q", "-f", "qcow2", qcow2, $"{Size}"])).EnsureSuccess();
        (await ProcessRunner.RunAsync(Tools.QemuIo, ["-f", "qcow2",
            "-c", $"write -P 0x11 0 {4 * MiB}",
            "-c", $"write -P 0x22 {20 * MiB + 4 * KiB} {1 * MiB}",
            "-c", $"write -z {30 * MiB} {2 * MiB}",           // allocated zeros: must not become data
            "-c", $"write -P 0x33 {Size - 64 * KiB} {64 * KiB}",
            qcow2])).EnsureSuccess();

        var import = (await Server.CliAsync("import", qcow2, "img1", "--json")).EnsureSuccess("platter import failed");
        using (var summary = JsonDocument.Parse(import.Stdout))
        {
            Assert.Equal("qcow2", summary.RootElement.GetProperty("format").GetString());
            Assert.Equal(Size, summary.RootElement.GetProperty("sizeBytes").GetInt64());
        }
        // The import ended with a flush (its data is on disk when it says "imported"): counted before anything else
        // opens the volume.
        string metrics = await UnixHttp.GetAsync(Server.ApiSocketPath, "metrics");
        Assert.Matches(@"(?m)^platter_volume_request_duration_seconds_count\{volume=""img1"",op=""flush""\} [1-9]", metrics);
        var volume = new NbdExport("img1", Server.NbdSocketPath, Size);
        var compare = await ProcessRunner.RunAsync(Tools.QemuImg, ["compare", "-f", "qcow2", "-F", "raw", qcow2, volume.Uri]);
        Assert.True(compare.ExitCode == 0, $"the imported volume differs from the qcow2\n{compare.Describe()}");

        // 5 MiB + 64 KiB of data in a 64 MiB volume: the holes and the zero run stay unallocated.
        long allocated = await AllocatedAsync("img1");
        Assert.InRange(allocated, 5 * MiB, 6 * MiB);

        string raw = Scratch.Combine("out.raw");
        (await Server.CliAsync("export", "img1", raw)).EnsureSuccess("platter export raw failed");
        compare = await ProcessRunner.RunAsync(Tools.QemuImg, ["compare", "-f", "qcow2", "-F", "raw", qcow2, raw]);
        Assert.True(compare.ExitCode == 0, $"the exported raw file differs from the qcow2\n{compare.Describe()}");
        Assert.Equal(Size, new FileInfo(raw).Length);
        long onDisk = long.Parse((await ProcessRunner.RunAsync("stat", ["-c", "%b", raw])).EnsureSuccess().Stdout.Trim()) * 512;
        Assert.True(onDisk < 8 * MiB, $"the exported raw file takes {onDisk} bytes: its holes were filled");

        string qcow2Out = Scratch.Combine("out.qcow2");
        (await Server.CliAsync("export", "img1", qcow2Out, "--format", "qcow2")).EnsureSuccess("platter export qcow2 failed");
        compare = await ProcessRunner.RunAsync(Tools.QemuImg, ["compare", qcow2, qcow2Out]);
        Assert.True(compare.ExitCode == 0, $"the exported qcow2 differs\n{compare.Describe()}");
    }

    [Fact]
    public async Task Import_into_a_server_with_direct_writes_matches_the_image_after_a_restart_and_skips_the_page_cache()
    {
        // `platter serve --direct-writes`: large writes (the import's, and the journal region's zeroing when the store
        // is created) go to the disk, not the page cache; the volume reads back the same, at once and after a restart
        // without the option. Unaligned data ends in partial blocks, which go through the cache.
        await using var server = new PlatterServer { ExtraArguments = ["--direct-writes"] };
        await server.StartAsync();
        string qcow2 = Scratch.Combine("direct.qcow2");
        (await ProcessRunner.RunAsync(Tools.QemuImg, ["create", "-q", "-f", "qcow2", qcow2, $"{Size}"])).EnsureSuccess();
        (await ProcessRunner.RunAsync(Tools.QemuIo, ["-f", "qcow2",
            "-c", $"write -P 0x44 {1 * MiB} {8 * MiB}",
            "-c", $"write -P 0x55 {20 * MiB + 512} {3 * MiB + 1024}",
            "-c", $"write -P 0x66 {Size - 8 * KiB} {8 * KiB}",
            qcow2])).EnsureSuccess();
        (await server.CliAsync("import", qcow2, "direct")).EnsureSuccess("platter import failed");
        // Checked before anything reads the volume (reads go through the cache). Without the option this store's data
        // file has over 100 MiB cached here (the journal region's zeros and the 11 MiB imported).
        long cached = await PageCache.CachedBytesAsync(Path.Combine(server.StoreDirectory, "data"));
        Assert.True(cached < 2 * MiB, $"{cached} bytes of the data file are cached after an import with direct writes");
        var volume = new NbdExport("direct", server.NbdSocketPath, Size);
        var compare = await ProcessRunner.RunAsync(Tools.QemuImg, ["compare", "-f", "qcow2", "-F", "raw", qcow2, volume.Uri]);
        Assert.True(compare.ExitCode == 0, $"the volume written directly differs from the qcow2\n{compare.Describe()}");

        await server.StopAsync();
        server.ExtraArguments = [];
        await server.StartAsync();
        compare = await ProcessRunner.RunAsync(Tools.QemuImg, ["compare", "-f", "qcow2", "-F", "raw", qcow2, volume.Uri]);
        Assert.True(compare.ExitCode == 0, $"after a restart the volume differs from the qcow2\n{compare.Describe()}");
    }

    [Fact]
    public async Task Import_and_send_draw_progress_on_a_terminal_and_nothing_when_piped()
    {
        string raw = Scratch.Combine("progress.raw");
        (await ProcessRunner.RunAsync(Tools.QemuImg, ["create", "-q", "-f", "raw", raw, $"{Size}"])).EnsureSuccess();
        (await ProcessRunner.RunAsync(Tools.QemuIo, ["-f", "raw", "-c", $"write -P 0x5a 0 {8 * MiB}", raw])).EnsureSuccess();

        // On a terminal (script(1) gives the CLI a pseudo-terminal): import draws a bar with its rate and ETA on stdout.
        var onTty = await OnTerminalAsync(["import", raw, "tty1", "--format", "raw"]);
        Assert.True(onTty.Contains("100.0%", StringComparison.Ordinal) && onTty.Contains("/s", StringComparison.Ordinal)
                    && onTty.Contains("ETA", StringComparison.Ordinal), $"no progress line on a terminal:\n{onTty}");

        // Piped: no progress, no carriage returns, only the result.
        var piped = (await Server.CliAsync("import", raw, "piped1", "--format", "raw")).EnsureSuccess("platter import failed");
        Assert.DoesNotContain('\r', piped.Stdout + piped.Stderr);
        Assert.DoesNotContain("ETA", piped.Stdout + piped.Stderr);

        // send writes its stream to a file and its progress to stderr when that is a terminal.
        (await Server.CliAsync("snapshot", "create", "tty1@s1")).EnsureSuccess();
        var sendTty = await OnTerminalAsync(["send", "tty1@s1", "-o", Scratch.Combine("tty1.stream")]);
        Assert.True(sendTty.Contains("send tty1@s1", StringComparison.Ordinal) && sendTty.Contains("/s", StringComparison.Ordinal),
            $"no send progress on a terminal:\n{sendTty}");
        var sendPiped = (await Server.CliAsync("send", "tty1@s1", "-o", Scratch.Combine("piped.stream"))).EnsureSuccess();
        Assert.DoesNotContain('\r', sendPiped.Stdout + sendPiped.Stderr);
    }

    [Fact]
    public async Task Import_and_export_help_say_they_use_qemu_img_and_where_it_comes_from()
    {
        foreach (var command in new[] { "import", "export" })
        {
            string help = System.Text.RegularExpressions.Regex.Replace((await Server.CliAsync(command, "--help")).EnsureSuccess().Stdout, @"\s+", " ");
            Assert.Contains("qemu-img (package qemu-utils)", help);
            Assert.Contains("--format", help);
        }
    }

    /// <summary>Runs <c>platter ARGS</c> on a pseudo-terminal (script -q -e) and returns what it drew there.</summary>
    private async Task<string> OnTerminalAsync(string[] args)
    {
        string command = string.Join(' ', new[] { PlatterServer.DotnetHost, PlatterServer.PlatterDll }.Concat(args).Concat(["--api-socket", Server.ApiSocketPath]).Select(a => "'" + a + "'"));
        var result = await ProcessRunner.RunAsync("script", ["-q", "-e", "-c", command, "/dev/null"]);
        Output.WriteLine(result.Describe());
        result.EnsureSuccess($"platter {string.Join(' ', args)} on a terminal failed");
        return result.Stdout;
    }

    [Fact]
    public async Task A_failed_import_leaves_no_volume_and_an_existing_file_is_not_overwritten()
    {
        string notAnImage = Scratch.Combine("bad.qcow2");
        await File.WriteAllTextAsync(notAnImage, "not a disk image");
        var failed = await Server.CliAsync("import", notAnImage, "img-bad", "--format", "qcow2");
        Assert.Equal(1, failed.ExitCode);
        Assert.StartsWith("platter: qemu-img info:", failed.Stderr);
        Assert.DoesNotContain("img-bad", (await Server.CliAsync("volume", "list")).EnsureSuccess().Stdout);

        var vol = await Fixture.CreateExportAsync("exists", 1 * MiB);
        string existing = Scratch.Combine("existing.raw");
        await File.WriteAllTextAsync(existing, "keep me");
        var refused = await Server.CliAsync("export", vol.Name, existing);
        Assert.Equal(1, refused.ExitCode);
        Assert.Contains("exists", refused.Stderr);
        Assert.Equal("keep me", await File.ReadAllTextAsync(existing));
    }

    [Fact]
    public async Task Send_and_receive_full_then_incremental_into_a_second_store_match_the_source()
    {
        await using var target = new PlatterServer();
        await target.StartAsync();
        var vol = await Fixture.CreateExportAsync("src", Size);
        await Clients.QemuIoAsync(vol.Uri, $"write -P 0x11 0 {4 * MiB}", $"write -P 0x22 {20 * MiB} {1 * MiB}", $"write -P 0x33 {Size - 4 * KiB} {4 * KiB}", "flush");
        (await Server.CliAsync("snapshot", "create", $"{vol.Name}@s1")).EnsureSuccess();

        await PipeAsync(Server, ["send", $"{vol.Name}@s1"], target, ["receive", "copy"]);
        await AssertSameAsync(target, vol.Name, "copy", "s1");
        Assert.InRange(await AllocatedAsync("copy", target), 5 * MiB, 6 * MiB); // holes stay holes

        // Changes, a trim and a grow, then an incremental stream.
        await Clients.QemuIoAsync(vol.Uri, $"write -P 0x44 {1 * MiB} {64 * KiB}", $"discard {20 * MiB} {512 * KiB}", $"write -P 0x55 {40 * MiB} {4 * KiB}", "flush");
        (await Server.CliAsync("volume", "resize", vol.Name, "--size", "80M")).EnsureSuccess();
        var grown = vol with { SizeBytes = 80 * MiB };
        await Clients.QemuIoAsync(grown.Uri, $"write -P 0x66 {70 * MiB} {1 * MiB}", "flush");
        (await Server.CliAsync("snapshot", "create", $"{vol.Name}@s2")).EnsureSuccess();

        string stream = Scratch.Combine("s1-s2.stream");
        (await Server.CliAsync("send", $"{vol.Name}@s2", "--from", $"{vol.Name}@s1", "-o", stream)).EnsureSuccess("platter send --from failed");
        // 1.1 MiB of new data (and one zero record): the stream follows the change, not the 80 MiB volume.
        Assert.InRange(new FileInfo(stream).Length, 1 * MiB, 2 * MiB);
        var received = (await target.CliAsync("receive", "copy", "-i", stream, "--json")).EnsureSuccess("platter receive failed");
        using (var summary = JsonDocument.Parse(received.Stdout))
        {
            Assert.Equal("s1", summary.RootElement.GetProperty("baseSnapshot").GetString());
            Assert.Equal(512 * KiB, summary.RootElement.GetProperty("zeroBytes").GetInt64());
        }
        await AssertSameAsync(target, vol.Name, "copy", "s2");
        Assert.Equal(await DiffJsonAsync(Server, $"{vol.Name}@s1", $"{vol.Name}@s2"), await DiffJsonAsync(target, "copy@s1", "copy@s2"));
    }

    [Fact]
    public async Task Cut_damaged_and_wrong_base_streams_are_refused_and_leave_the_target_unchanged()
    {
        int seed = Environment.GetEnvironmentVariable("PLATTER_TEST_SEED") is { } s ? int.Parse(s) : Random.Shared.Next();
        Output.WriteLine($"seed {seed} (replay with PLATTER_TEST_SEED={seed})");
        var random = new Random(seed);
        await using var target = new PlatterServer();
        await target.StartAsync();
        var vol = await Fixture.CreateExportAsync("dmg", Size);
        await Clients.QemuIoAsync(vol.Uri, $"write -P 0x11 0 {3 * MiB}", "flush");
        (await Server.CliAsync("snapshot", "create", $"{vol.Name}@s1")).EnsureSuccess();
        string full = Scratch.Combine("full.stream");
        (await Server.CliAsync("send", $"{vol.Name}@s1", "-o", full)).EnsureSuccess();
        await Clients.QemuIoAsync(vol.Uri, $"write -P 0x22 {1 * MiB} {2 * MiB}", $"discard {10 * MiB} {1 * MiB}", $"write -P 0x33 {30 * MiB} {1 * MiB}", "flush");
        (await Server.CliAsync("snapshot", "create", $"{vol.Name}@s2")).EnsureSuccess();
        string inc = Scratch.Combine("inc.stream");
        (await Server.CliAsync("send", $"{vol.Name}@s2", "--from", "s1", "-o", inc)).EnsureSuccess();
        byte[] fullBytes = await File.ReadAllBytesAsync(full);
        byte[] incBytes = await File.ReadAllBytesAsync(inc);

        // A full stream cut short: no volume, no leftover temporary volume.
        for (int i = 0; i < 3; i++)
        {
            int cut = random.Next(1, fullBytes.Length);
            await File.WriteAllBytesAsync(Scratch.Combine("cut-full"), fullBytes[..cut]);
            var r = await target.CliAsync("receive", "copy", "-i", Scratch.Combine("cut-full"));
            Assert.True(r.ExitCode == 1 && r.Stderr.Contains("ends early"), $"cut at {cut} of {fullBytes.Length}\n{r.Describe()}");
            Assert.Equal("[]", await VolumeNamesAsync(target));
        }
        (await target.CliAsync("receive", "copy", "-i", full)).EnsureSuccess();
        await AssertSameAsync(target, vol.Name, "copy", "s1");

        var cases = new List<(string What, byte[] Bytes, string Error)>();
        for (int i = 0; i < 4; i++)
        {
            int cut = random.Next(1, incBytes.Length);
            cases.Add(($"cut at {cut}", incBytes[..cut], "ends early"));
        }
        for (int i = 0; i < 3; i++)
        {
            // Past the header (whose damage is refused before anything is written, which proves less).
            int at = random.Next(128, incBytes.Length);
            var damaged = (byte[])incBytes.Clone();
            damaged[at] ^= (byte)(1 << random.Next(8));
            // A flipped length field can also make the stream end early: either refusal is right.
            cases.Add(($"bit flipped at {at}", damaged, "damaged send stream|ends early"));
        }
        foreach (var (what, bytes, error) in cases)
        {
            await File.WriteAllBytesAsync(Scratch.Combine("bad"), bytes);
            var r = await target.CliAsync("receive", "copy", "-i", Scratch.Combine("bad"));
            Assert.True(r.ExitCode == 1 && r.Stderr.StartsWith("platter: ") && error.Split('|').Any(r.Stderr.Contains) && r.Stderr.Contains("unchanged"),
                $"{what}\n{r.Describe()}");
            await AssertUnchangedAsync(target, vol.Name, "copy", "s1", what);
        }

        // The wrong base: same name, other content.
        (await target.CliAsync("volume", "create", "other", "--size", "64M")).EnsureSuccess();
        (await target.CliAsync("snapshot", "create", "other@s1")).EnsureSuccess();
        var wrong = await target.CliAsync("receive", "other", "-i", inc);
        Assert.True(wrong.ExitCode == 1 && wrong.Stderr.Contains("wrong base"), wrong.Describe());
        Assert.Equal(["s1"], await SnapshotNamesAsync(target, "other"));

        // A target changed since its base is refused too (applying would mix two histories).
        var copy = new NbdExport("copy", target.NbdSocketPath, Size);
        await Clients.QemuIoAsync(copy.Uri, $"write -P 0x77 {50 * MiB} 4096", "flush");
        var changed = await target.CliAsync("receive", "copy", "-i", inc);
        Assert.True(changed.ExitCode == 1 && changed.Stderr.Contains("has changed since"), changed.Describe());
        (await target.CliAsync("rollback", "copy@s1")).EnsureSuccess();

        // And the intact stream still applies afterwards.
        (await target.CliAsync("receive", "copy", "-i", inc)).EnsureSuccess();
        await AssertSameAsync(target, vol.Name, "copy", "s2");
    }

    [Fact]
    public async Task A_crash_of_the_receiving_server_mid_stream_is_undone_at_restart()
    {
        await using var target = new PlatterServer();
        await target.StartAsync();
        var vol = await Fixture.CreateExportAsync("crash", Size);
        await Clients.QemuIoAsync(vol.Uri, $"write -P 0x11 0 {2 * MiB}", "flush");
        (await Server.CliAsync("snapshot", "create", $"{vol.Name}@s1")).EnsureSuccess();
        await PipeAsync(Server, ["send", $"{vol.Name}@s1"], target, ["receive", "copy"]);
        await Clients.QemuIoAsync(vol.Uri, $"write -P 0x22 0 {8 * MiB}", "flush");
        (await Server.CliAsync("snapshot", "create", $"{vol.Name}@s2")).EnsureSuccess();
        string inc = Scratch.Combine("inc.stream");
        (await Server.CliAsync("send", $"{vol.Name}@s2", "--from", "s1", "-o", inc)).EnsureSuccess();

        // Feed most of the stream, then hold the pipe open: the server has applied part of it when it is killed.
        string partial = Scratch.Combine("partial");
        await File.WriteAllBytesAsync(partial, (await File.ReadAllBytesAsync(inc))[..(int)(6 * MiB)]);
        var receive = ProcessRunner.RunAsync("bash", ["-c", $"(cat '{partial}'; sleep 10) | '{PlatterServer.DotnetHost}' '{PlatterServer.PlatterDll}' receive copy --api-socket '{target.ApiSocketPath}'"],
            TimeSpan.FromSeconds(60));
        await WaitForAsync(() => Directory.Exists(Path.Combine(target.StoreDirectory, "receiving"))
                                 && Directory.GetFiles(Path.Combine(target.StoreDirectory, "receiving"), "*.json").Length > 0);
        await Task.Delay(1500); // let it write some of the 6 MiB
        await target.KillAsync();
        var cut = await receive;
        Assert.NotEqual(0, cut.ExitCode);

        await target.StartAsync();
        await target.AssertLogContainsAsync("rolled it back"); // the log is written asynchronously
        await AssertUnchangedAsync(target, vol.Name, "copy", "s1", "after the crash");
        (await target.CliAsync("receive", "copy", "-i", inc)).EnsureSuccess();
        await AssertSameAsync(target, vol.Name, "copy", "s2");

        // A full stream cut by a crash: its temporary volume is deleted at restart, the new volume never appears.
        string full = Scratch.Combine("full.stream");
        (await Server.CliAsync("send", $"{vol.Name}@s2", "-o", full)).EnsureSuccess();
        await File.WriteAllBytesAsync(partial, (await File.ReadAllBytesAsync(full))[..(int)(5 * MiB)]);
        receive = ProcessRunner.RunAsync("bash", ["-c", $"(cat '{partial}'; sleep 10) | '{PlatterServer.DotnetHost}' '{PlatterServer.PlatterDll}' receive copy2 --api-socket '{target.ApiSocketPath}'"],
            TimeSpan.FromSeconds(60));
        await WaitForAsync(() => Directory.GetFiles(Path.Combine(target.StoreDirectory, "receiving"), "*.json").Length > 0);
        // Kill only once the temporary volume exists (a catalog change is durable when the API answers): on a busy
        // machine a fixed delay could kill before it, and then there is nothing to undo.
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (!(await VolumeNamesAsync(target)).Contains("receive-tmp-"))
        {
            if (DateTime.UtcNow > deadline) throw new XunitException("timed out waiting for the receive's temporary volume");
            await Task.Delay(50);
        }
        await Task.Delay(500); // let it write some of the stream
        await target.KillAsync();
        Assert.NotEqual(0, (await receive).ExitCode);
        await target.StartAsync();
        deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (!target.Log.Contains("deleted its partial volume") && DateTime.UtcNow < deadline) await Task.Delay(50);
        await target.AssertLogContainsAsync("deleted its partial volume");
        Assert.Equal("[\"copy\"]", await VolumeNamesAsync(target));
        Assert.Empty(Directory.GetFiles(Path.Combine(target.StoreDirectory, "receiving")));
    }

    private static async Task WaitForAsync(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (!condition())
        {
            if (DateTime.UtcNow > deadline) throw new XunitException("timed out waiting for the receive to start");
            await Task.Delay(50);
        }
    }

    private async Task PipeAsync(PlatterServer from, string[] send, PlatterServer to, string[] receive)
    {
        var result = await PlatterServer.PipeAsync(from, send, to, receive);
        Output.WriteLine(result.Describe());
        result.EnsureSuccess("send | receive failed");
    }

    /// <summary>The target's volume and snapshot equal the source's snapshot: content, size, and the snapshot list so far.</summary>
    private async Task AssertSameAsync(PlatterServer target, string sourceVolume, string targetVolume, string snapshot)
    {
        var sourceSnapshot = new NbdExport($"{sourceVolume}@{snapshot}", Server.NbdSocketPath, 0);
        foreach (var name in new[] { targetVolume, $"{targetVolume}@{snapshot}" })
        {
            var compare = await ProcessRunner.RunAsync(Tools.QemuImg, ["compare", "-f", "raw", "-F", "raw", sourceSnapshot.Uri, new NbdExport(name, target.NbdSocketPath, 0).Uri]);
            Assert.True(compare.ExitCode == 0, $"{name} differs from {sourceVolume}@{snapshot} (or in size)\n{compare.Describe()}");
        }
        var sourceSnapshots = await SnapshotsAsync(Server, sourceVolume);
        var targetSnapshots = await SnapshotsAsync(target, targetVolume);
        var expected = sourceSnapshots.TakeWhile(s => s.Name != snapshot).Select(s => s).Append(sourceSnapshots.Single(s => s.Name == snapshot)).ToList();
        Assert.Equal(expected.Select(s => (s.Name, s.Size)), targetSnapshots.Select(s => (s.Name, s.Size)));
        // qemu-img compare treats a longer image as equal when its tail reads as zeros: the sizes are checked here.
        Assert.Equal(expected[^1].Size, await VolumeSizeAsync(target, targetVolume));
    }

    private static async Task<long> VolumeSizeAsync(PlatterServer server, string volume)
    {
        var result = (await server.CliAsync("volume", "info", volume, "--json")).EnsureSuccess();
        using var doc = JsonDocument.Parse(result.Stdout);
        return doc.RootElement.GetProperty("sizeBytes").GetInt64();
    }

    /// <summary>After a refused stream: the target still is the source's <paramref name="snapshot"/>, has exactly the snapshots up to it, no changes since, and no leftovers.</summary>
    private async Task AssertUnchangedAsync(PlatterServer target, string sourceVolume, string targetVolume, string snapshot, string what)
    {
        await AssertSameAsync(target, sourceVolume, targetVolume, snapshot);
        var diff = await DiffJsonAsync(target, $"{targetVolume}@{snapshot}", targetVolume);
        Assert.True(diff == "[]", $"{what}: '{targetVolume}' changed since '{snapshot}': {diff}");
        Assert.DoesNotContain("receive-tmp", await VolumeNamesAsync(target));
    }

    private static async Task<List<(string Name, long Size)>> SnapshotsAsync(PlatterServer server, string volume)
    {
        var result = (await server.CliAsync("snapshot", "list", volume, "--json")).EnsureSuccess();
        using var doc = JsonDocument.Parse(result.Stdout);
        return doc.RootElement.GetProperty("snapshots").EnumerateArray()
            .Select(s => (s.GetProperty("name").GetString()!, s.GetProperty("sizeBytes").GetInt64())).ToList();
    }

    private static async Task<string[]> SnapshotNamesAsync(PlatterServer server, string volume) =>
        (await SnapshotsAsync(server, volume)).Select(s => s.Name).ToArray();

    private static async Task<string> DiffJsonAsync(PlatterServer server, string from, string to)
    {
        var result = (await server.CliAsync("diff", from, to, "--json")).EnsureSuccess();
        using var doc = JsonDocument.Parse(result.Stdout);
        return doc.RootElement.GetProperty("extents").GetRawText();
    }

    private static async Task<string> VolumeNamesAsync(PlatterServer server)
    {
        var result = (await server.CliAsync("volume", "list", "--json")).EnsureSuccess();
        using var doc = JsonDocument.Parse(result.Stdout);
        return JsonSerializer.Serialize(doc.RootElement.GetProperty("volumes").EnumerateArray().Select(v => v.GetProperty("name").GetString()).ToArray());
    }

    private async Task<long> AllocatedAsync(string volume, PlatterServer? server = null)
    {
        var result = (await (server ?? Server).CliAsync("volume", "info", volume, "--json")).EnsureSuccess();
        using var doc = JsonDocument.Parse(result.Stdout);
        return doc.RootElement.GetProperty("allocatedBytes").GetInt64();
    }
}
