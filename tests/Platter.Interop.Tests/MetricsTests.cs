using System.Globalization;
using System.Text.RegularExpressions;

namespace Platter.Interop.Tests;

/// <summary>
/// /metrics of a real server, read by Prometheus' own checker (<c>promtool check metrics</c>, Debian's
/// <c>prometheus</c> package), and its counters following real qemu-io traffic.
/// </summary>
public sealed class MetricsTests(ObservabilityServer fixture, ITestOutputHelper output) : IClassFixture<ObservabilityServer>
{
    private const long MiB = 1024 * 1024;

    [Fact]
    public async Task Metrics_pass_promtool_and_count_the_io_qemu_does()
    {
        var server = fixture.Server;
        var export = await server.CreateVolumeAsync("metered", "64M", 64 * MiB);
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(30) };

        var before = await ScrapeAsync(http, fixture.MetricsUri);
        await Clients.QemuIoAsync(export.Uri, $"write -P 0x5a 0 {2 * MiB}", "flush", $"read -P 0x5a 0 {1 * MiB}");
        var unknown = await ProcessRunner.RunAsync(Tools.QemuIo, ["-f", "raw", "-c", "read 0 4k", NbdExport.NbdUri("no-such-volume", server.NbdSocketPath)]);
        Assert.NotEqual(0, unknown.ExitCode);
        var after = await ScrapeAsync(http, fixture.MetricsUri);
        output.WriteLine(after);

        foreach (var text in new[] { before, after })
        {
            var check = await ProcessRunner.RunAsync(Tools.Promtool, ["check", "metrics"], standardInput: text);
            // promtool prints lint findings (naming advice) on stdout; a parse error is a non-zero exit.
            Assert.True(check.ExitCode == 0, $"promtool rejected /metrics\n{check.Describe()}");
        }

        Assert.Equal(2 * MiB, Value(after, "platter_volume_written_bytes_total", "metered") - ValueOrZero(before, "platter_volume_written_bytes_total", "metered"));
        Assert.True(Value(after, "platter_volume_read_bytes_total", "metered") >= 1 * MiB);
        Assert.True(Value(after, "platter_volume_request_duration_seconds_count", "metered", "write") >= 1);
        Assert.True(Value(after, "platter_volume_request_duration_seconds_count", "metered", "read") >= 1);
        Assert.True(Value(after, "platter_volume_request_duration_seconds_count", "metered", "flush") >= 1);
        // Latencies land in buckets: the +Inf bucket equals the count.
        Assert.Equal(Value(after, "platter_volume_request_duration_seconds_count", "metered", "write"),
            Value(after, "platter_volume_request_duration_seconds_bucket", "metered", "write", "+Inf"));
        Assert.Equal(0, Value(after, "platter_volume_errors_total", "metered", "write"));
        Assert.Equal(0, Value(after, "platter_volume_checksum_failures_total", "metered"));
        Assert.True(Value(after, "platter_nbd_connections_total") >= Value(before, "platter_nbd_connections_total") + 2);
        Assert.Equal(1, Value(after, "platter_nbd_handshakes_refused_total") - Value(before, "platter_nbd_handshakes_refused_total"));
        Assert.True(Value(after, "platter_store_commits_total") > Value(before, "platter_store_commits_total"));
        Assert.True(Value(after, "platter_store_used_bytes") >= 2 * MiB);
        Assert.True(Value(after, "platter_store_journal_half_bytes") > 0);
        // No series for a name that is not a volume: clients guessing names cannot grow the metrics.
        Assert.DoesNotContain("no-such-volume", after);

        // The same numbers on the management API's own /metrics, which needs no token (it only reads).
        var viaApi = await ScrapeAsync(http, new Uri(fixture.ApiUri, "metrics"));
        Assert.Equal(Value(after, "platter_volume_written_bytes_total", "metered"), Value(viaApi, "platter_volume_written_bytes_total", "metered"));

        // The server logged the connection opening and closing, with the export, at info level.
        await server.AssertLogContainsAsync("opened export 'metered'");
        await server.AssertLogContainsAsync("closed export 'metered'");
        await server.AssertLogContainsAsync("handshake refused: unknown export 'no-such-volume'");
    }

    private static async Task<string> ScrapeAsync(HttpClient http, Uri uri)
    {
        using var response = await http.GetAsync(uri);
        var body = await response.Content.ReadAsStringAsync();
        Assert.True(response.IsSuccessStatusCode, $"GET {uri}: {(int)response.StatusCode}\n{body}");
        Assert.StartsWith("text/plain", response.Content.Headers.ContentType?.MediaType);
        return body;
    }

    // Before the first request an export has no series yet.
    private static double ValueOrZero(string exposition, string metric, params string[] labelValues) =>
        exposition.Contains(metric + "{volume=\"" + labelValues[0] + "\"", StringComparison.Ordinal) ? Value(exposition, metric, labelValues) : 0;

    /// <summary>The value of one sample: labels given in exposition order (volume, op, le), none for an unlabelled metric.</summary>
    private static double Value(string exposition, string metric, params string[] labelValues)
    {
        var labels = labelValues.Length == 0 ? "" : "\\{" + string.Join(",", labelValues.Select(v => "[a-z]+=\"" + Regex.Escape(v) + "\"")) + "\\}";
        var match = Regex.Match(exposition, "^" + Regex.Escape(metric) + labels + " (\\S+)$", RegexOptions.Multiline);
        Assert.True(match.Success, $"no sample {metric}{{{string.Join(",", labelValues)}}} in /metrics");
        return double.Parse(match.Groups[1].Value, CultureInfo.InvariantCulture);
    }
}
