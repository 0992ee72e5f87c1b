using Xunit;
using Xunit.Abstractions;

namespace Platter.Guest.Tests;

/// <summary>
/// What every guest test starts with, in one place: a time budget for the whole test, the guest kernel and initramfs
/// (built, or taken from the cache), the accelerator, and the server under test started. Disposing it disposes the
/// target (its server stopped or killed).
/// </summary>
public sealed class GuestSession<TTarget> : IAsyncDisposable where TTarget : INbdTarget
{
    /// <summary>
    /// Bound of one test: a few TCG boots, restarts and copies take 2–5 minutes on the loaded build machines; this only
    /// stops a test that hangs somewhere no narrower bound watches.
    /// </summary>
    public static readonly TimeSpan Budget = TimeSpan.FromMinutes(20);

    private readonly CancellationTokenSource _cts;
    private readonly ITestOutputHelper _output;

    private GuestSession(CancellationTokenSource cts, GuestImage image, string accel, TTarget target, string workDirectory, ITestOutputHelper output)
    {
        _cts = cts;
        Image = image;
        Accel = accel;
        Target = target;
        WorkDirectory = workDirectory;
        _output = output;
    }

    /// <summary>Cancelled when <see cref="Budget"/> runs out.</summary>
    public CancellationToken Token => _cts.Token;

    /// <summary>The guest kernel and initramfs.</summary>
    public GuestImage Image { get; }

    /// <summary>"tcg" or "kvm".</summary>
    public string Accel { get; }

    /// <summary>The server under test, started.</summary>
    public TTarget Target { get; }

    /// <summary>Where serial logs and the target's files go.</summary>
    public string WorkDirectory { get; }

    /// <summary>
    /// Builds (or finds) the guest image, chooses the accelerator (<paramref name="accel"/> when given, else
    /// <see cref="GuestVm.ChooseAccelAsync"/>) and starts <paramref name="target"/>; the session owns the target from
    /// here on, also when this throws.
    /// </summary>
    public static async Task<GuestSession<TTarget>> StartAsync(TTarget target, string workDirectory, ITestOutputHelper output, string? accel = null)
    {
        var cts = new CancellationTokenSource(Budget);
        try
        {
            var image = await GuestImage.BuildAsync(cts.Token);
            accel ??= await GuestVm.ChooseAccelAsync(image, workDirectory, cts.Token);
            output.WriteLine($"guest {image.Key}, accelerator {accel}, server {target.Name}");
            await target.StartAsync(cts.Token);
            return new GuestSession<TTarget>(cts, image, accel, target, workDirectory, output);
        }
        catch
        {
            cts.Dispose();
            await target.DisposeAsync();
            throw;
        }
    }

    /// <summary>
    /// Boots the guest once in <paramref name="mode"/> and fails the test, with the end of the serial console and the
    /// server's log, unless it reports PASS within <paramref name="timeout"/> (default <see cref="GuestVm.BootTimeout"/>).
    /// The disk is the target's NBD export unless <paramref name="diskArguments"/> say otherwise.
    /// </summary>
    public async Task<GuestBoot> BootAndAssertAsync(GuestMode mode, string what, int? expectedMarkers = null, TimeSpan? timeout = null,
        IReadOnlyList<string>? diskArguments = null)
    {
        var boot = await GuestVm.BootAsync(Image, diskArguments is null ? Target : null, mode, WorkDirectory, Accel, expectedMarkers,
            timeout, Token, diskArguments);
        AssertPassed(boot, what, timeout ?? GuestVm.BootTimeout);
        return boot;
    }

    /// <summary>Fails the test, with the end of the serial console and the server's log, unless <paramref name="boot"/> reported PASS.</summary>
    public void AssertPassed(GuestBoot boot, string what, TimeSpan timeout)
    {
        _output.WriteLine($"{what} on {Target.Name}: {(boot.Passed ? "PASS" : "FAIL")}, wall {boot.Elapsed.TotalSeconds:F1} s, " +
                          $"guest uptime at PASS {boot.GuestUptimeSeconds?.ToString("F1") ?? "?"} s");
        Assert.False(boot.TimedOut, $"{what} on {Target.Name} did not power off within {timeout}:\n{boot.Describe()}\n" +
                                    $"--- {Target.Name} log ---\n{Target.Log}");
        Assert.True(boot.Passed, $"{what} on {Target.Name} did not report PASS:\n{boot.Describe()}\n--- {Target.Name} log ---\n{Target.Log}");
    }

    /// <inheritdoc/>
    public async ValueTask DisposeAsync()
    {
        await Target.DisposeAsync();
        _cts.Dispose();
    }
}
