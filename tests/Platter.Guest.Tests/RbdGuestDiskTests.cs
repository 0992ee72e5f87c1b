using Xunit;
using Xunit.Abstractions;

namespace Platter.Guest.Tests;

/// <summary>
/// The guest test on an RBD-backed volume (issue 10): the volume is an RBD image in a real one-host cluster behind
/// Platter's NBD export. One boot writes and checks the file system; the restarts are then checked byte for byte
/// instead of by booting again (each boot on RBD costs a minute or more of TCG and OSD time in CI).
/// </summary>
public sealed class RbdGuestDiskTests(ITestOutputHelper output, CephTestCluster cluster) : GuestDiskTests(output), IClassFixture<CephTestCluster>
{
    // Every write goes to three OSDs that share the machine's two cores with the guest's TCG and the server: the boot
    // (a raw pattern, then mkfs.ext4 on 512 MiB) took longer than the embedded store's bound on a loaded machine.
    protected override TimeSpan BootTimeout => TimeSpan.FromMinutes(8);

    protected override INbdTarget CreateTarget(string workDirectory, long sizeBytes) => new PlatterTarget(workDirectory, sizeBytes, cluster);

    /// <summary>
    /// Boot 1 writes a raw pattern, makes an ext4 file system with files of known checksums, and checks them all
    /// (remount, <c>e2fsck -fn</c>) before powering off; the guest flushed everything. The whole disk is then copied
    /// through the server (what the guest left), and after a SIGTERM restart, and again after a SIGKILL and a takeover
    /// (the dead server's exclusive lock broken, its client fenced), the disk served by the new server must equal that
    /// copy byte for byte (<c>qemu-img compare</c>): nothing the guest wrote is lost or changed by either.
    /// </summary>
    [Fact]
    public async Task Guest_file_system_on_an_rbd_volume_survives_server_restart_and_kill_with_takeover()
    {
        await using var session = await StartSessionAsync();
        var (target, ct) = (session.Target, session.Token);
        await session.BootAndAssertAsync(GuestMode.Write, "boot (write)", timeout: BootTimeout);

        string uri = NbdExport.NbdUri(target.ExportName, target.SocketPath);
        string left = Path.Combine(_work.Path, "left-by-guest.raw");
        (await ProcessRunner.RunAsync("qemu-img", ["convert", "-f", "raw", "-O", "raw", uri, left], TimeSpan.FromMinutes(5), cancellationToken: ct))
            .EnsureSuccess("copying the disk the guest left");

        await target.StopAsync(graceful: true, ct);
        await target.StartAsync(ct);
        await AssertSameAsync(left, uri, target, "after a SIGTERM restart of the server", ct);

        await target.StopAsync(graceful: false, ct);
        await target.StartAsync(ct); // takes the volume over: the killed server's lock is still on the image
        await AssertSameAsync(left, uri, target, "after a SIGKILL of the server and a takeover", ct);

        await target.StopAsync(graceful: true, ct);
    }

    private async Task AssertSameAsync(string copy, string uri, INbdTarget target, string when, CancellationToken ct)
    {
        var compare = await ProcessRunner.RunAsync("qemu-img", ["compare", "-f", "raw", "-F", "raw", copy, uri], TimeSpan.FromMinutes(5), cancellationToken: ct);
        _output.WriteLine($"qemu-img compare {when}: exit {compare.ExitCode}, {compare.Elapsed.TotalSeconds:F1} s");
        Assert.True(compare.ExitCode == 0, $"the disk {when} differs from what the guest left:\n{compare.Describe()}\n--- {target.Name} log ---\n{target.Log}");
    }
}
