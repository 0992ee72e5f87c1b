using System.Buffers.Binary;
using System.Diagnostics;
using System.Text;

namespace Platter.Interop.Tests;

/// <summary>
/// scripts/build-deb.sh builds the package; it is unpacked with `dpkg -x` into an empty directory (a clean root) and
/// the binary from there serves a volume that qemu-io writes and reads. The binary must be a Native AOT executable:
/// compiled code, not a .NET host that looks for a runtime (a framework-dependent apphost) or unpacks one (a
/// single-file bundle). Publishing with Native AOT takes minutes; PLATTER_DEB_BINARY=FILE packages an already
/// published binary instead (scripts/test.sh publishes once and passes it).
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
        // Every .NET host (a framework-dependent apphost, a self-contained single-file bundle) carries the bundle
        // signature, where the build writes or looks for the bundled assemblies; a Native AOT executable has none, and
        // holds the compiled managed code in an ELF section of its own.
        var bytes = await File.ReadAllBytesAsync(platter);
        Assert.True(bytes.AsSpan().StartsWith("\u007fELF"u8), "the packaged binary is not an ELF executable");
        Assert.False(bytes.AsSpan().IndexOf(BundleSignature) >= 0, "the packaged binary is a .NET apphost or single-file bundle, not Native AOT");
        Assert.True(ElfSectionNames(bytes).Contains(ManagedCodeSection), $"the packaged binary has no {ManagedCodeSection} section: not Native AOT");
        foreach (var unit in new[] { "platter.service", "platter-nbd.socket", "platter-api.socket" })
            Assert.Equal(await File.ReadAllTextAsync(Path.Combine(repo, "packaging", "systemd", unit)),
                await File.ReadAllTextAsync(Path.Combine(root, "lib", "systemd", "system", unit)));
        var help = await File.ReadAllTextAsync(Path.Combine(root, "usr", "share", "doc", "platter", "help.txt"));
        Assert.Contains("platter serve --help", help);
        Assert.Contains("--reconnect-delay", help);

        // The packaged binary, run from the clean root with no .NET in its environment.
        var env = new Dictionary<string, string?> { ["DOTNET_ROOT"] = "/nonexistent", ["PLATTER_API_SOCKET"] = null, ["PLATTER_STORE"] = null };
        (await ProcessRunner.RunAsync(platter, ["--version"], environment: env)).EnsureSuccess("platter --version");
        var usage = (await ProcessRunner.RunAsync(platter, ["--help"], environment: env)).EnsureSuccess("platter --help").Stdout;
        Assert.Contains("serve", usage);
        Assert.Contains("attach", usage);
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

    // The 32 bytes every .NET apphost and single-file host carries to find its bundle (the SHA-256 of ".net core bundle").
    private static ReadOnlySpan<byte> BundleSignature =>
    [
        0x8b, 0x12, 0x02, 0xb9, 0x6a, 0x61, 0x20, 0x38, 0x72, 0x7b, 0x93, 0x02, 0x14, 0xd7, 0xa0, 0x32,
        0x13, 0xf5, 0xb9, 0xe6, 0xef, 0xae, 0x33, 0x18, 0xee, 0x3b, 0x2d, 0xce, 0x24, 0xb3, 0x6a, 0xae,
    ];

    // Where the Native AOT compiler puts compiled managed code in a Linux executable.
    private const string ManagedCodeSection = "__managedcode";

    // The section names of a little-endian ELF64 file (from its section header table and the names' string table).
    private static HashSet<string> ElfSectionNames(byte[] elf)
    {
        var span = elf.AsSpan();
        Assert.True(span[4] == 2 && span[5] == 1, "not a little-endian 64-bit ELF file");
        long sectionHeaders = BinaryPrimitives.ReadInt64LittleEndian(span[0x28..]);
        int entrySize = BinaryPrimitives.ReadUInt16LittleEndian(span[0x3A..]);
        int count = BinaryPrimitives.ReadUInt16LittleEndian(span[0x3C..]);
        int namesIndex = BinaryPrimitives.ReadUInt16LittleEndian(span[0x3E..]);
        long namesOffset = BinaryPrimitives.ReadInt64LittleEndian(Header(span, namesIndex)[0x18..]);
        var names = new HashSet<string>(StringComparer.Ordinal);
        for (int i = 0; i < count; i++)
        {
            var name = span[checked((int)(namesOffset + BinaryPrimitives.ReadUInt32LittleEndian(Header(span, i))))..];
            names.Add(Encoding.ASCII.GetString(name[..name.IndexOf((byte)0)]));
        }
        return names;

        ReadOnlySpan<byte> Header(ReadOnlySpan<byte> file, int i) => file.Slice(checked((int)(sectionHeaders + (long)i * entrySize)), entrySize);
    }

    public void Dispose() => _dir.Dispose();
}
