using System.Buffers.Binary;
using Xunit.Sdk;

namespace Platter.Interop.Tests;

/// <summary>
/// A stopped store damaged the ways the issue reproduced, then opened by the real <c>platter</c> binary: serve and
/// check refuse with one line naming the damage (never a half-read store, never a signal), a data file without its
/// metadata is never reinitialised, and <c>platter serve --salvage</c> serves the intact volume read-only to qemu-io.
/// </summary>
public sealed class DamagedStoreTests(ITestOutputHelper output) : IAsyncLifetime
{
    private const long MiB = 1024 * 1024;
    private readonly PlatterServer _server = new();

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        output.WriteLine(_server.Log);
        await _server.DisposeAsync();
    }

    private string MetadataPath => Path.Combine(_server.StoreDirectory, "data.mdb");

    // Two 8 MiB volumes written 4 MiB each with their own pattern, then the server stopped cleanly.
    private async Task<(NbdExport Damaged, NbdExport Intact)> CreateStoreAsync()
    {
        await _server.StartAsync();
        var damaged = await _server.CreateExportAsync("v1", 8 * MiB);
        var intact = await _server.CreateExportAsync("v2", 8 * MiB);
        await Clients.QemuIoAsync(damaged.Uri, $"write -P 0xab 0 {4 * MiB}", "flush");
        await Clients.QemuIoAsync(intact.Uri, $"write -P 0xcd 0 {4 * MiB}", "flush");
        Assert.Equal(0, await _server.StopAsync());
        return (damaged, intact);
    }

    private Task<ProcessResult> PlatterAsync(params string[] args) =>
        ProcessRunner.RunAsync(PlatterServer.DotnetHost, [PlatterServer.PlatterDll, .. args], TimeSpan.FromSeconds(60));

    private Task<ProcessResult> ServeAsync(params string[] extra) =>
        PlatterAsync(["serve", "--store", _server.StoreDirectory, "--listen", "none", "--socket", "none",
            "--api-socket", _server.ApiSocketPath, .. extra]);

    private static void AssertOneLineError(ProcessResult result, string expected)
    {
        Assert.True(result.ExitCode == 1, $"expected exit code 1 (an error, not a signal)\n{result.Describe()}");
        var line = Assert.Single(result.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries), l => l.StartsWith("platter:", StringComparison.Ordinal));
        Assert.True(line.Contains(expected, StringComparison.Ordinal), $"expected '{expected}' in the error\n{result.Describe()}");
        Assert.DoesNotContain("   at ", result.Stderr);
    }

    [Fact]
    public async Task Random_bytes_over_an_extent_record_are_refused_and_salvage_serves_the_intact_volume()
    {
        await CreateStoreAsync();
        // 200 random bytes from the key of v1's first extent record (layer 2, block 0) in every copy of its page.
        var bytes = await File.ReadAllBytesAsync(MetadataPath);
        var pattern = new byte[18];
        BinaryPrimitives.WriteUInt16LittleEndian(pattern, 16);
        BinaryPrimitives.WriteInt64BigEndian(pattern.AsSpan(2), 2);
        int hits = 0;
        for (int at = 8192; (at = bytes.AsSpan(at).IndexOf(pattern) is var i and >= 0 ? at + i : -1) >= 0; at++, hits++)
            new Random(12).NextBytes(bytes.AsSpan(at + 2, 200));
        Assert.True(hits > 0, "v1's extent record was not found in data.mdb");
        await File.WriteAllBytesAsync(MetadataPath, bytes);

        var check = await PlatterAsync("check", "--store", _server.StoreDirectory);
        AssertOneLineError(check, "damaged metadata");
        Assert.Contains("problem: ", check.Stdout);
        AssertOneLineError(await ServeAsync(), "metadata is damaged");

        _server.ExtraArguments = ["--salvage"];
        await _server.StartAsync();
        var list = await Clients.NbdInfoListJsonAsync(_server.NbdSocketPath);
        var exports = list.GetProperty("exports").EnumerateArray().Select(e => e.GetProperty("export-name").GetString()).ToList();
        Assert.Equal(["v2"], exports);
        await Clients.QemuIoAsync(NbdExport.NbdUri("v2", _server.NbdSocketPath), readOnly: true, $"read -P 0xcd 0 {4 * MiB}", $"read -P 0 {4 * MiB} {4 * MiB}");
        var delete = await _server.CliAsync("volume", "delete", "v2");
        Assert.NotEqual(0, delete.ExitCode);
        Assert.Contains("salvage", delete.Stderr);
        await _server.AssertLogContainsAsync("volume 'v1' is not served");
        Assert.Equal(0, await _server.StopAsync());
        Assert.Equal(bytes, await File.ReadAllBytesAsync(MetadataPath));
    }

    [Fact]
    public async Task A_data_file_without_its_metadata_is_refused_never_reinitialised()
    {
        await CreateStoreAsync();
        File.Delete(MetadataPath);
        AssertOneLineError(await ServeAsync(), "data.mdb) is missing");
        AssertOneLineError(await PlatterAsync("check", "--store", _server.StoreDirectory), "data.mdb) is missing");
        Assert.False(File.Exists(MetadataPath), "serve created new metadata over the old data file");
    }

    [Fact]
    public async Task Truncated_metadata_is_a_clear_error_not_sigbus()
    {
        await CreateStoreAsync();
        long length = new FileInfo(MetadataPath).Length;
        using (var f = new FileStream(MetadataPath, FileMode.Open)) f.SetLength(length / 2);
        AssertOneLineError(await ServeAsync(), "is truncated");
        AssertOneLineError(await PlatterAsync("check", "--store", _server.StoreDirectory), "is truncated");
    }
}
