using System.Text.Json;
using System.Text.RegularExpressions;

namespace Platter.Interop.Tests;

/// <summary>
/// `platter attach` output given to the real QEMU: the printed text is run through /bin/sh exactly as a user pastes
/// it, QEMU parses the options and opens the disks over NBD, and its monitor's qemu-io reads the pattern written
/// beforehand and writes through to the volume. Names need every kind of escaping (space, comma, quote, non-ASCII,
/// '&lt;&amp;&gt;'), and two Platter disks share one QEMU, which needs distinct node names, ids and TLS objects.
/// The libvirt XML is validated by the installed libvirt's own schema (virt-xml-validate).
/// </summary>
public sealed partial class AttachQemuTests(ITestOutputHelper output) : IDisposable
{
    // QEMU under TCG with stopped CPUs (-S) only opens the disks; the monitor commands take well under a second.
    private static readonly TimeSpan QemuTimeout = TimeSpan.FromSeconds(60);
    private const string FirstName = "vm 'one',1 <&>";
    private const string SecondName = "datä-2";

    private readonly TempDirectory _dir = new("plt-att");

    [Fact]
    public async Task Two_volumes_from_attach_blockdev_output_open_in_one_qemu()
    {
        await using var server = new PlatterServer();
        await RunAsync(server, async () =>
        {
            await server.StartAsync();
            await CreateWithPatternAsync(server, FirstName, 0x11);
            await CreateWithPatternAsync(server, SecondName, 0x22);
            var first = await AttachAsync(server, FirstName, "--qemu");
            var second = await AttachAsync(server, SecondName, "--qemu");
            var firstInfo = await AttachJsonAsync(server, FirstName);
            var secondInfo = await AttachJsonAsync(server, SecondName);
            Assert.NotEqual(firstInfo.GetProperty("nodeName").GetString(), secondInfo.GetProperty("nodeName").GetString());
            Assert.Contains("reconnect-delay=60", first);

            var monitor = await RunQemuAsync(first + " " + second,
            [
                $"qemu-io {firstInfo.GetProperty("nodeName").GetString()} \"read -P 0x11 0 1M\"",
                $"qemu-io {secondInfo.GetProperty("nodeName").GetString()} \"read -P 0x22 0 1M\"",
            ]);
            // The monitor's qemu-io may not write to a node a device holds (QEMU's permission system: the device
            // took it writable, which also shows the export opened read-write); the -drive test writes.
            AssertIo(monitor, reads: 2, writes: 0);
        });
    }

    [Fact]
    public async Task Two_volumes_from_attach_drive_output_open_in_one_qemu()
    {
        await using var server = new PlatterServer();
        await RunAsync(server, async () =>
        {
            await server.StartAsync();
            await CreateWithPatternAsync(server, FirstName, 0x31);
            await CreateWithPatternAsync(server, SecondName, 0x32);
            var first = DriveLine(await AttachAsync(server, FirstName));
            var second = DriveLine(await AttachAsync(server, SecondName));
            string firstId = (await AttachJsonAsync(server, FirstName)).GetProperty("deviceId").GetString()!;
            string secondId = (await AttachJsonAsync(server, SecondName)).GetProperty("deviceId").GetString()!;

            var monitor = await RunQemuAsync(first + " " + second,
            [
                $"qemu-io {firstId} \"read -P 0x31 0 1M\"",
                $"qemu-io {secondId} \"read -P 0x32 0 1M\"",
                $"qemu-io {secondId} \"write -P 0x5a 2M 64k\"",
                $"qemu-io {secondId} \"flush\"",
            ]);
            AssertIo(monitor, reads: 2, writes: 1);
            // QEMU's write reached the volume: another client reads it.
            await ReadPatternAsync(server, SecondName, 0x5a, 2 << 20, 64 << 10);
        });
    }

    [Fact]
    public async Task Tls_forms_open_in_qemu_for_two_volumes()
    {
        string serverCert = _dir.Combine("server-cert.pem");
        string serverKey = _dir.Combine("server-key.pem");
        string clientDir = Directory.CreateDirectory(_dir.Combine("qemu-pki")).FullName;
        TlsTests.WriteSelfSignedCertificate(serverCert, serverKey, Path.Combine(clientDir, "ca-cert.pem"));
        int port = Repository.FreeLoopbackPort();
        await using var server = new PlatterServer
        {
            Listen = $"127.0.0.1:{port}",
            ExtraArguments = ["--tls-cert", serverCert, "--tls-key", serverKey, "--tls-required"],
        };
        await RunAsync(server, async () =>
        {
            await server.StartAsync();
            await CreateVolumeAsync(server, FirstName);
            await CreateVolumeAsync(server, SecondName);
            string[] tcp = ["--tcp", $"127.0.0.1:{port}", "--tls-dir", clientDir];
            var first = await AttachAsync(server, FirstName, ["--qemu", .. tcp]);
            var second = await AttachAsync(server, SecondName, ["--qemu", .. tcp]);
            Assert.Contains("tls-creds=", first);
            string firstNode = (await AttachJsonAsync(server, FirstName)).GetProperty("nodeName").GetString()!;
            string secondNode = (await AttachJsonAsync(server, SecondName)).GetProperty("nodeName").GetString()!;

            // The server refuses clients without TLS (--tls-required), so a successful read proves QEMU used TLS.
            var monitor = await RunQemuAsync(first + " " + second,
            [
                $"qemu-io {firstNode} \"read -P 0 0 64k\"",
                $"qemu-io {secondNode} \"read -P 0 0 64k\"",
            ]);
            AssertIo(monitor, reads: 2, writes: 0);
        });
    }

    [Fact]
    public async Task Libvirt_xml_of_two_volumes_validates_against_the_installed_schema()
    {
        string validator = Tools.Require("virt-xml-validate", "libvirt-clients and libxml2-utils");
        await using var server = new PlatterServer();
        await RunAsync(server, async () =>
        {
            await server.StartAsync();
            await CreateVolumeAsync(server, FirstName);
            await CreateVolumeAsync(server, SecondName);
            string[] tcp = ["--libvirt", "--tcp", "127.0.0.1:10809"];
            var first = await AttachAsync(server, FirstName, tcp);
            var second = await AttachAsync(server, SecondName, [.. tcp, "--target", "vdc", "--tls"]);
            var firstTarget = Regex.Match(first, "<target dev='(vd[a-z]+)'").Groups[1].Value;
            Assert.NotEqual("vdc", firstTarget);
            Assert.Contains("<source protocol='nbd' name='datä-2' tls='yes'>", second);

            // The probe the CLI runs decides whether <reconnect> is printed; the XML must validate either way.
            string domain = _dir.Combine("domain.xml");
            await File.WriteAllTextAsync(domain,
                "<domain type='qemu'><name>attach-test</name><memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os>" +
                $"<devices>\n{first}\n{second}\n</devices></domain>\n");
            var valid = await ProcessRunner.RunAsync(validator, [domain, "domain"]);
            Assert.True(valid.ExitCode == 0, valid.Describe() + "\n" + await File.ReadAllTextAsync(domain));

            // And the same disk with <reconnect>: what this libvirt's schema says decides what attach printed.
            string withReconnect = _dir.Combine("reconnect.xml");
            await File.WriteAllTextAsync(withReconnect, (await File.ReadAllTextAsync(domain))
                .Replace("</source>", "  <reconnect delay='60'/>\n  </source>"));
            bool schemaAccepts = (await ProcessRunner.RunAsync(validator, [withReconnect, "domain"])).ExitCode == 0;
            Assert.Equal(schemaAccepts, first.Contains("<reconnect delay='60'/>"));
            output.WriteLine($"installed libvirt schema accepts NBD <reconnect>: {schemaAccepts}");
        });
    }

    [Fact]
    public async Task Vhost_user_output_connects_qemu_to_the_volume_and_its_libvirt_xml_validates()
    {
        string vhostDir = _dir.Combine("vu");
        await using var server = new PlatterServer { ExtraArguments = ["--vhost-user-dir", vhostDir] };
        await RunAsync(server, async () =>
        {
            await server.StartAsync();
            await CreateVolumeAsync(server, FirstName);
            var socket = Path.Combine(vhostDir, FirstName + ".sock");
            var waited = System.Diagnostics.Stopwatch.StartNew();
            while (!File.Exists(socket) && waited.Elapsed < TimeSpan.FromSeconds(30)) await Task.Delay(50);

            // QEMU realizes the device at start: it connects, negotiates and reads the config (capacity) over the socket.
            var qemuLines = await AttachAsync(server, FirstName, "--vhost-user", "--qemu", "--guest-memory", "256M");
            Assert.Contains("reconnect=1", qemuLines);
            var monitor = await RunQemuAsync(qemuLines.Replace('\n', ' '), ["info pci"]);
            Assert.Contains("1af4:1001", monitor); // a virtio-blk PCI device, from vhost-user-blk-pci
            await server.AssertLogContainsAsync($"vhost-user-blk {FirstName}: front-end connected");
            var info = await AttachAsync(server, FirstName, "--vhost-user", "--json");
            Assert.Contains(AttachTextEscapedSocket(socket), info);

            // The libvirt forms: the disk and the domain's shared memory, checked by this libvirt's own schema.
            string validator = Tools.Require("virt-xml-validate", "libvirt-clients and libxml2-utils");
            var all = await AttachAsync(server, FirstName, "--vhost-user");
            var disk = await AttachAsync(server, FirstName, "--vhost-user", "--libvirt");
            Assert.Contains("<disk type='vhostuser' device='disk'>", disk);
            int backingStart = all.IndexOf("<memoryBacking>", StringComparison.Ordinal);
            int backingEnd = all.IndexOf("</memoryBacking>", StringComparison.Ordinal) + "</memoryBacking>".Length;
            Assert.True(backingStart >= 0 && backingEnd > backingStart, all);
            string domain = _dir.Combine("vu-domain.xml");
            await File.WriteAllTextAsync(domain,
                "<domain type='qemu'><name>attach-vu-test</name><memory unit='MiB'>256</memory>" + all[backingStart..backingEnd] +
                "<os><type arch='x86_64'>hvm</type></os>" + $"<devices>\n{disk}\n</devices></domain>\n");
            var valid = await ProcessRunner.RunAsync(validator, [domain, "domain"]);
            Assert.True(valid.ExitCode == 0, valid.Describe() + "\n" + await File.ReadAllTextAsync(domain));

            // A server without --vhost-user-dir has no such socket: one clear line.
            await using var plain = new PlatterServer();
            await plain.StartAsync();
            await CreateVolumeAsync(plain, "x");
            var refused = await plain.CliAsync("attach", "x", "--vhost-user");
            Assert.Equal(1, refused.ExitCode);
            Assert.Contains("does not serve vhost-user-blk", refused.Stderr);
            Assert.Equal(0, await plain.StopAsync());
        });
    }

    // JSON escapes the quote and the non-ASCII characters of the name; compare with what System.Text.Json writes.
    private static string AttachTextEscapedSocket(string socket) =>
        JsonSerializer.Serialize(socket, new JsonSerializerOptions(JsonSerializerDefaults.Web));

    private async Task RunAsync(PlatterServer server, Func<Task> body)
    {
        try
        {
            await body();
            Assert.Equal(0, await server.StopAsync());
        }
        catch
        {
            output.WriteLine("--- server log ---");
            output.WriteLine(server.Log);
            throw;
        }
    }

    private static async Task CreateVolumeAsync(PlatterServer server, string name)
    {
        (await server.CliAsync("volume", "create", name, "--size", "64M")).EnsureSuccess($"create {name}");
    }

    private static async Task CreateWithPatternAsync(PlatterServer server, string name, int pattern)
    {
        await CreateVolumeAsync(server, name);
        // qemu-io's own option syntax, independent of what attach prints: the export's name with commas doubled.
        (await ProcessRunner.RunAsync(Tools.QemuIo,
        [
            "--image-opts", "-c", $"write -P 0x{pattern:x2} 0 1M",
            $"driver=nbd,server.type=unix,server.path={server.NbdSocketPath},export={name.Replace(",", ",,")}",
        ])).EnsureSuccess($"qemu-io write to {name}");
    }

    private static async Task ReadPatternAsync(PlatterServer server, string name, int pattern, long offset, int length)
    {
        var read = (await ProcessRunner.RunAsync(Tools.QemuIo,
        [
            "--image-opts", "-r", "-c", $"read -P 0x{pattern:x2} {offset} {length}",
            $"driver=nbd,server.type=unix,server.path={server.NbdSocketPath},export={name.Replace(",", ",,")}",
        ])).EnsureSuccess($"qemu-io read from {name}");
        Assert.DoesNotContain("verification failed", read.Stdout);
    }

    private static async Task<string> AttachAsync(PlatterServer server, string name, params string[] options)
    {
        var result = (await server.CliAsync(["attach", name, .. options])).EnsureSuccess($"platter attach {name}");
        return result.Stdout.Trim();
    }

    private static async Task<JsonElement> AttachJsonAsync(PlatterServer server, string name)
    {
        using var document = JsonDocument.Parse(await AttachAsync(server, name, "--json"));
        return document.RootElement.Clone();
    }

    // The -drive line of attach's default (all forms) output.
    private static string DriveLine(string attachOutput)
    {
        var lines = attachOutput.Split('\n');
        int header = Array.IndexOf(lines, "# QEMU with -drive:");
        Assert.True(header >= 0, attachOutput);
        return lines[header + 1];
    }

    /// <summary>
    /// Starts QEMU through /bin/sh with <paramref name="attachArguments"/> pasted into the command line (so the
    /// shell, not the test, undoes attach's quoting), runs monitor commands, quits, returns the monitor's output.
    /// </summary>
    private async Task<string> RunQemuAsync(string attachArguments, IEnumerable<string> monitorCommands)
    {
        string qemu = Tools.Require("qemu-system-x86_64", "qemu-system-x86");
        string script = $"exec {qemu} -nodefaults -no-user-config -display none -machine pc -accel tcg -S -monitor stdio {attachArguments}";
        output.WriteLine("$ " + script);
        var result = await ProcessRunner.RunAsync("/bin/sh", ["-c", script], QemuTimeout, standardInput: string.Join('\n', [.. monitorCommands, "quit", ""]));
        // The monitor echoes each typed character with terminal escapes; keep only the lines QEMU printed.
        var text = TerminalEscape().Replace(result.Stdout, "");
        output.WriteLine(text);
        Assert.True(result.ExitCode == 0, result.Describe());
        return text + result.Stderr;
    }

    private static void AssertIo(string monitor, int reads, int writes)
    {
        Assert.DoesNotContain("verification failed", monitor);
        Assert.DoesNotContain("Error", monitor);
        Assert.DoesNotContain("failed", monitor);
        Assert.Equal(reads, Regex.Matches(monitor, @"^read (\d+)/\1 bytes at offset", RegexOptions.Multiline).Count);
        Assert.Equal(writes, Regex.Matches(monitor, @"^wrote (\d+)/\1 bytes at offset", RegexOptions.Multiline).Count);
    }

    [GeneratedRegex(@"\x1b\[[0-9;]*[A-Za-z]|\(qemu\)[^\n]*")]
    private static partial Regex TerminalEscape();

    public void Dispose() => _dir.Dispose();
}
