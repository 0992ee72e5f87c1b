using System.Text.Json;

namespace Platter.Interop.Tests;

/// <summary>
/// Snapshots and clones through real clients: snapshots taken with the CLI, exported read-only as VOL@SNAP and
/// read by qemu-img, qemu-io and nbdcopy; the qemu:dirty-bitmap and qemu:allocation-depth meta contexts read by
/// nbdinfo (as incremental-backup tools and qemu's own block jobs would), and `platter diff` checked against them.
/// </summary>
public sealed class SnapshotTests(ServerFixture fixture, ITestOutputHelper output) : InteropTest(fixture, output), IClassFixture<ServerFixture>
{
    private const long Size = 64 * MiB;

    [Fact]
    public async Task Snapshot_export_keeps_the_data_written_before_it_while_the_volume_moves_on()
    {
        var vol = await Fixture.CreateExportAsync("snapcmp", Size);
        string before = Scratch.Combine("before.raw");
        string after = Scratch.Combine("after.raw");
        string[] initial =
        [
            $"write -P 0x11 0 {2 * MiB}",
            $"write -P 0x22 {8 * MiB + 4 * KiB} {3 * MiB}",
            $"write -P 0x33 {Size - 1 * MiB} {1 * MiB}",
        ];
        string[] later =
        [
            $"write -P 0x44 {1 * MiB} {64 * KiB}",
            $"write -P 0x55 {30 * MiB} {4 * KiB}",
            $"discard {9 * MiB} {512 * KiB}",
            $"write -z {Size - 512 * KiB} {4 * KiB}",
        ];
        await WriteReferenceAsync(before, initial);
        await WriteReferenceAsync(after, [.. initial, .. later]);

        await Clients.QemuIoAsync(vol.Uri, [.. initial, "flush"]);
        await SnapshotAsync(vol, "s1");
        await Clients.QemuIoAsync(vol.Uri, [.. later, "flush"]);

        var snapshot = await CompareAsync(before, SnapshotUri(vol, "s1"));
        Assert.True(snapshot.ExitCode == 0, $"the snapshot export differs from the data written before the snapshot\n{snapshot.Describe()}");
        var live = await CompareAsync(after, vol.Uri);
        Assert.True(live.ExitCode == 0, $"the volume differs from all the data written to it\n{live.Describe()}");
        // qemu-img compare: exit 1 means "the images differ" (2 would be an error, which proves nothing).
        var differs = await CompareAsync(before, vol.Uri);
        Assert.True(differs.ExitCode == 1, $"the volume still reads as it did before the snapshot, or compare failed\n{differs.Describe()}");

        var info = (await Clients.NbdInfoJsonAsync(SnapshotUri(vol, "s1"))).GetProperty("exports")[0];
        Assert.True(info.GetProperty("is_read_only").GetBoolean(), "a snapshot export must advertise NBD_FLAG_READ_ONLY");
        Assert.Equal(Size, info.GetProperty("export-size").GetInt64());
    }

    [Fact]
    public async Task Dirty_bitmaps_list_exactly_the_changed_extents_and_platter_diff_agrees()
    {
        var vol = await Fixture.CreateExportAsync("dirty", Size);
        await Clients.QemuIoAsync(vol.Uri,
            $"write -P 0x11 0 {2 * MiB}",
            $"write -P 0x22 {8 * MiB} {2 * MiB}",
            $"write -P 0x33 {20 * MiB} {1 * MiB}",
            "flush");
        await SnapshotAsync(vol, "s1");

        // Known offsets: inside old data, across the end of old data, a trim of old data, and a write into a hole.
        await Clients.QemuIoAsync(vol.Uri,
            $"write -P 0x44 {1 * MiB} {64 * KiB}",
            $"write -P 0x66 {9 * MiB + 512 * KiB} {1 * MiB}",
            $"discard {20 * MiB} {256 * KiB}",
            $"write -P 0x55 {30 * MiB} {4 * KiB}",
            "flush");
        (long Offset, long Length, bool Data)[] sinceS1 =
        [
            (1 * MiB, 64 * KiB, true),
            (9 * MiB + 512 * KiB, 1 * MiB, true),
            (20 * MiB, 256 * KiB, false),
            (30 * MiB, 4 * KiB, true),
        ];
        Assert.Equal(Ranges(sinceS1), await DirtyAsync(vol.Uri, "s1"));
        Assert.Equal(Coalesce(sinceS1), await DiffAsync($"{vol.Name}@s1", vol.Name));

        await SnapshotAsync(vol, "s2");
        await Clients.QemuIoAsync(vol.Uri, $"write -P 0x77 {40 * MiB} {128 * KiB}", $"write -P 0x78 0 {4 * KiB}", "flush");
        (long Offset, long Length, bool Data)[] sinceS2 = [(0, 4 * KiB, true), (40 * MiB, 128 * KiB, true)];

        Assert.Equal(Ranges(sinceS2), await DirtyAsync(vol.Uri, "s2"));
        Assert.Equal(Ranges([.. sinceS1, .. sinceS2]), await DirtyAsync(vol.Uri, "s1"));
        // Between two snapshots: the export VOL@S2 with the bitmap of S1.
        Assert.Equal(Ranges(sinceS1), await DirtyAsync(SnapshotUri(vol, "s2"), "s1"));

        Assert.Equal(Coalesce(sinceS2), await DiffAsync($"{vol.Name}@s2", vol.Name));
        Assert.Equal(Coalesce([.. sinceS1, .. sinceS2]), await DiffAsync($"{vol.Name}@s1", null));
        Assert.Equal(Coalesce(sinceS1), await DiffAsync($"{vol.Name}@s1", $"{vol.Name}@s2"));

        // The bitmaps an export offers: the live volume compares with any of its snapshots, a snapshot only with older ones.
        Assert.Superset(new HashSet<string> { "qemu:dirty-bitmap:s1", "qemu:dirty-bitmap:s2" }, (await ContextsAsync(vol.Uri)).ToHashSet());
        var ofS2 = await ContextsAsync(SnapshotUri(vol, "s2"));
        Assert.Contains("qemu:dirty-bitmap:s1", ofS2);
        Assert.DoesNotContain("qemu:dirty-bitmap:s2", ofS2);
    }

    [Fact]
    public async Task Allocation_depth_of_a_clone_is_1_where_it_wrote_2_where_it_inherits_0_for_holes()
    {
        var vol = await Fixture.CreateExportAsync("depth", Size);
        await Clients.QemuIoAsync(vol.Uri, $"write -P 0x11 0 {1 * MiB}", $"write -P 0x22 {4 * MiB} {1 * MiB}", "flush");
        await SnapshotAsync(vol, "gold");
        var clone = await CloneAsync(vol, "gold", $"{vol.Name}-clone");
        await Clients.QemuIoAsync(clone.Uri, $"write -P 0x33 {512 * KiB} {256 * KiB}", $"write -P 0x44 {8 * MiB} {1 * MiB}", "flush");

        (long, long, int)[] expected =
        [
            (0, 512 * KiB, 2),
            (512 * KiB, 256 * KiB, 1),
            (768 * KiB, 256 * KiB, 2),
            (1 * MiB, 3 * MiB, 0),
            (4 * MiB, 1 * MiB, 2),
            (5 * MiB, 3 * MiB, 0),
            (8 * MiB, 1 * MiB, 1),
            (9 * MiB, Size - 9 * MiB, 0),
        ];
        Assert.Equal(expected, await DepthAsync(clone.Uri));
        // The origin volume itself has no origin: its data is all its own.
        Assert.Equal([(0L, 1 * MiB, 1), (1 * MiB, 3 * MiB, 0), (4 * MiB, 1 * MiB, 1), (5 * MiB, Size - 5 * MiB, 0)], await DepthAsync(vol.Uri));

        await Clients.QemuIoAsync(clone.Uri,
            $"read -P 0x11 0 {512 * KiB}",
            $"read -P 0x33 {512 * KiB} {256 * KiB}",
            $"read -P 0x11 {768 * KiB} {256 * KiB}",
            $"read -P 0x00 {1 * MiB} {3 * MiB}",
            $"read -P 0x22 {4 * MiB} {1 * MiB}",
            $"read -P 0x44 {8 * MiB} {1 * MiB}");
    }

    [Fact]
    public async Task Clone_of_a_clone_of_a_clone_reads_every_layer_and_none_of_their_later_writes()
    {
        var v0 = await Fixture.CreateExportAsync("chain", Size);
        await Clients.QemuIoAsync(v0.Uri, $"write -P 0x10 0 {4 * MiB}", "flush");
        await SnapshotAsync(v0, "a");
        await Clients.QemuIoAsync(v0.Uri, $"write -P 0xf0 0 {4 * MiB}", "flush");

        var v1 = await CloneAsync(v0, "a", $"{v0.Name}-c1");
        await Clients.QemuIoAsync(v1.Uri, $"write -P 0x21 {1 * MiB} {1 * MiB}", "flush");
        await SnapshotAsync(v1, "b");
        await Clients.QemuIoAsync(v1.Uri, $"write -P 0xf1 {1 * MiB} {1 * MiB}", "flush");

        var v2 = await CloneAsync(v1, "b", $"{v0.Name}-c2");
        await Clients.QemuIoAsync(v2.Uri, $"write -P 0x32 {2 * MiB} {512 * KiB}", "flush");
        await SnapshotAsync(v2, "c");
        await Clients.QemuIoAsync(v2.Uri, $"write -P 0xf2 {2 * MiB} {512 * KiB}", "flush");

        var v3 = await CloneAsync(v2, "c", $"{v0.Name}-c3");
        await Clients.QemuIoAsync(v3.Uri, $"write -P 0x43 {3 * MiB} {4 * KiB}", $"write -P 0x44 {10 * MiB} {64 * KiB}", "flush");

        await Clients.QemuIoAsync(v3.Uri,
            $"read -P 0x10 0 {1 * MiB}",
            $"read -P 0x21 {1 * MiB} {1 * MiB}",
            $"read -P 0x32 {2 * MiB} {512 * KiB}",
            $"read -P 0x10 {2 * MiB + 512 * KiB} {512 * KiB}",
            $"read -P 0x43 {3 * MiB} {4 * KiB}",
            $"read -P 0x10 {3 * MiB + 4 * KiB} {1 * MiB - 4 * KiB}",
            $"read -P 0x00 {4 * MiB} {6 * MiB}",
            $"read -P 0x44 {10 * MiB} {64 * KiB}");
        // Each layer in between still reads its own later writes.
        await Clients.QemuIoAsync(v2.Uri, $"read -P 0xf2 {2 * MiB} {512 * KiB}", $"read -P 0x21 {1 * MiB} {1 * MiB}");
        await Clients.QemuIoAsync(v0.Uri, $"read -P 0xf0 0 {4 * MiB}");

        (long, long, int)[] expected =
        [
            (0, 1 * MiB, 4),
            (1 * MiB, 1 * MiB, 3),
            (2 * MiB, 512 * KiB, 2),
            (2 * MiB + 512 * KiB, 512 * KiB, 4),
            (3 * MiB, 4 * KiB, 1),
            (3 * MiB + 4 * KiB, 1 * MiB - 4 * KiB, 4),
            (4 * MiB, 6 * MiB, 0),
            (10 * MiB, 64 * KiB, 1),
            (10 * MiB + 64 * KiB, Size - 10 * MiB - 64 * KiB, 0),
        ];
        Assert.Equal(expected, await DepthAsync(v3.Uri));
    }

    [Fact]
    public async Task Nbdcopy_of_a_snapshot_export_is_the_data_before_the_snapshot()
    {
        int seed = Random.Shared.Next();
        Output.WriteLine($"seed {seed}");
        var vol = await Fixture.CreateExportAsync("snapcopy", Size);
        string source = Scratch.Combine("source.raw");
        string copy = Scratch.Combine("copy.raw");
        SparseImage.Create(source, Size, seed, [(0, 3 * MiB), (10 * MiB + 4 * KiB, 12 * MiB), (40 * MiB, 4 * KiB), (63 * MiB, 1 * MiB)]);

        await NbdCopyAsync(source, vol.Uri);
        await SnapshotAsync(vol, "backup");
        await Clients.QemuIoAsync(vol.Uri, $"write -P 0xee 0 {8 * MiB}", $"discard {12 * MiB} {4 * MiB}", $"write -P 0xdd {50 * MiB} {1 * MiB}", "flush");
        await NbdCopyAsync(SnapshotUri(vol, "backup"), copy);

        Assert.True(SparseImage.Sha256(source) == SparseImage.Sha256(copy), $"nbdcopy of the snapshot differs from the data before the snapshot (seed {seed})");
    }

    [Fact]
    public async Task Write_to_a_snapshot_export_fails_and_the_server_keeps_serving()
    {
        var vol = await Fixture.CreateExportAsync("snapro", Size);
        await Clients.QemuIoAsync(vol.Uri, $"write -P 0x5c 0 {1 * MiB}", "flush");
        await SnapshotAsync(vol, "ro");
        string snapshotUri = SnapshotUri(vol, "ro");

        foreach (var command in new[] { $"write -P 0x01 0 {64 * KiB}", $"discard 0 {64 * KiB}", $"write -z 0 {64 * KiB}" })
        {
            // qemu sees NBD_FLAG_READ_ONLY and refuses to open the export for writing.
            var r = await ProcessRunner.RunAsync(Tools.QemuIo, ["-f", "raw", "-c", command, snapshotUri]);
            Assert.True(r.ExitCode != 0 && r.Stderr.Contains("Permission denied", StringComparison.Ordinal),
                $"'{command}' on the read-only snapshot export did not fail as a read-only export\n{r.Describe()}");
        }
        // A client that ignores the flag (libnbd without strict mode) gets EPERM from the server itself.
        var refused = await Nbdsh.RunAsync("""
            import json, os, nbd
            def attempt(f):
                try:
                    f()
                    return 0
                except nbd.Error as e:
                    return e.errnum or -1
            h = nbd.NBD()
            h.set_strict_mode(0)
            h.connect_uri(os.environ["URI"])
            r = {"read_only": h.is_read_only(),
                 "write": attempt(lambda: h.pwrite(b"\x01" * 4096, 0)),
                 "trim": attempt(lambda: h.trim(4096, 4096)),
                 "zero": attempt(lambda: h.zero(4096, 8192))}
            r["intact"] = h.pread(16384, 0) == b"\x5c" * 16384
            h.shutdown()
            print(json.dumps(r))
            """, new Dictionary<string, string> { ["URI"] = snapshotUri });
        Output.WriteLine(refused.ToString());
        Assert.True(refused.GetProperty("read_only").GetBoolean(), "a snapshot export must advertise NBD_FLAG_READ_ONLY");
        const int EPERM = 1;
        foreach (var request in new[] { "write", "trim", "zero" })
            Assert.True(refused.GetProperty(request).GetInt32() == EPERM, $"{request} to the snapshot export: errno {refused.GetProperty(request)}, expected EPERM");
        Assert.True(refused.GetProperty("intact").GetBoolean(), "refused writes changed the snapshot");

        await Clients.QemuIoAsync(snapshotUri, readOnly: true, $"read -P 0x5c 0 {1 * MiB}");
        await Clients.QemuIoAsync(vol.Uri, $"write -P 0x6d 0 {64 * KiB}", "flush");
        await Clients.QemuIoAsync(vol.Uri, $"read -P 0x6d 0 {64 * KiB}", $"read -P 0x5c {64 * KiB} {1 * MiB - 64 * KiB}");
        await Clients.QemuIoAsync(snapshotUri, readOnly: true, $"read -P 0x5c 0 {1 * MiB}");
        Assert.True(Server.IsRunning, "the server exited");
    }

    // '@' is a legal path character in a URI, so the export name goes in as the CLI spells it.
    private static string SnapshotUri(NbdExport vol, string snapshot) => $"nbd+unix:///{vol.Name}@{snapshot}?socket={vol.SocketPath}";

    private async Task SnapshotAsync(NbdExport vol, string snapshot) =>
        (await Server.CliAsync("snapshot", "create", $"{vol.Name}@{snapshot}")).EnsureSuccess("platter snapshot create failed");

    private async Task<NbdExport> CloneAsync(NbdExport vol, string snapshot, string newVolume)
    {
        (await Server.CliAsync("clone", $"{vol.Name}@{snapshot}", newVolume)).EnsureSuccess("platter clone failed");
        return vol with { Name = newVolume };
    }

    private static Task<ProcessResult> WriteReferenceAsync(string path, string[] commands)
    {
        using (var f = File.Create(path)) f.SetLength(Size);
        return Clients.QemuIoAsync(path, commands);
    }

    private static Task<ProcessResult> CompareAsync(string rawFile, string uri) =>
        ProcessRunner.RunAsync(Tools.QemuImg, ["compare", "-f", "raw", "-F", "raw", rawFile, uri]);

    private static async Task NbdCopyAsync(string from, string to) =>
        (await ProcessRunner.RunAsync(Tools.NbdCopy, ["--flush", from, to], TimeSpan.FromSeconds(120))).EnsureSuccess("nbdcopy failed");

    /// <summary>Ranges the dirty bitmap of <paramref name="snapshot"/> marks (NBD_STATE_DIRTY, bit 0), coalesced.</summary>
    private async Task<List<(long Offset, long Length, bool Key)>> DirtyAsync(string uri, string snapshot)
    {
        var map = await Clients.NbdInfoMapAsync(uri, "qemu:dirty-bitmap:" + snapshot);
        Output.WriteLine($"dirty since {snapshot} on {uri}:\n  " + string.Join("\n  ", map));
        Assert.Equal(Size, map.Sum(m => m.Length));
        return Clients.Coalesce(map.Select(m => (m.Offset, m.Length, Key: (m.Type & 1) != 0))).Where(r => r.Key).ToList();
    }

    private async Task<List<(long Offset, long Length, int Key)>> DepthAsync(string uri)
    {
        var map = await Clients.NbdInfoMapAsync(uri, "qemu:allocation-depth");
        Output.WriteLine($"allocation depth of {uri}:\n  " + string.Join("\n  ", map));
        return Clients.Coalesce(map.Select(m => (m.Offset, m.Length, Key: m.Type)));
    }

    /// <summary><c>platter diff FROM [TO] --json</c>: the ranges with whether they hold data (false: they read as zeros).</summary>
    private async Task<List<(long Offset, long Length, bool Key)>> DiffAsync(string from, string? to)
    {
        var result = (await Server.CliAsync(["diff", from, .. to is null ? (string[])[] : [to], "--json"])).EnsureSuccess("platter diff failed");
        var json = Clients.ParseJson(result, result.Stdout);
        var extents = json.GetProperty("extents").EnumerateArray()
            .Select(e => (e.GetProperty("offset").GetInt64(), e.GetProperty("length").GetInt64(), e.GetProperty("allocated").GetBoolean())).ToList();
        Assert.Equal(extents.Sum(e => e.Item2), json.GetProperty("changedBytes").GetInt64());
        return Clients.Coalesce(extents);
    }

    private static async Task<List<string>> ContextsAsync(string uri)
    {
        var info = (await Clients.NbdInfoJsonAsync(uri)).GetProperty("exports")[0];
        return info.GetProperty("contexts").EnumerateArray().Select(c => c.GetString()!).ToList();
    }

    private static List<(long Offset, long Length, bool Key)> Ranges(IEnumerable<(long Offset, long Length, bool Data)> changes) =>
        Clients.Coalesce(changes.Select(c => (c.Offset, c.Length, Key: true)));

    private static List<(long Offset, long Length, bool Key)> Coalesce(IEnumerable<(long Offset, long Length, bool Data)> changes) =>
        Clients.Coalesce(changes.Select(c => (c.Offset, c.Length, Key: c.Data)));
}
