using Xunit;
using Xunit.Abstractions;

namespace Platter.Guest.Tests;

/// <summary>
/// The guest test on an RBD-backed volume: the same three boots as on the embedded store (write and mkfs, verify
/// after a SIGTERM restart, verify after a SIGKILL and a takeover), with the volume an RBD image in a real one-host
/// cluster (issue 10).
/// </summary>
public sealed class RbdGuestDiskTests(ITestOutputHelper output, CephTestCluster cluster) : GuestDiskTests(output), IClassFixture<CephTestCluster>
{
    // Every write goes to three OSDs that share the machine's two cores with the guest's TCG and the server: the first
    // boot (a raw pattern, then mkfs.ext4 on 512 MiB) took longer than the embedded store's bound on a loaded machine.
    protected override TimeSpan BootTimeout => TimeSpan.FromMinutes(8);

    protected override INbdTarget CreateTarget(string workDirectory, long sizeBytes) => new RbdPlatterTarget(workDirectory, sizeBytes, cluster);

    [Fact]
    public Task Guest_file_system_on_an_rbd_volume_survives_guest_shutdown_server_restarts_and_takeover() =>
        RunGuestFileSystemSurvivesRestartsAsync();
}
