using System.Text.Json;

namespace Platter.Interop.Tests;

/// <summary>
/// `platter volume flatten` through the real binary and a real server: the clone's content, read by qemu-img over
/// NBD, is the same before the flatten, after it and after its origin volume is deleted recursively.
/// </summary>
public sealed class FlattenTests(ServerFixture fixture, ITestOutputHelper output) : InteropTest(fixture, output), IClassFixture<ServerFixture>
{
    private const long Size = 32 * MiB;

    [Fact]
    public async Task Flatten_lets_the_origin_be_deleted_and_the_clone_reads_the_same_with_qemu_img()
    {
        var origin = await Fixture.CreateExportAsync("forigin", Size);
        await Clients.QemuIoAsync(origin.Uri, $"write -P 0x11 0 {8 * MiB}", $"write -P 0x22 {16 * MiB} {2 * MiB}", "flush");
        (await Server.CliAsync("snapshot", "create", $"{origin.Name}@s1")).EnsureSuccess();
        string clone = origin.Name + "-clone";
        (await Server.CliAsync("clone", $"{origin.Name}@s1", clone)).EnsureSuccess();
        var cloneExport = new NbdExport(clone, Server.NbdSocketPath, Size);
        await Clients.QemuIoAsync(cloneExport.Uri, $"write -P 0x33 {1 * MiB} {1 * MiB}", $"write -z {4 * MiB} {1 * MiB}", $"write -P 0x44 {30 * MiB} 64k", "flush");
        await Clients.QemuIoAsync(origin.Uri, $"write -P 0x55 0 {1 * MiB}", "flush"); // the origin's volume moves on

        // The reference: the clone's content as qemu-img reads it before the flatten.
        string reference = Scratch.Combine("clone-before.raw");
        (await ProcessRunner.RunAsync(Tools.QemuImg, ["convert", "-f", "raw", "-O", "raw", cloneExport.Uri, reference])).EnsureSuccess();

        var refused = await Server.CliAsync("volume", "delete", origin.Name, "--recursive");
        Assert.Equal(1, refused.ExitCode);
        Assert.Contains("platter volume flatten", refused.Stderr);

        var flatten = (await Server.CliAsync("volume", "flatten", clone, "--json")).EnsureSuccess("platter volume flatten failed");
        using (var result = JsonDocument.Parse(flatten.Stdout))
        {
            Assert.Equal($"{origin.Name}@s1", result.RootElement.GetProperty("origin").GetString());
            // 10 MiB of origin data, minus the 2 MiB the clone overwrote or zeroed: only that is copied.
            Assert.Equal(8 * MiB, result.RootElement.GetProperty("copiedBytes").GetInt64());
            Assert.Equal(JsonValueKind.Null, result.RootElement.GetProperty("volume").GetProperty("origin").ValueKind);
        }
        Assert.Contains("origin:     -", (await Server.CliAsync("volume", "info", clone)).EnsureSuccess().Stdout);
        await CompareAsync(reference, cloneExport.Uri, "after the flatten");

        (await Server.CliAsync("volume", "delete", origin.Name, "--recursive")).EnsureSuccess("deleting the origin after the flatten failed");
        await CompareAsync(reference, cloneExport.Uri, "after deleting the origin");
        // The store agrees with itself (no block freed that the clone still maps): the clone is still readable in full
        // and writable, and the second flatten is refused because it is no clone any more.
        await Clients.QemuIoAsync(cloneExport.Uri, $"read -P 0x11 0 {1 * MiB}", $"read -P 0x33 {1 * MiB} {1 * MiB}", $"read -P 0x22 {16 * MiB} {2 * MiB}",
            $"write -P 0x66 0 64k", "flush");
        var again = await Server.CliAsync("volume", "flatten", clone);
        Assert.Equal(1, again.ExitCode);
        Assert.Contains("not a clone", again.Stderr);
    }

    [Fact]
    public async Task Flatten_help_states_what_it_copies_and_costs()
    {
        var help = (await Server.CliAsync("volume", "flatten", "--help")).EnsureSuccess();
        string text = System.Text.RegularExpressions.Regex.Replace(help.Stdout, @"\s+", " ");
        Assert.Contains("copies the data the clone still shares with its origin", text);
        Assert.Contains("rbd_flatten", help.Stdout);
    }

    private static async Task CompareAsync(string reference, string uri, string when)
    {
        var compare = await ProcessRunner.RunAsync(Tools.QemuImg, ["compare", "-f", "raw", "-F", "raw", reference, uri]);
        Assert.True(compare.ExitCode == 0, $"the clone's content changed {when}\n{compare.Describe()}");
    }
}
