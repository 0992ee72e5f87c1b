using System.Diagnostics;
using System.Text;

namespace Platter.Interop.Tests;

/// <summary>
/// scripts/build-deb.sh builds the package; it is unpacked with `dpkg -x` into an empty directory (a clean root) and
/// the binary from there serves a volume that qemu-io writes and reads. The binary must be self-contained: the package
/// has no .NET runtime in it and the binary must not look for one (a framework-dependent apphost loads libhostfxr).
/// Publishing with Native AOT takes minutes; PLATTER_DEB_BINARY=FILE packages an already published binary instead.
/// </summary>
public sealed class DebPackageTests(ITestOutputHelper output) : IDisposable
{
    private static readonly TimeSpan BuildTimeout = TimeSpan.FromMinutes(40);
    private readonly TempDirectory _dir = new("plt-deb");

    [Fact]
    public async Task The_deb_installs_into_a_clean_root_and_its_binary_serves()
    {
        string repo = Repository.Root;
        string[] args = [Path.Combine(repo, "scripts", "build-deb.sh"), "--out", _dir.Combine("out")];
        if (Environment.GetEnvironmentVariable("PLATTER_DEB_BINARY") is { Length: > 0 } prebuilt) args = [.. args, "--binary", prebuilt];
        var build = (await ProcessRunner.RunAsync("bash", args, BuildTimeout)).EnsureSuccess("build-deb.sh");
        string deb = build.Stdout.Trim().Split('\n')[^1];
        Assert.EndsWith("_amd64.deb", deb);

        string root = Directory.CreateDirectory(_dir.Combine("root")).FullName;
        (await ProcessRunner.RunAsync("dpkg", ["-x", deb, root])).EnsureSuccess("dpkg -x");
        var control = (await ProcessRunner.RunAsync("dpkg-deb", ["-f", deb, "Package", "Depends"])).EnsureSuccess("dpkg-deb -f").Stdout;
        Assert.Contains("Package: platter", control);
        Assert.Contains("liblmdb0", control);
        Assert.Equal("/etc/platter/platter.conf", (await ProcessRunner.RunAsync("sh", ["-c", $"dpkg-deb --ctrl-tarfile '{deb}' | tar -xO ./conffiles"])).Stdout.Trim());

        string platter = Path.Combine(root, "usr", "bin", "platter");
        Assert.Equal(["platter"], Directory.GetFiles(Path.Combine(root, "usr", "bin")).Select(Path.GetFileName));
        // A framework-dependent apphost is a small launcher that finds a .NET runtime on the machine; the packaged binary
        // must carry its runtime inside (a single-file bundle holds System.Private.CoreLib, an AOT binary is compiled).
        var bytes = await File.ReadAllBytesAsync(platter);
        Assert.True(bytes.Length > 8 << 20 && Contains(bytes, "System.Private.CoreLib"), "the packaged binary is a framework-dependent apphost, not a self-contained one");
        foreach (var unit in new[] { "platter.service", "platter-nbd.socket", "platter-api.socket" })
            Assert.Equal(await File.ReadAllTextAsync(Path.Combine(repo, "packaging", "systemd", unit)),
                await File.ReadAllTextAsync(Path.Combine(root, "lib", "systemd", "system", unit)));
        var help = await File.ReadAllTextAsync(Path.Combine(root, "usr", "share", "doc", "platter", "help.txt"));
        Assert.Contains("platter serve --help", help);
        Assert.Contains("--reconnect-delay", help);

        // The packaged binary, run from the clean root with no .NET in its environment.
        var env = new Dictionary<string, string?> { ["DOTNET_ROOT"] = "/nonexistent", ["PLATTER_API_SOCKET"] = null, ["PLATTER_STORE"] = null };
        (await ProcessRunner.RunAsync(platter, ["--version"], environment: env)).EnsureSuccess("platter --version");
        string store = _dir.Combine("store"), nbd = _dir.Combine("nbd.sock"), api = _dir.Combine("api.sock");
        var psi = ProcessRunner.StartInfo(platter, ["serve", "--store", store, "--listen", "none", "--socket", nbd, "--api-socket", api], env);
        using var server = new Process { StartInfo = psi };
        var log = new StringBuilder();
        server.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (log) log.AppendLine(e.Data); };
        server.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (log) log.AppendLine(e.Data); };
        server.Start();
        server.BeginOutputReadLine();
        server.BeginErrorReadLine();
        try
        {
            var ready = Stopwatch.StartNew();
            while (!(ProcessRunner.CanConnect(nbd) && ProcessRunner.CanConnect(api)))
            {
                Assert.False(server.HasExited, "the packaged platter serve exited:\n" + log);
                Assert.True(ready.Elapsed < TimeSpan.FromSeconds(60), "the packaged platter serve did not listen:\n" + log);
                await Task.Delay(50);
            }
            (await ProcessRunner.RunAsync(platter, ["volume", "create", "deb1", "--size", "16M", "--api-socket", api], environment: env)).EnsureSuccess("volume create");
            Assert.Contains("deb1", (await ProcessRunner.RunAsync(platter, ["volume", "list", "--api-socket", api], environment: env)).EnsureSuccess("volume list").Stdout);
            var io = (await ProcessRunner.RunAsync(Tools.QemuIo, ["-f", "raw", "-c", "write -P 0x3c 0 1M", "-c", "read -P 0x3c 0 1M", $"nbd+unix:///deb1?socket={nbd}"]))
                .EnsureSuccess("qemu-io through the packaged server");
            Assert.DoesNotContain("verification failed", io.Stdout);
            ProcessRunner.Terminate(server);
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
            await server.WaitForExitAsync(cts.Token);
            Assert.True(server.ExitCode == 0, $"exit {server.ExitCode}\n{log}");
        }
        finally
        {
            ProcessRunner.KillTree(server);
            output.WriteLine(log.ToString());
        }
    }

    private static bool Contains(byte[] haystack, string needle) =>
        haystack.AsSpan().IndexOf(Encoding.ASCII.GetBytes(needle)) >= 0;

    public void Dispose() => _dir.Dispose();
}
