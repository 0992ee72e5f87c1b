using System.Globalization;
using System.Text.RegularExpressions;

namespace Platter.Guest.Tests;

/// <summary>What the guest's /init does on this boot (see tests/guest/guest-init.sh).</summary>
public enum GuestMode
{
    /// <summary>No disk I/O; reports PASS at once. Used to find out whether KVM can run the kernel.</summary>
    Probe,

    /// <summary>First boot: raw pattern, mkfs.ext4, files, sync, umount, e2fsck -fn.</summary>
    Write,

    /// <summary>Later boot: files intact, earlier boots' markers present, new marker, e2fsck -fn.</summary>
    Verify,

    /// <summary>Write/fsync/read-back rounds on the raw disk until the host fills the control block at 32 MiB with 'S'.</summary>
    Io,
}

/// <summary>The outcome of one guest boot.</summary>
public sealed record GuestBoot(bool Passed, string? FailReason, bool TimedOut, int QemuExitCode, TimeSpan Elapsed,
    double? GuestUptimeSeconds, string SerialLog, string QemuStderr)
{
    /// <summary>A failure description with the end of the serial console, for assertion messages.</summary>
    public string Describe()
    {
        var tail = string.Join('\n', SerialLog.Split('\n').TakeLast(40));
        return $"passed={Passed} fail='{FailReason}' timedOut={TimedOut} qemuExit={QemuExitCode} elapsed={Elapsed.TotalSeconds:F1}s\n" +
               $"--- qemu stderr ---\n{QemuStderr}\n--- serial console (last 40 lines) ---\n{tail}";
    }
}

/// <summary>Boots the test guest under qemu-system-x86_64 with its virtio disk on an NBD unix socket.</summary>
public static partial class GuestVm
{
    /// <summary>
    /// Wall-time bound of one boot. A TCG boot of this guest takes about 12 s on the build machines; the
    /// bound is loose because the machines are shared and noisy. It is a hang detector, not a perf check.
    /// </summary>
    public static readonly TimeSpan BootTimeout = TimeSpan.FromSeconds(150);

    // A KVM boot reaches init in well under a second; a broken /dev/kvm either aborts at once or hangs.
    private static readonly TimeSpan KvmProbeTimeout = TimeSpan.FromSeconds(15);

    private static readonly SemaphoreSlim AccelLock = new(1, 1);
    private static string? _accel;

    /// <summary>Boots the guest once and waits for it to power off (or kills it at <see cref="BootTimeout"/>).</summary>
    /// <remarks>
    /// <c>diskArguments</c> are QEMU arguments that attach the disk (e.g. `platter attach --qemu`'s), by default a plain
    /// -blockdev of the target; <c>serialPath</c> is where the serial console goes, for callers that watch the guest's progress.
    /// </remarks>
    public static async Task<GuestBoot> BootAsync(GuestImage image, INbdTarget? disk, GuestMode mode, string workDirectory,
        string accel, int? expectedMarkers = null, TimeSpan? timeout = null, CancellationToken cancellationToken = default,
        IReadOnlyList<string>? diskArguments = null, string? serialPath = null)
    {
        serialPath ??= Path.Combine(workDirectory, $"serial-{mode.ToString().ToLowerInvariant()}-{Guid.NewGuid():N}.log");
        var cmdline = $"console=ttyS0 panic=-1 platter.mode={mode.ToString().ToLowerInvariant()}";
        if (expectedMarkers is int n) cmdline += $" platter.markers={n}";

        var args = new List<string>
        {
            "-nodefaults", "-no-user-config", "-display", "none",
            // A guest panic (panic=-1 reboots at once) must end the run rather than loop.
            "-no-reboot",
            "-machine", "pc", "-m", "512M", "-smp", "1",
            "-kernel", image.KernelPath, "-initrd", image.InitrdPath, "-append", cmdline,
            "-serial", "file:" + serialPath,
        };
        args.AddRange(accel == "kvm" ? ["-accel", "kvm", "-cpu", "host"] : ["-accel", "tcg"]);
        if (diskArguments is not null)
        {
            args.AddRange(diskArguments);
        }
        else if (disk is not null)
        {
            // The dotted -blockdev syntax splits on commas; refuse paths that would be misparsed.
            if (disk.SocketPath.Contains(',') || disk.ExportName.Contains(','))
                throw new ArgumentException($"socket path or export name contains a comma: {disk.SocketPath} {disk.ExportName}");
            args.AddRange([
                "-blockdev", $"driver=nbd,node-name=disk0,server.type=unix,server.path={disk.SocketPath},export={disk.ExportName}",
                "-device", "virtio-blk-pci,drive=disk0",
            ]);
        }

        var result = await ProcessRunner.RunAsync("qemu-system-x86_64", args, timeout ?? BootTimeout, failOnTimeout: false, cancellationToken: cancellationToken);
        var serial = File.Exists(serialPath) ? await File.ReadAllTextAsync(serialPath, cancellationToken) : "";
        var fail = FailLine().Match(serial);
        var passed = !result.TimedOut && result.ExitCode == 0 && !fail.Success && PassLine().IsMatch(serial);
        double? uptime = null;
        var up = UptimeLine().Match(serial);
        if (up.Success) uptime = double.Parse(up.Groups[1].Value, CultureInfo.InvariantCulture);
        return new GuestBoot(passed, fail.Success ? fail.Groups[1].Value.Trim() : null, result.TimedOut, result.ExitCode,
            result.Elapsed, uptime, serial, result.Stderr);
    }

    /// <summary>
    /// The accelerator to boot with: PLATTER_GUEST_ACCEL=tcg|kvm forces one; otherwise KVM only when a
    /// probe boot under KVM demonstrably reaches the guest's init and reports PASS, else TCG. The build
    /// machines expose a /dev/kvm that cannot run a stock Debian kernel, so the probe is what decides.
    /// </summary>
    public static async Task<string> ChooseAccelAsync(GuestImage image, string workDirectory, CancellationToken cancellationToken)
    {
        var forced = Environment.GetEnvironmentVariable("PLATTER_GUEST_ACCEL");
        if (forced is "tcg" or "kvm") return forced;
        await AccelLock.WaitAsync(cancellationToken);
        try
        {
            if (_accel is not null) return _accel;
            _accel = "tcg";
            if (KvmDeviceUsable())
            {
                var probe = await BootAsync(image, null, GuestMode.Probe, workDirectory, "kvm", timeout: KvmProbeTimeout,
                    cancellationToken: cancellationToken);
                if (probe.Passed) _accel = "kvm";
            }
            return _accel;
        }
        finally
        {
            AccelLock.Release();
        }
    }

    private static bool KvmDeviceUsable()
    {
        try
        {
            using var kvm = new FileStream("/dev/kvm", FileMode.Open, FileAccess.ReadWrite);
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    [GeneratedRegex(@"^PLATTER-GUEST: PASS\s*$", RegexOptions.Multiline)]
    private static partial Regex PassLine();

    [GeneratedRegex(@"^PLATTER-GUEST: FAIL(.*)$", RegexOptions.Multiline)]
    private static partial Regex FailLine();

    [GeneratedRegex(@"^PLATTER-GUEST: uptime ([0-9.]+) s", RegexOptions.Multiline)]
    private static partial Regex UptimeLine();
}
