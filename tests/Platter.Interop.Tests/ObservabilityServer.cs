using System.Net;
using System.Text.RegularExpressions;
using Xunit.Sdk;

namespace Platter.Interop.Tests;

/// <summary>
/// A real <c>platter serve</c> with the management API (and dashboard) on TCP with a token and a metrics-only
/// listener, both on ports the kernel picks; their addresses are read from the server's log.
/// </summary>
public sealed partial class ObservabilityServer : IAsyncLifetime
{
    public const string Token = "dashboard-test-token";

    private readonly TempDirectory _secrets = new("plt-tok");

    public PlatterServer Server { get; } = new();

    /// <summary>http://127.0.0.1:PORT/ of the management API on TCP.</summary>
    public Uri ApiUri { get; private set; } = null!;

    /// <summary>http://127.0.0.1:PORT/metrics of the metrics-only listener.</summary>
    public Uri MetricsUri { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        var tokenFile = _secrets.Combine("token");
        await File.WriteAllTextAsync(tokenFile, Token);
        Server.ExtraArguments = ["--api-listen", "127.0.0.1:0", "--api-token-file", tokenFile, "--metrics-listen", "127.0.0.1:0"];
        await Server.StartAsync();
        // The unix sockets are up; the TCP listeners log their bound addresses before the server reports serving.
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (true)
        {
            var api = ApiAddress().Match(Server.Log);
            var metrics = MetricsAddress().Match(Server.Log);
            if (api.Success && metrics.Success)
            {
                ApiUri = new Uri($"http://{api.Groups[1].Value}/");
                MetricsUri = new Uri($"http://{metrics.Groups[1].Value}/metrics");
                return;
            }
            if (DateTime.UtcNow > deadline) throw new XunitException($"the server did not log its TCP addresses\n{Server.Log}");
            await Task.Delay(50);
        }
    }

    public async Task DisposeAsync()
    {
        await Server.DisposeAsync();
        _secrets.Dispose();
    }

    [GeneratedRegex(@"management API and dashboard on http://(127\.0\.0\.1:\d+)/")]
    private static partial Regex ApiAddress();

    [GeneratedRegex(@"metrics on http://(127\.0\.0\.1:\d+)/metrics")]
    private static partial Regex MetricsAddress();
}
