using Platter.Server.Api;

namespace Platter.Server.Tests;

/// <summary>A real <see cref="PlatterHost"/> on a temporary store and sockets, with NBD off unless asked for.</summary>
internal sealed class RunningHost : IAsyncDisposable
{
    private RunningHost(TempDirectory directory, PlatterHost host)
    {
        Directory = directory;
        Host = host;
    }

    public TempDirectory Directory { get; }
    public PlatterHost Host { get; }
    public string StorePath => Directory.Combine("store");
    public string ApiSocket => Directory.Combine("api.sock");

    public static async Task<RunningHost> StartAsync(Func<TempDirectory, PlatterHostOptions>? configure = null)
    {
        var directory = new TempDirectory();
        var options = configure?.Invoke(directory) ?? new PlatterHostOptions
        {
            StoreDirectory = directory.Combine("store"),
            ApiSocketPath = directory.Combine("api.sock"),
        };
        var host = new PlatterHost(options);
        try
        {
            await host.StartAsync();
        }
        catch
        {
            directory.Dispose();
            throw;
        }
        return new RunningHost(directory, host);
    }

    public PlatterApiClient Client() => PlatterApiClient.ForUnixSocket(ApiSocket);

    public Dictionary<string, string> CliEnvironment()
    {
        var env = CliRunner.Environment(Directory.Path);
        env["PLATTER_API_SOCKET"] = ApiSocket;
        return env;
    }

    public async ValueTask DisposeAsync()
    {
        await Host.DisposeAsync();
        Directory.Dispose();
    }
}
