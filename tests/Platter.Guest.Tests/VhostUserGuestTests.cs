using Xunit;
using Xunit.Abstractions;

namespace Platter.Guest.Tests;

/// <summary>
/// A real Linux guest whose disk is a Platter volume over vhost-user-blk (<c>platter serve --vhost-user-dir</c>):
/// QEMU shares the guest's memory (memfd, share=on) and Platter serves the virtqueues itself. The guest writes a raw
/// pattern, runs mkfs.ext4 (which discards the whole disk first), writes files, syncs and runs e2fsck; the server is
/// then killed, so only what the guest flushed survives; NBD reads the discarded range back and a second guest
/// verifies every file over NBD; a third boot over vhost-user again sees the second one's marker.
/// </summary>
public sealed class VhostUserGuestTests(ITestOutputHelper output) : IDisposable
{
    private const long VolumeSizeBytes = 512L * 1024 * 1024;
    // A range the guest never writes before mkfs and ext4 leaves alone on a mostly empty 512 MiB disk: filled with
    // 0xAB through NBD before the first boot, it must read back as anything but 0xAB once mkfs has discarded the disk.
    private const long DiscardProbeOffset = 500L * 1024 * 1024;
    private const int DiscardProbeBytes = 4 * 1024 * 1024;

    private readonly TempDirectory _work = new("platter-vhost");

    public void Dispose() => _work.Dispose();

    [Fact]
    public async Task Guest_writes_flushes_and_discards_over_vhost_user_and_the_data_reads_back_over_nbd()
    {
        // TCG always: the build machines' /dev/kvm is PVM (kvm_pvm, no VT-x), which runs only PVM guest kernels; a stock
        // Debian kernel never reaches its serial console under it, with or without this disk (docs/PERFORMANCE.md).
        var vhostDir = _work.Combine("vu");
        await using var session = await GuestSession<PlatterTarget>.StartAsync(
            new PlatterTarget(_work.Path, VolumeSizeBytes, "--vhost-user-dir", vhostDir), _work.Path, output, accel: "tcg");
        var (target, ct, image, accel) = (session.Target, session.Token, session.Image, session.Accel);
        var socket = Path.Combine(vhostDir, target.ExportName + ".sock");
        await WaitForAsync(() => File.Exists(socket), "the volume's vhost-user socket", target, ct);

        var nbdUri = $"nbd+unix:///{target.ExportName}?socket={target.SocketPath}";
        var fill = await ProcessRunner.RunAsync("qemu-io", ["-f", "raw", "-c", $"write -P 0xab {DiscardProbeOffset} {DiscardProbeBytes}", "-c", "flush", nbdUri],
            TimeSpan.FromSeconds(60), cancellationToken: ct);
        Assert.True(fill.ExitCode == 0, fill.Describe());

        // Boot 1 over vhost-user; while its QEMU holds the volume, NBD must refuse to open it (one writer).
        var boot = GuestVm.BootAsync(image, null, GuestMode.Write, _work.Path, accel, diskArguments: VhostUserDisk(socket), cancellationToken: ct);
        await WaitForAsync(() => target.Log.Contains("front-end connected", StringComparison.Ordinal) || boot.IsCompleted, "QEMU to connect", target, ct);
        var refused = await ProcessRunner.RunAsync("qemu-io", ["-r", "-f", "raw", "-c", "read 0 4k", nbdUri], TimeSpan.FromSeconds(60), cancellationToken: ct);
        output.WriteLine($"NBD while vhost-user writes: exit {refused.ExitCode}: {refused.Stderr.Trim()}");
        Assert.NotEqual(0, refused.ExitCode);
        // qemu-io prints the server's reason ("server reported: ...") on stdout.
        Assert.Contains("being written over vhost-user", refused.Stdout + refused.Stderr);
        session.AssertPassed(await boot, "boot 1 (write, over vhost-user)", GuestVm.BootTimeout);

        // Only flushed data may be relied on after SIGKILL; the guest synced and unmounted, so all of it must be there.
        await target.StopAsync(graceful: false, ct);
        await target.StartAsync(ct);

        var probe = _work.Combine("probe.raw");
        // The whole volume through NBD (sparse, so quick), then the probed range from the copy.
        var copy = await ProcessRunner.RunAsync("qemu-img", ["convert", "-f", "raw", "-O", "raw", nbdUri, probe], TimeSpan.FromMinutes(3), cancellationToken: ct);
        Assert.True(copy.ExitCode == 0, copy.Describe());
        var bytes = new byte[DiscardProbeBytes];
        using (var file = File.OpenHandle(probe)) Assert.Equal(DiscardProbeBytes, RandomAccess.Read(file, bytes, DiscardProbeOffset));
        int stale = 0;
        for (int block = 0; block < bytes.Length; block += 4096)
            if (bytes.AsSpan(block, 4096).IndexOfAnyExcept((byte)0xAB) < 0) stale++;
        Assert.True(stale == 0, $"{stale} 4 KiB blocks of the range still hold the 0xAB fill: mkfs.ext4's discard did not reach the volume");

        await session.BootAndAssertAsync(GuestMode.Verify, "boot 2 (verify, over NBD)", expectedMarkers: 0);

        // NBD's claim ends with its connection: vhost-user may write again.
        await session.BootAndAssertAsync(GuestMode.Verify, "boot 3 (verify, over vhost-user)", expectedMarkers: 1, diskArguments: VhostUserDisk(socket));
        // Linux lays every request out in an indirect table once the feature is offered: this boot ran on them.
        Assert.Contains("(indirect descriptors)", target.Log);
        await target.StopAsync(graceful: true, ct);
    }

    /// <summary>
    /// The guest does synchronous direct I/O in rounds (write, fsync, read back and compare) on a vhost-user-blk disk
    /// whose chardev reconnects, while the server is stopped with SIGTERM and started again, then killed with SIGKILL
    /// and started again. QEMU negotiates in-flight tracking (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD) and hands its area
    /// to the new server, which resubmits what was in flight when the old one died: the guest must see no I/O error
    /// and every round's data must read back. The guest's stop block cannot be written over NBD while QEMU writes the
    /// volume (one writer), so the guest is killed once it has gone on after the second restart.
    /// </summary>
    [Fact]
    public async Task Guest_io_goes_on_without_errors_while_the_vhost_user_server_restarts_and_is_killed()
    {
        var vhostDir = _work.Combine("vu");
        await using var session = await GuestSession<PlatterTarget>.StartAsync(
            new PlatterTarget(_work.Path, VolumeSizeBytes, "--vhost-user-dir", vhostDir), _work.Path, output, accel: "tcg");
        var (target, ct) = (session.Target, session.Token);
        var socket = Path.Combine(vhostDir, target.ExportName + ".sock");
        await WaitForAsync(() => File.Exists(socket), "the volume's vhost-user socket", target, ct);

        var serial = _work.Combine("serial-io.log");
        using var bootCts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var boot = GuestVm.BootAsync(session.Image, null, GuestMode.Io, _work.Path, session.Accel, timeout: TimeSpan.FromMinutes(12),
            cancellationToken: bootCts.Token, diskArguments: VhostUserDisk(socket, reconnectSeconds: 1), serialPath: serial);
        try
        {
            int rounds = await PlatterGuestDiskTests.WaitForRoundsAsync(serial, boot, PlatterGuestDiskTests.RoundsAfterRestart, target, ct);
            int Tracked() => System.Text.RegularExpressions.Regex.Count(target.Log, "in-flight tracking on");
            // QEMU hands the area over on every device start (the guest's driver may start it more than once).
            int tracked = Tracked();
            Assert.True(tracked >= 1, "QEMU did not set up in-flight tracking");
            foreach (bool graceful in new[] { true, false })
            {
                var stopped = System.Diagnostics.Stopwatch.StartNew();
                await target.StopAsync(graceful, ct);
                await target.StartAsync(ct);
                int atRestart = PlatterGuestDiskTests.CurrentRound(serial);
                output.WriteLine($"{(graceful ? "SIGTERM" : "SIGKILL")} restart at guest round {rounds}..{atRestart}, server down and up in {stopped.Elapsed.TotalSeconds:F1} s");
                rounds = await PlatterGuestDiskTests.WaitForRoundsAsync(serial, boot, atRestart + PlatterGuestDiskTests.RoundsAfterRestart, target, ct);
                // The new server got QEMU's area back (the log spans the restarts).
                Assert.True(Tracked() > tracked, "QEMU did not hand its in-flight area to the restarted server");
                tracked = Tracked();
            }
            output.WriteLine($"io guest: {rounds} rounds without an error");
            // Whether a request was in flight at the SIGKILL is luck; when one was, the new server says so.
            foreach (var line in target.Log.Split('\n').Where(l => l.Contains("resubmits", StringComparison.Ordinal))) output.WriteLine(line.Trim());
        }
        finally
        {
            await bootCts.CancelAsync();
            try { await boot; } catch (OperationCanceledException) { }
        }
        await target.StopAsync(graceful: true, ct);
    }

    /// <summary>QEMU's arguments for a vhost-user-blk disk: guest RAM shared with the back-end, the socket, the device.</summary>
    private static List<string> VhostUserDisk(string socket, int reconnectSeconds = 0) =>
    [
        // GuestVm boots with -m 512M: the shared backend covers all of it.
        "-object", "memory-backend-memfd,id=mem,size=512M,share=on", "-numa", "node,memdev=mem",
        "-chardev", $"socket,id=vu0,path={socket}{(reconnectSeconds > 0 ? $",reconnect={reconnectSeconds}" : "")}",
        "-device", "vhost-user-blk-pci,chardev=vu0",
    ];

    private static async Task WaitForAsync(Func<bool> condition, string what, PlatterTarget target, CancellationToken ct)
    {
        var waited = System.Diagnostics.Stopwatch.StartNew();
        while (!condition())
        {
            if (waited.Elapsed > TimeSpan.FromSeconds(60)) Assert.Fail($"waited a minute for {what}\n--- platter log ---\n{target.Log}");
            await Task.Delay(100, ct);
        }
    }
}
