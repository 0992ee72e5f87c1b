using Xunit;
using Xunit.Abstractions;

namespace Platter.Guest.Tests;

/// <summary>
/// A real Linux guest whose only disk is an NBD export of the server under test. Derive once per
/// server: <see cref="PlatterGuestDiskTests"/> is the test CI runs; <see cref="QemuNbdGuestDiskTests"/>
/// runs the same boots against qemu-nbd only when asked (PLATTER_GUEST_QEMU_NBD=1), to tell a guest
/// or test problem from a Platter problem without doubling every CI run.
/// </summary>
public abstract class GuestDiskTests : IAsyncLifetime
{
    /// <summary>Volume size: large enough for an ext4 journal and the test files, small enough to mkfs quickly under TCG.</summary>
    protected const long VolumeSizeBytes = 512L * 1024 * 1024;

    private protected readonly ITestOutputHelper _output;
    private protected readonly TempDirectory _work = new("platter-guest");

    protected GuestDiskTests(ITestOutputHelper output)
    {
        _output = output;
    }

    /// <summary>Wall-time bound of one boot (a hang detector): <see cref="GuestVm.BootTimeout"/> unless the target is slower by nature.</summary>
    protected virtual TimeSpan BootTimeout => GuestVm.BootTimeout;

    /// <summary>Creates the server under test; its files belong in <paramref name="workDirectory"/>.</summary>
    protected abstract INbdTarget CreateTarget(string workDirectory, long sizeBytes);

    public Task InitializeAsync() => Task.CompletedTask;

    public Task DisposeAsync()
    {
        _work.Dispose();
        return Task.CompletedTask;
    }

    /// <summary>The guest image, the accelerator and this class's target, started (see <see cref="GuestSession{TTarget}"/>).</summary>
    private protected Task<GuestSession<INbdTarget>> StartSessionAsync() =>
        GuestSession<INbdTarget>.StartAsync(CreateTarget(_work.Path, VolumeSizeBytes), _work.Path, _output);

    /// <summary>
    /// Three boots on one volume: write (raw pattern, mkfs.ext4, files); after a SIGTERM restart of the
    /// server, verify; after a SIGKILL of the server, verify again. Each derived class runs it from its own
    /// test method so that each can decide when it runs.
    /// </summary>
    protected async Task RunGuestFileSystemSurvivesRestartsAsync()
    {
        await using var session = await StartSessionAsync();
        var (target, ct) = (session.Target, session.Token);

        // Boot 1: raw pattern, mkfs.ext4, files, clean fsck.
        await session.BootAndAssertAsync(GuestMode.Write, "first boot (write)", timeout: BootTimeout);

        // A normal restart of the server between guest runs.
        await target.StopAsync(graceful: true, ct);
        await target.StartAsync(ct);
        await session.BootAndAssertAsync(GuestMode.Verify, "second boot after graceful server restart", expectedMarkers: 0, timeout: BootTimeout);

        // Killed server: only what the guest flushed may be relied on, and the guest flushed everything
        // (sync, umount) before powering off, so all of it, including boot 2's marker, must be there.
        await target.StopAsync(graceful: false, ct);
        await target.StartAsync(ct);
        await session.BootAndAssertAsync(GuestMode.Verify, "third boot after server SIGKILL", expectedMarkers: 1, timeout: BootTimeout);

        await target.StopAsync(graceful: true, ct);
    }
}

/// <summary>The guest test on a Platter volume: what CI runs.</summary>
public sealed partial class PlatterGuestDiskTests(ITestOutputHelper output) : GuestDiskTests(output)
{
    // Rounds of write/fsync/read-back the guest must complete after each restart: the I/O went on over a new connection.
    internal const int RoundsAfterRestart = 3;
    // The guest prints a line per round (well under a second each under TCG on a quiet machine, seconds on a loaded
    // one) and the kernel prints while it boots: this long without a new line on the serial console is a hang. It is
    // measured from the last new line, not from the boot, so a slow boot on a loaded machine is not taken for one.
    internal static readonly TimeSpan ProgressTimeout = TimeSpan.FromMinutes(3);

    protected override INbdTarget CreateTarget(string workDirectory, long sizeBytes) => new PlatterTarget(workDirectory, sizeBytes);

    [Fact]
    public Task Guest_file_system_on_a_platter_volume_survives_guest_shutdown_and_server_restarts() =>
        RunGuestFileSystemSurvivesRestartsAsync();

    /// <summary>
    /// The guest's QEMU gets its disk from `platter attach --qemu` (with its reconnect-delay) and does synchronous
    /// direct I/O in rounds while the server is stopped with SIGTERM and started again, then killed with SIGKILL and
    /// started again. The guest must see no I/O error, keep going after each restart, and read back every round's data.
    /// The server is the Native AOT binary the .deb ships when the run has one (CI: scripts/test.sh sets
    /// PLATTER_DEB_BINARY; <see cref="PlatterServer.AotBinary"/>), since that is the server users restart; otherwise the
    /// JIT build. The other guest tests run the JIT build, so both builds serve a guest in every CI run.
    /// </summary>
    [Fact]
    public async Task Guest_io_goes_on_without_errors_while_the_server_restarts_and_is_killed()
    {
        await using var session = await GuestSession<PlatterTarget>.StartAsync(
            new PlatterTarget(_work.Path, VolumeSizeBytes) { Binary = PlatterServer.AotBinary }, _work.Path, _output);
        var (target, ct) = (session.Target, session.Token);
        AssertRunsTheChosenBinary(target);
        _output.WriteLine($"server: {target.Binary ?? "platter.dll (JIT build)"}");

        var attach = await target.CliAsync("attach", target.ExportName, "--qemu", "--json");
        Assert.True(attach.ExitCode == 0, attach.Describe());
        List<string> diskArguments;
        using (var json = System.Text.Json.JsonDocument.Parse(attach.Stdout))
            diskArguments = [.. json.RootElement.GetProperty("qemuBlockdevArgs").EnumerateArray().Select(e => e.GetString()!)];
        Assert.Contains(diskArguments, a => a.Contains(",reconnect-delay="));
        _output.WriteLine("guest disk: " + string.Join(' ', diskArguments));

        var serial = Path.Combine(_work.Path, "serial-io.log");
        // A failure below cancels the boot (QEMU is killed) rather than leaving the guest to its own 300 s limit.
        using var bootCts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var booted = System.Diagnostics.Stopwatch.StartNew();
        var boot = GuestVm.BootAsync(session.Image, target, GuestMode.Io, _work.Path, session.Accel, timeout: TimeSpan.FromMinutes(12),
            cancellationToken: bootCts.Token, diskArguments: diskArguments, serialPath: serial);
        try
        {
            int rounds = await WaitForRoundsAsync(serial, boot, RoundsAfterRestart, target, ct);
            _output.WriteLine($"round {rounds} reached {booted.Elapsed.TotalSeconds:F1} s after QEMU started");
            foreach (bool graceful in new[] { true, false })
            {
                var stopped = System.Diagnostics.Stopwatch.StartNew();
                await target.StopAsync(graceful, ct);
                await target.StartAsync(ct);
                AssertRunsTheChosenBinary(target);
                int atRestart = CurrentRound(serial);
                _output.WriteLine($"{(graceful ? "SIGTERM" : "SIGKILL")} restart at guest round {rounds}..{atRestart}, server down and up in {stopped.Elapsed.TotalSeconds:F1} s");
                rounds = await WaitForRoundsAsync(serial, boot, atRestart + RoundsAfterRestart, target, ct);
            }
            // Tell the guest to stop: 'S' bytes in its control block, written through the same server.
            var stop = await ProcessRunner.RunAsync("qemu-io",
                ["-f", "raw", "-c", "write -P 0x53 32M 4k", "-c", "flush", NbdExport.NbdUri(target.ExportName, target.SocketPath)],
                TimeSpan.FromSeconds(60), cancellationToken: ct);
            Assert.True(stop.ExitCode == 0, "qemu-io writing the stop block failed:\n" + stop.Describe());
        }
        catch
        {
            await bootCts.CancelAsync();
            try { await boot; } catch (OperationCanceledException) { }
            throw;
        }
        var result = await boot;
        _output.WriteLine($"io guest: {(result.Passed ? "PASS" : "FAIL")} after {CurrentRound(serial)} rounds, wall {result.Elapsed.TotalSeconds:F1} s");
        Assert.True(result.Passed, $"the guest did not report PASS:\n{result.Describe()}\n--- platter log ---\n{target.Log}");
        await target.StopAsync(graceful: true, ct);
    }

    // The server process is the executable asked for (the AOT binary itself, not a dotnet host running platter.dll).
    private static void AssertRunsTheChosenBinary(PlatterTarget target)
    {
        string exe = new FileInfo($"/proc/{target.ProcessId}/exe").ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? "?";
        if (target.Binary is { } binary) Assert.Equal(new FileInfo(binary).ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? Path.GetFullPath(binary), exe);
        else Assert.Equal("dotnet", Path.GetFileName(exe));
    }

    internal static string ReadSerial(string serialPath)
    {
        if (!File.Exists(serialPath)) return "";
        using var stream = new FileStream(serialPath, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        return new StreamReader(stream).ReadToEnd();
    }

    internal static int CurrentRound(string serialPath) => RoundOf(ReadSerial(serialPath));

    private static int RoundOf(string serial)
    {
        var matches = RoundLine().Matches(serial);
        return matches.Count == 0 ? 0 : int.Parse(matches[^1].Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
    }

    // Waits until the guest has done `rounds` rounds; fails when the guest powers off first or prints nothing new for
    // ProgressTimeout, with what the guest and the server were doing: the end of the serial console (booting, preparing,
    // or in which round), the state of every server thread, and the server's log.
    internal static async Task<int> WaitForRoundsAsync(string serialPath, Task<GuestBoot> boot, int rounds, PlatterTarget target, CancellationToken ct)
    {
        var quiet = System.Diagnostics.Stopwatch.StartNew();
        int seen = -1;
        while (true)
        {
            string serial = ReadSerial(serialPath);
            int current = RoundOf(serial);
            if (current >= rounds) return current;
            if (serial.Length != seen)
            {
                seen = serial.Length;
                quiet.Restart();
            }
            if (boot.IsCompleted)
                Assert.Fail($"the guest stopped at round {current} before reaching {rounds}:\n{(await boot).Describe()}\n--- platter log ---\n{target.Log}");
            if (quiet.Elapsed > ProgressTimeout)
            {
                string tail = string.Join('\n', serial.Split('\n').TakeLast(30));
                Assert.Fail($"the guest printed nothing for {ProgressTimeout} at round {current} (waiting for {rounds})\n" +
                            $"--- serial console (last 30 lines) ---\n{tail}\n--- platter threads ---\n{target.DescribeThreads()}\n" +
                            $"--- platter log ---\n{target.Log}");
            }
            await Task.Delay(200, ct);
        }
    }

    [System.Text.RegularExpressions.GeneratedRegex(@"^PLATTER-GUEST: io round (\d+)\s*$", System.Text.RegularExpressions.RegexOptions.Multiline)]
    private static partial System.Text.RegularExpressions.Regex RoundLine();
}

/// <summary>
/// The same test against qemu-nbd serving a raw file. Skipped unless PLATTER_GUEST_QEMU_NBD=1: it proves
/// nothing about Platter and would double the guest test's CI time, but when the Platter test fails,
/// <c>PLATTER_GUEST_QEMU_NBD=1 dotnet test tests/Platter.Guest.Tests</c> shows whether the same boots pass
/// on a reference server on the same machine.
/// </summary>
public sealed class QemuNbdGuestDiskTests(ITestOutputHelper output) : GuestDiskTests(output)
{
    protected override INbdTarget CreateTarget(string workDirectory, long sizeBytes) => new QemuNbdTarget(workDirectory, sizeBytes);

    [QemuNbdReferenceFact]
    public Task Guest_file_system_on_qemu_nbd_survives_guest_shutdown_and_server_restarts() =>
        RunGuestFileSystemSurvivesRestartsAsync();
}

/// <summary>A fact that runs only when PLATTER_GUEST_QEMU_NBD=1 (see <see cref="QemuNbdGuestDiskTests"/>).</summary>
public sealed class QemuNbdReferenceFactAttribute : FactAttribute
{
    /// <summary>The environment variable that enables the reference run.</summary>
    public const string Variable = "PLATTER_GUEST_QEMU_NBD";

    public QemuNbdReferenceFactAttribute()
    {
        if (Environment.GetEnvironmentVariable(Variable) != "1")
            Skip = $"reference run against qemu-nbd; set {Variable}=1 to run it";
    }
}
