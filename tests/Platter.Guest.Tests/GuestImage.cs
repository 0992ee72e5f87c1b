namespace Platter.Guest.Tests;

/// <summary>The guest kernel and initramfs built by tests/guest/build-guest.sh (cached under .cache/guest).</summary>
public sealed record GuestImage(string KernelPath, string InitrdPath, string Key)
{
    // A cold build downloads ~75 MB of packages and may install qemu-system-x86; a cached one takes a second.
    private static readonly TimeSpan BuildTimeout = TimeSpan.FromMinutes(15);

    /// <summary>Runs the build script (a no-op when cached) and returns the kernel and initramfs paths.</summary>
    public static async Task<GuestImage> BuildAsync(CancellationToken cancellationToken)
    {
        var script = Repository.PathOf("tests/guest/build-guest.sh");
        var result = await ProcessRunner.RunAsync("bash", [script], BuildTimeout, failOnTimeout: false, cancellationToken: cancellationToken);
        if (result.TimedOut || result.ExitCode != 0)
        {
            throw new InvalidOperationException(
                $"building the guest kernel/initramfs failed ({(result.TimedOut ? "timed out" : $"exit {result.ExitCode}")}); " +
                $"the guest test needs apt access to linux-image-amd64, busybox-static, e2fsprogs and qemu-system-x86.\n{result.Stderr}");
        }
        var values = result.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(l => l.Split('=', 2)).Where(p => p.Length == 2).ToDictionary(p => p[0], p => p[1]);
        if (!values.TryGetValue("kernel", out var kernel) || !values.TryGetValue("initrd", out var initrd) ||
            !File.Exists(kernel) || !File.Exists(initrd))
        {
            throw new InvalidOperationException($"build-guest.sh did not report an existing kernel and initrd:\n{result.Stdout}\n{result.Stderr}");
        }
        return new GuestImage(kernel, initrd, values.GetValueOrDefault("key", "?"));
    }
}
