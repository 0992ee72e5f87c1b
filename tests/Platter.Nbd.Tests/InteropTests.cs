using System.Text.Json;
using Xunit.Abstractions;

namespace Platter.Nbd.Tests;

/// <summary>Real clients the project did not write (libnbd's nbdinfo/nbdsh, QEMU's qemu-io) against the server in-process.</summary>
public class InteropTests(ITestOutputHelper output)
{
    // nbdsh runs "python3 -m nbd": the Debian interpreter has the libnbd bindings, a pyenv one would not.
    private static readonly IReadOnlyDictionary<string, string?> DebianPythonFirst =
        new Dictionary<string, string?> { ["PATH"] = "/usr/bin:/bin:" + Environment.GetEnvironmentVariable("PATH") };

    private async Task<(int Exit, string Out, string Err)> RunAsync(string exe, params string[] args)
    {
        var result = await ProcessRunner.RunAsync(exe, args, TimeSpan.FromSeconds(60), DebianPythonFirst);
        output.WriteLine(result.Describe());
        return (result.ExitCode, result.Stdout, result.Stderr);
    }

    [Fact]
    public async Task NbdInfo_Json_DescribesExport()
    {
        await using var server = await TestServer.StartDefaultAsync();
        var (exit, stdout, _) = await RunAsync("nbdinfo", "--json", server.Uri("disk"));
        Assert.Equal(0, exit);
        using var doc = JsonDocument.Parse(stdout);
        var export = doc.RootElement.GetProperty("exports")[0];
        Assert.Equal("disk", export.GetProperty("export-name").GetString());
        Assert.Equal(4L << 20, export.GetProperty("export-size").GetInt64());
        Assert.Equal("test disk", export.GetProperty("description").GetString());
        Assert.False(export.GetProperty("is_read_only").GetBoolean());
        Assert.True(export.GetProperty("can_flush").GetBoolean());
        Assert.True(export.GetProperty("can_fua").GetBoolean());
        Assert.True(export.GetProperty("can_trim").GetBoolean());
        Assert.True(export.GetProperty("can_zero").GetBoolean());
        Assert.True(export.GetProperty("can_fast_zero").GetBoolean());
        Assert.True(export.GetProperty("can_df").GetBoolean());
        Assert.True(export.GetProperty("can_multi_conn").GetBoolean());
        Assert.True(export.GetProperty("can_cache").GetBoolean());
        Assert.Equal(32 << 20, export.GetProperty("block_size_maximum").GetInt32());
        Assert.Contains("base:allocation", export.GetProperty("contexts").EnumerateArray().Select(e => e.GetString()));
        Assert.Equal("newstyle-fixed", doc.RootElement.GetProperty("protocol").GetString());

        var (roExit, roOut, _) = await RunAsync("nbdinfo", "--json", server.Uri("ro"));
        Assert.Equal(0, roExit);
        using var ro = JsonDocument.Parse(roOut);
        Assert.True(ro.RootElement.GetProperty("exports")[0].GetProperty("is_read_only").GetBoolean());
        Assert.Empty(server.Logger.Errors);
    }

    [Fact]
    public async Task A_client_that_sets_meta_contexts_then_goes_opens_the_export_once()
    {
        // qemu-io negotiates base:allocation (SET_META_CONTEXT) before NBD_OPT_GO, on the same export: the server keeps
        // the export the SET opened for the GO instead of closing and opening it again (on RBD a second open and lock).
        await using var server = await TestServer.StartDefaultAsync();
        var (exit, stdout, _) = await RunAsync("qemu-io", "-f", "raw", "-c", "map", server.Uri("disk"));
        Assert.Equal(0, exit);
        Assert.Contains("4 MiB", stdout);
        Assert.Equal(1, server.Exports.Opened);
        // Every open is closed again once the clients are gone, including those of negotiations without a GO
        // (nbdinfo --list asks for the contexts of every export, then ends the handshake).
        (exit, _, _) = await RunAsync("nbdinfo", "--list", "--json", "--content", $"nbd+unix://?socket={server.SocketPath}");
        Assert.Equal(0, exit);
        Assert.True(server.Exports.Opened > 1);
        int Disposed() => new[] { "aligned", "disk", "ro" }.Sum(name => Volatile.Read(ref server.Exports[name].Disposed));
        for (var deadline = DateTime.UtcNow.AddSeconds(10); Disposed() != server.Exports.Opened && DateTime.UtcNow < deadline;) await Task.Delay(20);
        Assert.Equal(server.Exports.Opened, Disposed());
        Assert.Empty(server.Logger.Errors);
    }

    [Fact]
    public async Task NbdInfo_List_ShowsAllExports()
    {
        await using var server = await TestServer.StartDefaultAsync();
        var (exit, stdout, _) = await RunAsync("nbdinfo", "--list", "--json", $"nbd+unix://?socket={server.SocketPath}");
        Assert.Equal(0, exit);
        using var doc = JsonDocument.Parse(stdout);
        var names = doc.RootElement.GetProperty("exports").EnumerateArray().Select(e => e.GetProperty("export-name").GetString()).Order();
        Assert.Equal(["aligned", "disk", "ro"], names);
    }

    [Fact]
    public async Task NbdInfo_Map_ShowsDataAndHoles()
    {
        await using var server = await TestServer.StartDefaultAsync();
        server.Exports["disk"].Fill(65536, new byte[8192].Select(_ => (byte)1).ToArray());
        var (exit, stdout, _) = await RunAsync("nbdinfo", "--map", "--json", server.Uri("disk"));
        Assert.Equal(0, exit);
        using var doc = JsonDocument.Parse(stdout);
        var map = doc.RootElement.EnumerateArray()
            .Select(e => (e.GetProperty("offset").GetInt64(), e.GetProperty("length").GetInt64(), e.GetProperty("type").GetInt32())).ToList();
        Assert.Equal([(0L, 65536L, 3), (65536L, 8192L, 0), (65536L + 8192, (4L << 20) - 65536 - 8192, 3)], map);
    }

    [Fact]
    public async Task QemuIo_WritePattern_ReadPatternBack()
    {
        await using var server = await TestServer.StartDefaultAsync();
        string uri = server.Uri("disk");
        var write = await RunAsync("qemu-io", "-f", "raw", "-c", "write -P 0xab 4096 1M", "-c", "write -z 2M 64k", "-c", "discard 3M 64k", "-c", "flush", uri);
        Assert.Equal(0, write.Exit);
        Assert.Contains("wrote 1048576/1048576 bytes", write.Out);
        var read = await RunAsync("qemu-io", "-f", "raw", "-c", "read -P 0xab 4096 1M", "-c", "read -P 0 0 4096", "-c", "read -P 0 2M 64k", uri);
        Assert.Equal(0, read.Exit);
        Assert.DoesNotContain("verification failed", read.Out + read.Err);
        Assert.Contains("read 1048576/1048576 bytes", read.Out);
        // The bytes really are in the export, not just echoed back by some client cache.
        byte[] check = new byte[4096];
        await server.Exports["disk"].ReadAsync(4096, check, default);
        Assert.All(check, b => Assert.Equal(0xab, b));
        var bad = await RunAsync("qemu-io", "-f", "raw", "-c", "read -P 0xcd 4096 4096", uri);
        Assert.Contains("Pattern verification failed", bad.Out + bad.Err);
        Assert.Empty(server.Logger.Errors);
    }

    [Fact]
    public async Task NbdSh_NegativeCases()
    {
        await using var server = await TestServer.StartDefaultAsync();
        string script = """
import errno
h.set_strict_mode(0)
def expect(errno_value, f):
    try:
        f()
    except nbd.Error as e:
        assert e.errno in (errno_value, errno.errorcode[errno_value]), (e.errno, e)
        return
    raise AssertionError("command succeeded")
size = h.get_size()
expect(errno.EINVAL, lambda: h.pread(512, size - 256))
expect(errno.EINVAL, lambda: h.pread(512, size * 4))
expect(errno.ENOSPC, lambda: h.pwrite(b"x" * 512, size - 256))
expect(errno.EINVAL, lambda: h.trim(4096, size))
h.pwrite(b"y" * 512, 0)
assert h.pread(512, 0) == b"y" * 512
print("ok")
""";
        var rw = await RunAsync("nbdsh", "-u", server.Uri("disk"), "-c", script);
        Assert.Equal(0, rw.Exit);
        Assert.Contains("ok", rw.Out);

        string roScript = """
import errno
h.set_strict_mode(0)
for f in (lambda: h.pwrite(b"x" * 512, 0), lambda: h.trim(4096, 0), lambda: h.zero(4096, 0)):
    try:
        f()
        raise AssertionError("write on read-only export succeeded")
    except nbd.Error as e:
        assert e.errno in (errno.EPERM, "EPERM"), e
assert h.is_read_only()
assert h.pread(4096, 0) == bytes(4096)
print("ok")
""";
        var ro = await RunAsync("nbdsh", "-u", server.Uri("ro"), "-c", roScript);
        Assert.Equal(0, ro.Exit);
        Assert.Contains("ok", ro.Out);

        var missing = await RunAsync("nbdsh", "-u", server.Uri("missing"), "-c", "print('connected')");
        // Refused by the server (NBD_REP_ERR_UNKNOWN, which libnbd's handshake reports as ENOENT), not failed some other way.
        Assert.Equal(1, missing.Exit);
        Assert.Contains("handshake: server has no export named 'missing': No such file or directory", missing.Err);
        Assert.DoesNotContain("connected", missing.Out);
        Assert.Empty(server.Logger.Errors);
    }

    [Fact]
    public async Task NbdCopy_RoundTripsThroughServer()
    {
        await using var server = await TestServer.StartDefaultAsync();
        string dir = server.Directory;
        string src = Path.Combine(dir, "src.img"), dst = Path.Combine(dir, "dst.img");
        byte[] data = new byte[4 << 20];
        new Random(42).NextBytes(data.AsSpan(0, 1 << 20));
        new Random(43).NextBytes(data.AsSpan(3 << 20, 4096));
        await File.WriteAllBytesAsync(src, data);
        Assert.Equal(0, (await RunAsync("nbdcopy", src, server.Uri("disk"))).Exit);
        Assert.Equal(0, (await RunAsync("nbdcopy", server.Uri("disk"), dst)).Exit);
        Assert.Equal(data, await File.ReadAllBytesAsync(dst));
        Assert.Empty(server.Logger.Errors);
    }
}
