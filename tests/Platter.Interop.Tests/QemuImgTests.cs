namespace Platter.Interop.Tests;

/// <summary>qemu-img convert in and out of a volume, compare and map: what moving a VM disk image looks like.</summary>
public sealed class QemuImgTests(ServerFixture fixture, ITestOutputHelper output) : InteropTest(fixture, output), IClassFixture<ServerFixture>
{
    // Data ranges of the source image, 64 KiB aligned (the qcow2 cluster size) so both sides agree on the map.
    private static readonly (long Offset, long Length, int Pattern)[] Written =
    [
        (0, 1 * MiB, 0x11),
        (5 * MiB, 192 * KiB, 0x22),
        (20 * MiB, 2 * MiB, 0x33),
        (40 * MiB + 64 * KiB, 64 * KiB, 0x44),
        (63 * MiB, 1 * MiB, 0x55),
    ];

    [Fact]
    public async Task Qcow2_with_holes_converts_in_and_out_identically_and_maps_agree()
    {
        var export = await Fixture.CreateExportAsync("convert", 64 * MiB);
        string source = Scratch.Combine("source.qcow2");
        string roundTrip = Scratch.Combine("out.qcow2");

        await Clients.QemuImgAsync("create", "-q", "-f", "qcow2", source, $"{64 * MiB}");
        var writes = new List<string> { "-f", "qcow2" };
        foreach (var (offset, length, pattern) in Written) { writes.Add("-c"); writes.Add($"write -P 0x{pattern:x2} {offset} {length}"); }
        writes.Add(source);
        (await ProcessRunner.RunAsync(Tools.QemuIo, writes)).EnsureSuccess("qemu-io on the qcow2 source failed");

        // -n: the volume exists already (qemu-img cannot create NBD targets).
        await Clients.QemuImgAsync("convert", "-n", "-f", "qcow2", "-O", "raw", source, export.Uri);

        var compareIn = await ProcessRunner.RunAsync(Tools.QemuImg, ["compare", "-f", "qcow2", "-F", "raw", source, export.Uri]);
        Assert.True(compareIn.ExitCode == 0, $"volume differs from the source image\n{compareIn.Describe()}");

        Assert.Equal(ExpectedDataRanges(), await DataRangesAsync("raw", export.Uri));

        await Clients.QemuImgAsync("convert", "-f", "raw", "-O", "qcow2", export.Uri, roundTrip);

        var compareOut = await ProcessRunner.RunAsync(Tools.QemuImg, ["compare", "-f", "qcow2", "-F", "qcow2", source, roundTrip]);
        Assert.True(compareOut.ExitCode == 0, $"image copied out of the volume differs from the source\n{compareOut.Describe()}");
        // The holes survive the round trip: Platter reported them, so qemu-img did not allocate them.
        Assert.Equal(ExpectedDataRanges(), await DataRangesAsync("qcow2", roundTrip));
    }

    private static List<(long Offset, long Length, bool Key)> ExpectedDataRanges() =>
        Clients.Coalesce(Written.Select(w => (w.Offset, w.Length, Key: true)));

    /// <summary>Ranges <c>qemu-img map</c> reports as data (holes and zero ranges left out).</summary>
    private static async Task<List<(long Offset, long Length, bool Key)>> DataRangesAsync(string format, string image)
    {
        var result = await Clients.QemuImgAsync("map", "--output=json", "-f", format, image);
        var runs = new List<(long Offset, long Length, bool Key)>();
        foreach (var e in Clients.ParseJson(result, result.Stdout).EnumerateArray())
        {
            bool data = e.GetProperty("data").GetBoolean() && !e.GetProperty("zero").GetBoolean();
            runs.Add((e.GetProperty("start").GetInt64(), e.GetProperty("length").GetInt64(), data));
        }
        return Clients.Coalesce(runs).Where(r => r.Key).ToList();
    }
}
