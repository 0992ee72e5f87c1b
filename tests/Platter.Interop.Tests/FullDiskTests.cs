using System.Text.Json;
using Xunit.Sdk;

namespace Platter.Interop.Tests;

/// <summary>
/// A store on a 64 MiB tmpfs, through the real <c>platter</c> binary and qemu-io: the store can be created there,
/// a data write that finds the disk full gets ENOSPC, and then trims, snapshot deletes and volume deletes still go
/// through and give space back to the file system (df goes down) without a restart; the server stops cleanly, and
/// <c>platter check</c> and <c>platter serve</c> work on a file system that something else has filled to the last byte.
/// </summary>
public sealed class FullDiskTests(ITestOutputHelper output) : IAsyncLifetime
{
    private const long MiB = 1024 * 1024;
    private readonly PlatterServer _server = new();
    private string? _mount;

    public async Task InitializeAsync()
    {
        _mount = Path.GetDirectoryName(_server.StoreDirectory)! + "/fs";
        Directory.CreateDirectory(_mount);
        // Needs root (as CI and the dev machines run the tests); a failure here fails the test, it does not skip it.
        (await ProcessRunner.RunAsync("mount", ["-t", "tmpfs", "-o", "size=64m", "tmpfs", _mount])).EnsureSuccess("mounting a 64 MiB tmpfs failed (the full-disk tests run as root)");
        _server.StoreDirectory = Path.Combine(_mount, "store");
    }

    public async Task DisposeAsync()
    {
        // The server first (it holds files on the mount), then the mount, then the directory it was in.
        if (_server.IsRunning)
        {
            try { await _server.StopAsync(); }
            catch (XunitException e) { output.WriteLine(e.Message); }
        }
        output.WriteLine(_server.Log);
        if (_mount is not null) (await ProcessRunner.RunAsync("umount", [_mount])).EnsureSuccess("unmounting the test tmpfs failed");
        await _server.DisposeAsync();
    }

    private long FileSystemUsedBytes()
    {
        var fs = new DriveInfo(_mount!);
        return fs.TotalSize - fs.AvailableFreeSpace;
    }

    [Fact]
    public async Task A_full_disk_refuses_data_writes_but_deletes_and_trims_free_space_without_a_restart()
    {
        // A store fits on a 64 MiB file system (the journal is sized for it).
        await _server.StartAsync();
        var a = await _server.CreateExportAsync("a", 1024 * MiB);
        var b = await _server.CreateExportAsync("b", 1024 * MiB);
        await Clients.QemuIoAsync(a.Uri, $"write -P 0xa1 0 {20 * MiB}", "flush");

        // b writes until the disk is full: the data write gets ENOSPC (and nothing else breaks).
        var full = await ProcessRunner.RunAsync(Tools.QemuIo, ["-f", "raw", "-c", $"write -P 0xb2 0 {100 * MiB}", "-c", "flush", b.Uri]);
        Assert.True(full.Stdout.Contains("No space left on device", StringComparison.Ordinal)
                    || full.Stderr.Contains("No space left on device", StringComparison.Ordinal), $"expected ENOSPC\n{full.Describe()}");
        var usage = await UsageAsync();
        Assert.True(usage.GetProperty("fileSystemBytes").GetInt64() is > 60 * MiB and <= 64 * MiB, usage.ToString());
        Assert.Contains(usage.GetProperty("warnings").EnumerateArray(), w => w.GetString()!.Contains("overcommitted", StringComparison.Ordinal));

        // Writes the full disk refused left the written data intact.
        await Clients.QemuIoAsync(a.Uri, readOnly: true, $"read -P 0xa1 0 {20 * MiB}");

        // A trim, a snapshot delete and a volume delete go through, and the space goes back to the file system.
        long usedFull = FileSystemUsedBytes();
        await Clients.QemuIoAsync(b.Uri, $"discard 0 {8 * MiB}", "flush");
        (await _server.CliAsync("snapshot", "create", "a@s1")).EnsureSuccess();
        await Clients.QemuIoAsync(a.Uri, $"write -P 0xa3 0 {4 * MiB}", "flush");
        (await _server.CliAsync("snapshot", "delete", "a@s1")).EnsureSuccess();
        (await _server.CliAsync("volume", "delete", b.Name)).EnsureSuccess();
        // Freed blocks are punched once their commit is durable and no reader can still see them (a commit round or two).
        var waited = System.Diagnostics.Stopwatch.StartNew();
        long usedAfter = FileSystemUsedBytes();
        while (usedAfter >= usedFull - 20 * MiB && waited.Elapsed < TimeSpan.FromSeconds(30))
        {
            await Task.Delay(100);
            usedAfter = FileSystemUsedBytes();
        }
        output.WriteLine($"file system used: {usedFull / MiB} MiB full, {usedAfter / MiB} MiB {waited.ElapsedMilliseconds} ms after the delete returned");
        Assert.True(usedAfter < usedFull - 20 * MiB, $"deleting volume b (~28 MiB written) freed only {(usedFull - usedAfter) / MiB} MiB on the file system in 30 s");

        // Without a restart, writes succeed again.
        await Clients.QemuIoAsync(a.Uri, $"write -P 0xa4 {30 * MiB} {16 * MiB}", "flush");
        var du = (await _server.CliAsync("du")).EnsureSuccess().Stdout;
        Assert.Contains("file system:", du);
        Assert.Equal(0, await _server.StopAsync());

        // Something else fills the file system to the last byte: check and serve still work.
        var hog = await ProcessRunner.RunAsync("dd", ["if=/dev/zero", $"of={_mount}/hog", "bs=1M"]);
        Assert.Equal(0, new DriveInfo(_mount!).AvailableFreeSpace);
        (await ProcessRunner.RunAsync(PlatterServer.DotnetHost, [PlatterServer.PlatterDll, "check", "--store", _server.StoreDirectory]))
            .EnsureSuccess($"platter check on a full file system failed (dd: {hog.Stderr.Trim()})");
        await _server.StartAsync();
        await Clients.QemuIoAsync(a.Uri, readOnly: true, $"read -P 0xa4 {30 * MiB} {16 * MiB}", $"read -P 0xa3 0 {4 * MiB}");
        var refused = await ProcessRunner.RunAsync(Tools.QemuIo, ["-f", "raw", "-c", $"write -P 0xa5 {50 * MiB} {8 * MiB}", "-c", "flush", a.Uri]);
        Assert.Contains("No space left on device", refused.Stdout + refused.Stderr);
        (await _server.CliAsync("volume", "delete", a.Name)).EnsureSuccess("deleting a volume on a full file system failed");
        Assert.Equal(0, await _server.StopAsync());
    }

    private async Task<JsonElement> UsageAsync()
    {
        var result = (await _server.CliAsync("du", "--json")).EnsureSuccess();
        using var doc = JsonDocument.Parse(result.Stdout);
        return doc.RootElement.Clone();
    }
}
