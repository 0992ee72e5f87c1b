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

    private readonly ITestOutputHelper _output;
    private readonly TempDirectory _work = new("platter-guest");

    protected GuestDiskTests(ITestOutputHelper output)
    {
        _output = output;
    }

    /// <summary>Creates the server under test; its files belong in <paramref name="workDirectory"/>.</summary>
    protected abstract INbdTarget CreateTarget(string workDirectory, long sizeBytes);

    public Task InitializeAsync() => Task.CompletedTask;

    public Task DisposeAsync()
    {
        _work.Dispose();
        return Task.CompletedTask;
    }

    /// <summary>
    /// Three boots on one volume: write (raw pattern, mkfs.ext4, files); after a SIGTERM restart of the
    /// server, verify; after a SIGKILL of the server, verify again. Each derived class runs it from its own
    /// test method so that each can decide when it runs.
    /// </summary>
    protected async Task RunGuestFileSystemSurvivesRestartsAsync()
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromMinutes(20));
        var ct = cts.Token;
        var image = await GuestImage.BuildAsync(ct);
        var accel = await GuestVm.ChooseAccelAsync(image, _work.Path, ct);
        _output.WriteLine($"guest {image.Key}, accelerator {accel}");

        await using var target = CreateTarget(_work.Path, VolumeSizeBytes);
        await target.StartAsync(ct);

        // Boot 1: raw pattern, mkfs.ext4, files, clean fsck.
        await BootAndAssertAsync(image, target, GuestMode.Write, accel, null, "first boot (write)", ct);

        // A normal restart of the server between guest runs.
        await target.StopAsync(graceful: true, ct);
        await target.StartAsync(ct);
        await BootAndAssertAsync(image, target, GuestMode.Verify, accel, 0, "second boot after graceful server restart", ct);

        // Killed server: only what the guest flushed may be relied on, and the guest flushed everything
        // (sync, umount) before powering off, so all of it, including boot 2's marker, must be there.
        await target.StopAsync(graceful: false, ct);
        await target.StartAsync(ct);
        await BootAndAssertAsync(image, target, GuestMode.Verify, accel, 1, "third boot after server SIGKILL", ct);

        await target.StopAsync(graceful: true, ct);
    }

    private async Task BootAndAssertAsync(GuestImage image, INbdTarget target, GuestMode mode, string accel,
        int? expectedMarkers, string what, CancellationToken ct)
    {
        var boot = await GuestVm.BootAsync(image, target, mode, _work.Path, accel, expectedMarkers, cancellationToken: ct);
        _output.WriteLine($"{what} on {target.Name}: {(boot.Passed ? "PASS" : "FAIL")}, wall {boot.Elapsed.TotalSeconds:F1} s, " +
                          $"guest uptime at PASS {boot.GuestUptimeSeconds?.ToString("F1") ?? "?"} s");
        Assert.False(boot.TimedOut, $"{what} on {target.Name} did not power off within {GuestVm.BootTimeout}:\n{boot.Describe()}\n" +
                                    $"--- {target.Name} log ---\n{target.Log}");
        Assert.True(boot.Passed, $"{what} on {target.Name} did not report PASS:\n{boot.Describe()}\n--- {target.Name} log ---\n{target.Log}");
    }
}

/// <summary>The guest test on a Platter volume: what CI runs.</summary>
public sealed class PlatterGuestDiskTests(ITestOutputHelper output) : GuestDiskTests(output)
{
    protected override INbdTarget CreateTarget(string workDirectory, long sizeBytes) => new PlatterTarget(workDirectory, sizeBytes);

    [Fact]
    public Task Guest_file_system_on_a_platter_volume_survives_guest_shutdown_and_server_restarts() =>
        RunGuestFileSystemSurvivesRestartsAsync();
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
