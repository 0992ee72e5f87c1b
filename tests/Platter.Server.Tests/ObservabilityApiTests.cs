using System.Globalization;
using System.Net;
using System.Text.Json;
using System.Text.RegularExpressions;
using Platter.Server.Api;
using Platter.Server.Metrics;
using Prometheus;
using Xunit;

namespace Platter.Server.Tests;

/// <summary>The OpenAPI description, the metrics switches and listener, and what counting a request costs.</summary>
public class ObservabilityApiTests
{
    [Fact]
    public async Task OpenApiDescribesEveryEndpointAndTheReadmeListsThemAll()
    {
        await using var server = await RunningHost.StartAsync();
        using var http = UnixHttp.Client(server.ApiSocket);
        using var response = await http.GetAsync(ManagementApi.OpenApiPath.TrimStart('/'));
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        using var document = JsonDocument.Parse(await response.Content.ReadAsStringAsync());
        var operations = Operations(document).ToList();

        // Every JSON endpoint the API maps is described (the list the CLI's client uses), with its parameters.
        foreach (var expected in new[]
                 {
                     "GET /v1/health", "GET /v1/usage", "GET /v1/stats", "GET /v1/volumes", "POST /v1/volumes", "GET /v1/volumes/{name}", "POST /v1/volumes/{name}/cache", "POST /v1/volumes/{name}/release",
                     "DELETE /v1/volumes/{name}", "POST /v1/volumes/{name}/resize", "POST /v1/volumes/{name}/rename", "GET /v1/snapshots",
                     "GET /v1/volumes/{name}/snapshots", "POST /v1/volumes/{name}/snapshots", "GET /v1/volumes/{name}/snapshots/{snapshot}",
                     "DELETE /v1/volumes/{name}/snapshots/{snapshot}", "POST /v1/volumes/{name}/snapshots/{snapshot}/clone",
                     "POST /v1/volumes/{name}/snapshots/{snapshot}/rollback", "GET /v1/volumes/{name}/diff", "GET /v1/space",
                     "POST /v1/volumes/{name}/flatten",
                 })
        {
            Assert.Contains(expected, operations);
        }
        var paths = document.RootElement.GetProperty("paths");
        var clone = paths.GetProperty("/v1/volumes/{name}/snapshots/{snapshot}/clone").GetProperty("post");
        var parameters = clone.GetProperty("parameters").EnumerateArray().Select(p => p.GetProperty("name").GetString()).ToList();
        Assert.Equal(["name", "snapshot"], parameters);
        Assert.True(clone.GetProperty("requestBody").GetProperty("content").TryGetProperty("application/json", out _));
        Assert.True(clone.GetProperty("responses").TryGetProperty("201", out _));
        var diff = paths.GetProperty("/v1/volumes/{name}/diff").GetProperty("get").GetProperty("parameters").EnumerateArray()
            .Select(p => p.GetProperty("name").GetString()).ToList();
        Assert.Contains("from", diff);

        var readme = File.ReadAllText(Path.Combine(Repository.Root, "README.md"));
        var missing = operations.Where(o => !readme.Contains("`" + o + "`", StringComparison.Ordinal)).ToList();
        Assert.True(missing.Count == 0, "README.md does not list (as `METHOD /path`): " + string.Join(", ", missing));
    }

    [Fact]
    public async Task MetricsListenerServesOnlyMetricsWithoutAToken()
    {
        await using var server = await RunningHost.StartAsync(dir => new PlatterHostOptions
        {
            StoreDirectory = dir.Combine("store"),
            ApiSocketPath = dir.Combine("api.sock"),
            MetricsTcpEndPoint = new IPEndPoint(IPAddress.Loopback, 0),
        });
        var endPoint = server.Host.MetricsTcpEndPoint;
        Assert.NotNull(endPoint);
        Assert.NotEqual(0, endPoint!.Port);
        using var http = new HttpClient { BaseAddress = new Uri($"http://{endPoint}/") };
        using var metrics = await http.GetAsync("metrics");
        Assert.Equal(HttpStatusCode.OK, metrics.StatusCode);
        Assert.Contains("platter_store_free_bytes", await metrics.Content.ReadAsStringAsync());
        using var volumes = await http.GetAsync("v1/volumes");
        Assert.Equal(HttpStatusCode.NotFound, volumes.StatusCode);
    }

    [Fact]
    public async Task NoMetricsTurnsCountingAndTheEndpointOff()
    {
        await using var server = await RunningHost.StartAsync(dir => new PlatterHostOptions
        {
            StoreDirectory = dir.Combine("store"),
            ApiSocketPath = dir.Combine("api.sock"),
            Metrics = false,
        });
        Assert.Null(server.Host.Metrics);
        using var http = UnixHttp.Client(server.ApiSocket);
        using var metrics = await http.GetAsync("metrics");
        Assert.Equal(HttpStatusCode.NotFound, metrics.StatusCode);
        using var stats = await http.GetAsync("v1/stats");
        var dto = JsonSerializer.Deserialize(await stats.Content.ReadAsStringAsync(), PlatterJsonContext.Default.StatsDto)!;
        Assert.False(dto.MetricsEnabled);
        Assert.Empty(dto.Volumes);

        Assert.Equal("--metrics-listen and --no-metrics contradict each other", new PlatterHostOptions
        {
            StoreDirectory = "/x", ApiSocketPath = "/x/api.sock", Metrics = false, MetricsTcpEndPoint = new IPEndPoint(IPAddress.Loopback, 0),
        }.Validate());
    }

    [Fact]
    public async Task CountingARequestAllocatesNothing()
    {
        var metrics = new PlatterMetrics();
        var volume = metrics.ForVolume("vm1");
        // Warm up every path measured below: first use of a series may allocate (and a CI run once counted 2.7 KB
        // from an error path the warm-up had not touched).
        for (int i = 0; i < 1000; i++) volume.Done((VolumeOp)(i % 5), 4096, VolumeMetrics.Start());
        volume.Failed(VolumeOp.Read, StorageError.ChecksumMismatch);
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 100_000; i++)
        {
            long start = VolumeMetrics.Start();
            volume.Done((VolumeOp)(i % 5), 4096, start);
        }
        volume.Failed(VolumeOp.Read, StorageError.ChecksumMismatch);
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.Equal(0, allocated);

        var totals = volume.Totals();
        Assert.Equal(200 + 20_000, totals.Writes);
        Assert.Equal(200 + 20_000, totals.Reads);
        Assert.Equal(2, totals.ChecksumFailures);
        Assert.Same(volume, metrics.ForVolume("vm1"));

        // A deleted volume's series go away with it (and its snapshots').
        metrics.ForVolume("vm1@s1").Done(VolumeOp.Read, 512, VolumeMetrics.Start());
        metrics.Forget("vm1");
        using var text = new MemoryStream();
        await metrics.Registry.CollectAndExportAsTextAsync(text);
        Assert.DoesNotContain("vm1", System.Text.Encoding.UTF8.GetString(text.ToArray()));
    }

    /// <summary>
    /// The request path counts into buckets of its own and the histogram series get them at each scrape: every request
    /// must reach the exposed histogram exactly once, in the bucket its duration falls in, however often it is scraped.
    /// Durations are whatever the clock says, so the check is against the counters' own totals, not fixed values.
    /// </summary>
    [Fact]
    public async Task EveryCountedRequestReachesTheScrapedHistogramOnce()
    {
        var metrics = new PlatterMetrics();
        var volume = metrics.ForVolume("vm2");
        long reads = 0;
        for (int scrape = 1; scrape <= 3; scrape++)
        {
            for (int i = 0; i < 1000 * scrape; i++, reads++)
            {
                long start = VolumeMetrics.Start();
                // Every few requests a slow one, so that more than one bucket fills.
                if (i % 250 == 0) Thread.SpinWait(20_000);
                volume.Done(VolumeOp.Read, 4096, start);
            }
            string text = await ScrapeAsync(metrics);
            string series = "platter_volume_request_duration_seconds";
            const string labels = "volume=\"vm2\",op=\"read\"";
            Assert.Equal(reads, long.Parse(Sample(text, $"{series}_count{{{labels}}}"), System.Globalization.CultureInfo.InvariantCulture));
            Assert.Equal(reads, long.Parse(Sample(text, $"{series}_bucket{{{labels},le=\"+Inf\"}}"), System.Globalization.CultureInfo.InvariantCulture));
            Assert.Equal(reads * 4096, double.Parse(Sample(text, $"platter_volume_read_bytes_total{{volume=\"vm2\"}}"), System.Globalization.CultureInfo.InvariantCulture));
            var totals = volume.Totals();
            Assert.Equal(reads, totals.Reads);
            double sum = double.Parse(Sample(text, $"{series}_sum{{{labels}}}"), System.Globalization.CultureInfo.InvariantCulture);
            Assert.InRange(sum, totals.ReadSeconds * (1 - 1e-9), totals.ReadSeconds * (1 + 1e-9));
            // Cumulative buckets never decrease, and more than one holds requests.
            var buckets = Regex.Matches(text, $@"^{series}_bucket\{{{Regex.Escape(labels)},le=""[^""]+""\}} (\d+)", RegexOptions.Multiline)
                .Select(m => long.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture)).ToList();
            Assert.Equal(17, buckets.Count);
            for (int b = 1; b < buckets.Count; b++) Assert.True(buckets[b] >= buckets[b - 1], $"bucket {b} below bucket {b - 1}:\n{text}");
            Assert.True(buckets[0] < reads || buckets.Distinct().Count() > 1, $"every request in one bucket:\n{text}");
        }
    }

    /// <summary>
    /// Each thread counts into a block of its own, added up at the scrape: requests counted on many threads at once,
    /// by threads that then exit, and on two exports that share threads, must all reach the scrape exactly once, also
    /// after a deleted export's slot is reused by a new one.
    /// </summary>
    [Fact]
    public async Task RequestsCountedOnManyThreadsReachTheScrapeExactlyOnce()
    {
        var metrics = new PlatterMetrics();
        var a = metrics.ForVolume("va");
        var b = metrics.ForVolume("vb");
        const int PerThread = 20_000;
        long expected = 0;
        for (int wave = 1; wave <= 3; wave++)
        {
            var threads = Enumerable.Range(0, 4).Select(t => new Thread(() =>
            {
                for (int i = 0; i < PerThread; i++)
                {
                    a.Done(VolumeOp.Read, 4096, VolumeMetrics.Start());
                    if (i % 2 == 0) b.Done(VolumeOp.Write, 512, VolumeMetrics.Start());
                }
            })).ToList();
            threads.ForEach(t => t.Start());
            // Scrape while they count: nothing may be counted twice or lost across scrapes.
            string during = await ScrapeAsync(metrics);
            threads.ForEach(t => t.Join());
            expected += 4 * PerThread;
            string text = await ScrapeAsync(metrics);
            Assert.Equal(expected, long.Parse(Sample(text, "platter_volume_request_duration_seconds_count{volume=\"va\",op=\"read\"}"), CultureInfo.InvariantCulture));
            Assert.Equal(expected / 2, long.Parse(Sample(text, "platter_volume_request_duration_seconds_count{volume=\"vb\",op=\"write\"}"), CultureInfo.InvariantCulture));
            Assert.Equal(expected * 4096, double.Parse(Sample(text, "platter_volume_read_bytes_total{volume=\"va\"}"), CultureInfo.InvariantCulture));
            Assert.Equal(expected / 2 * 512, double.Parse(Sample(text, "platter_volume_written_bytes_total{volume=\"vb\"}"), CultureInfo.InvariantCulture));
            Assert.Equal(expected, a.Totals().Reads);
            Assert.True(long.Parse(Sample(during, "platter_volume_request_duration_seconds_count{volume=\"va\",op=\"read\"}"), CultureInfo.InvariantCulture) <= expected);
        }

        // A new export, which may take over the deleted one's slot, starts from zero on a thread that counted for the old one,
        // and the old instance (a connection still open to it) keeps its own counts.
        metrics.Forget("vb");
        a.Done(VolumeOp.Read, 4096, VolumeMetrics.Start());
        b.Done(VolumeOp.Write, 512, VolumeMetrics.Start());
        var c = metrics.ForVolume("vc");
        c.Done(VolumeOp.Write, 512, VolumeMetrics.Start());
        b.Done(VolumeOp.Write, 512, VolumeMetrics.Start());
        c.Done(VolumeOp.Write, 512, VolumeMetrics.Start());
        Assert.Equal(2, c.Totals().Writes);
        Assert.Equal(expected / 2 + 2, b.Totals().Writes);
        Assert.Equal(expected + 1, a.Totals().Reads);
    }

    private static async Task<string> ScrapeAsync(PlatterMetrics metrics)
    {
        using var stream = new MemoryStream();
        await metrics.Registry.CollectAndExportAsTextAsync(stream);
        return System.Text.Encoding.UTF8.GetString(stream.ToArray());
    }

    private static string Sample(string text, string name)
    {
        var line = text.Split('\n').FirstOrDefault(l => l.StartsWith(name + " ", StringComparison.Ordinal));
        Assert.True(line is not null, $"no sample {name} in:\n{text}");
        return line![(name.Length + 1)..].Trim();
    }

    private static IEnumerable<string> Operations(JsonDocument document)
    {
        foreach (var path in document.RootElement.GetProperty("paths").EnumerateObject())
        {
            foreach (var method in path.Value.EnumerateObject())
            {
                if (method.Name is "get" or "post" or "put" or "delete" or "patch" or "head")
                    yield return method.Name.ToUpperInvariant() + " " + path.Name;
            }
        }
    }
}
