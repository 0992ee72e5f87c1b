using System.Text.Json;

namespace Platter.Interop.Tests;

/// <summary>nbdinfo: export listing, negotiated size/block sizes/flags, and allocation maps.</summary>
public sealed class NbdInfoTests(ServerFixture fixture, ITestOutputHelper output) : InteropTest(fixture, output), IClassFixture<ServerFixture>
{
    [Fact]
    public async Task Json_reports_size_block_sizes_and_flags()
    {
        var export = await Fixture.CreateExportAsync("info", 64 * MiB);

        var info = await Clients.NbdInfoJsonAsync(export.Uri);
        Output.WriteLine(info.ToString());

        Assert.Equal("newstyle-fixed", info.GetProperty("protocol").GetString());
        Assert.True(info.GetProperty("structured").GetBoolean(), "structured replies must be negotiated");
        var e = Assert.Single(info.GetProperty("exports").EnumerateArray());
        Assert.Equal(export.Name, e.GetProperty("export-name").GetString());
        Assert.Equal(64 * MiB, e.GetProperty("export-size").GetInt64());

        Assert.False(e.GetProperty("is_read_only").GetBoolean());
        foreach (var flag in new[] { "can_flush", "can_fua", "can_trim", "can_zero", "can_multi_conn" })
            Assert.True(e.GetProperty(flag).GetBoolean(), $"{flag} must be advertised");
        Assert.Contains("base:allocation", e.GetProperty("contexts").EnumerateArray().Select(c => c.GetString()));

        long minimum = e.GetProperty("block_size_minimum").GetInt64();
        long preferred = e.GetProperty("block_size_preferred").GetInt64();
        long maximum = e.GetProperty("block_size_maximum").GetInt64();
        Assert.True(IsPowerOfTwo(minimum) && minimum <= 4096, $"minimum block size {minimum} must be a power of two <= 4096");
        // 4 KiB is the engine's block: clients that honour the preferred size then never cause read-modify-write.
        Assert.Equal(4096, preferred);
        // The spec lets every client send 32 MiB requests; a smaller maximum would make well-behaved clients fail.
        Assert.True(maximum >= 32 * MiB && maximum % preferred == 0, $"maximum block size {maximum} must be >= 32 MiB and a multiple of {preferred}");
    }

    [Theory]
    [InlineData("512", 512L)]
    [InlineData("4K", 4096L)]
    [InlineData("10M", 10L * 1024 * 1024)]
    [InlineData("20G", 20L * 1024 * 1024 * 1024)]
    [InlineData("1T", 1024L * 1024 * 1024 * 1024)]
    public async Task Volume_size_given_to_the_cli_is_the_export_size(string size, long expectedBytes)
    {
        var export = await Server.CreateVolumeAsync($"size-{size.ToLowerInvariant()}", size, expectedBytes);

        var e = (await Clients.NbdInfoJsonAsync(export.Uri)).GetProperty("exports")[0];

        Assert.Equal(expectedBytes, e.GetProperty("export-size").GetInt64());
        // A thin volume of any size starts as one hole: nothing is allocated up front.
        var map = await Clients.NbdInfoMapAsync(export.Uri);
        Assert.All(map, m => Assert.True(m.IsHole && m.IsZero, $"fresh volume has non-hole run {m}"));
        Assert.Equal(expectedBytes, map.Sum(m => m.Length));
    }

    [Fact]
    public async Task List_shows_every_volume_as_an_export_and_agrees_with_the_cli()
    {
        var a = await Server.CreateVolumeAsync("list-alpha", "64M", 64 * MiB);
        var b = await Server.CreateVolumeAsync("list-beta", "128M", 128 * MiB);

        var listing = await Clients.NbdInfoListJsonAsync(Server.NbdSocketPath);
        var exports = listing.GetProperty("exports").EnumerateArray()
            .ToDictionary(x => x.GetProperty("export-name").GetString()!, x => x.GetProperty("export-size").GetInt64());
        Assert.Equal(64 * MiB, exports[a.Name]);
        Assert.Equal(128 * MiB, exports[b.Name]);

        var text = (await ProcessRunner.RunAsync(Tools.NbdInfo, ["--list", NbdExport.NbdUri("", Server.NbdSocketPath)])).EnsureSuccess();
        Assert.Contains($"export=\"{a.Name}\":", text.Stdout);
        Assert.Contains($"export=\"{b.Name}\":", text.Stdout);

        // The management API (selected by PLATTER_API_SOCKET alone) and NBD see the same volumes.
        var cli = (await Server.CliWithEnvironmentSocketAsync("volume", "list", "--json")).EnsureSuccess("platter volume list --json failed");
        var names = StringValuesNamed(Clients.ParseJson(cli, cli.Stdout), "name").ToHashSet();
        Assert.Superset(names, exports.Keys.ToHashSet());
        Assert.Superset(exports.Keys.ToHashSet(), names);
    }

    [Fact]
    public async Task Map_reports_holes_for_unwritten_and_trimmed_ranges()
    {
        var export = await Fixture.CreateExportAsync("map", 64 * MiB);

        var fresh = await Clients.NbdInfoMapAsync(export.Uri);
        Assert.All(fresh, m => Assert.True(m.IsHole && m.IsZero, $"fresh export has non-hole run {m}"));
        Assert.Equal(64 * MiB, fresh.Sum(m => m.Length));

        await Clients.QemuIoAsync(export.Uri,
            $"write -P 0xa1 {1 * MiB} {1 * MiB}",
            $"write -P 0xa2 {8 * MiB} {1 * MiB}",
            $"discard {8 * MiB + 256 * KiB} {256 * KiB}",
            "flush");

        var map = await Clients.NbdInfoMapAsync(export.Uri);
        Output.WriteLine(string.Join("\n", map));
        var actual = Clients.Coalesce(map.Select(m => (m.Offset, m.Length, Key: m.IsHole ? "hole" : m.IsZero ? "zero" : "data")));
        (long, long, string)[] expected =
        [
            (0, 1 * MiB, "hole"),
            (1 * MiB, 1 * MiB, "data"),
            (2 * MiB, 6 * MiB, "hole"),
            (8 * MiB, 256 * KiB, "data"),
            (8 * MiB + 256 * KiB, 256 * KiB, "hole"),
            (8 * MiB + 512 * KiB, 512 * KiB, "data"),
            (9 * MiB, 55 * MiB, "hole"),
        ];
        Assert.Equal(expected, actual);
        // Every hole must also read as zeros (NBD_STATE_ZERO), or clients would have to read it to know.
        Assert.All(map.Where(m => m.IsHole), m => Assert.True(m.IsZero, $"hole without the zero flag: {m}"));
    }

    private static IEnumerable<string> StringValuesNamed(JsonElement element, string property)
    {
        switch (element.ValueKind)
        {
            case JsonValueKind.Object:
                foreach (var p in element.EnumerateObject())
                {
                    if (p.NameEquals(property) && p.Value.ValueKind == JsonValueKind.String) yield return p.Value.GetString()!;
                    else foreach (var s in StringValuesNamed(p.Value, property)) yield return s;
                }
                break;
            case JsonValueKind.Array:
                foreach (var item in element.EnumerateArray())
                    foreach (var s in StringValuesNamed(item, property)) yield return s;
                break;
        }
    }

    private static bool IsPowerOfTwo(long v) => v > 0 && (v & (v - 1)) == 0;
}
