namespace Platter.Interop.Tests;

/// <summary>
/// Management operations (<c>platter volume resize|rename|delete</c>) as NBD clients see them: the export
/// follows the volume, data stays where it was, and a deleted volume is no longer served.
/// </summary>
public sealed class ManagementTests(ServerFixture fixture, ITestOutputHelper output) : InteropTest(fixture, output), IClassFixture<ServerFixture>
{
    [Fact]
    public async Task Resize_is_seen_on_reconnect_and_keeps_data_below_the_old_end()
    {
        var export = await Server.CreateVolumeAsync("grow", "64M", 64 * MiB);
        await Clients.QemuIoAsync(export.Uri, $"write -P 0x31 {63 * MiB} {1 * MiB}", "flush");

        (await Server.CliAsync("volume", "resize", export.Name, "--size", "256M")).EnsureSuccess("platter volume resize failed");

        var info = await Clients.NbdInfoJsonAsync(export.Uri);
        Assert.Equal(256 * MiB, info.GetProperty("exports")[0].GetProperty("export-size").GetInt64());
        await Clients.QemuIoAsync(export.Uri,
            $"read -P 0x31 {63 * MiB} {1 * MiB}",
            $"read -P 0x00 {64 * MiB} {192 * MiB}",
            $"write -P 0x32 {255 * MiB} {1 * MiB}",
            $"read -P 0x32 {255 * MiB} {1 * MiB}");
    }

    [Fact]
    public async Task Shrink_then_grow_reads_zeros_where_data_was_cut_off()
    {
        var export = await Server.CreateVolumeAsync("shrink", "64M", 64 * MiB);
        await Clients.QemuIoAsync(export.Uri, $"write -P 0x41 {30 * MiB} {4 * MiB}", "flush");

        // A shrink discards data: refused without --allow-shrink, and nothing changes.
        var refused = await Server.CliAsync("volume", "resize", export.Name, "--size", "32M");
        Assert.True(refused.ExitCode == 1 && refused.Stderr.StartsWith("platter: shrinking volume", StringComparison.Ordinal)
                    && refused.Stderr.Contains("--allow-shrink"), refused.Describe());
        Assert.Equal(64 * MiB, (await Clients.NbdInfoJsonAsync(export.Uri)).GetProperty("exports")[0].GetProperty("export-size").GetInt64());
        await Clients.QemuIoAsync(export.Uri, $"read -P 0x41 {30 * MiB} {4 * MiB}");

        (await Server.CliAsync("volume", "resize", export.Name, "--size", "32M", "--allow-shrink")).EnsureSuccess("shrink failed");
        Assert.Equal(32 * MiB, (await Clients.NbdInfoJsonAsync(export.Uri)).GetProperty("exports")[0].GetProperty("export-size").GetInt64());
        (await Server.CliAsync("volume", "resize", export.Name, "--size", "64M")).EnsureSuccess("grow failed");

        // Shrinking drops the data past the new end: growing again must not bring it back.
        await Clients.QemuIoAsync(export.Uri,
            $"read -P 0x41 {30 * MiB} {2 * MiB}",
            $"read -P 0x00 {32 * MiB} {32 * MiB}");
    }

    [Fact]
    public async Task Renamed_volume_is_served_under_the_new_name_only()
    {
        var export = await Server.CreateVolumeAsync("before", "64M", 64 * MiB);
        await Clients.QemuIoAsync(export.Uri, $"write -P 0x51 0 {1 * MiB}", "flush");

        (await Server.CliAsync("volume", "rename", export.Name, "after")).EnsureSuccess("platter volume rename failed");

        var renamed = export with { Name = "after" };
        await Clients.QemuIoAsync(renamed.Uri, $"read -P 0x51 0 {1 * MiB}");
        await Clients.AssertNoSuchExportAsync(export.Uri, export.Name, "the old name must no longer be an export");
        var names = ExportNames(await Clients.NbdInfoListJsonAsync(Server.NbdSocketPath));
        Assert.Contains("after", names);
        Assert.DoesNotContain("before", names);
    }

    [Fact]
    public async Task Deleted_volume_is_no_longer_an_export_and_its_name_can_be_reused_empty()
    {
        var export = await Server.CreateVolumeAsync("doomed", "64M", 64 * MiB);
        await Clients.QemuIoAsync(export.Uri, $"write -P 0x61 0 {1 * MiB}", "flush");

        (await Server.CliAsync("volume", "delete", export.Name)).EnsureSuccess("platter volume delete failed");

        Assert.DoesNotContain(export.Name, ExportNames(await Clients.NbdInfoListJsonAsync(Server.NbdSocketPath)));
        await Clients.AssertNoSuchExportAsync(export.Uri, export.Name, "a deleted volume must not be served");

        // Never another volume's data: a new volume with the same name starts empty.
        var reborn = await Server.CreateVolumeAsync("doomed", "64M", 64 * MiB);
        await Clients.QemuIoAsync(reborn.Uri, $"read -P 0x00 0 {1 * MiB}");
    }

    private static List<string> ExportNames(System.Text.Json.JsonElement listing) =>
        listing.GetProperty("exports").EnumerateArray().Select(e => e.GetProperty("export-name").GetString()!).ToList();
}
