using System.Text;

namespace Platter.Guest.Tests;

/// <summary>
/// The real <c>platter serve</c> process (platter.dll, built from src/Platter.Cli by the project reference)
/// on a private store, NBD and the management API on unix sockets, no TCP. The first start creates the
/// volume with the real CLI (<c>platter volume create guest --size 512M</c>); later starts reopen the same
/// store, so the guest sees whatever Platter kept across the restart.
/// </summary>
public sealed class PlatterTarget : INbdTarget
{
    // A cold start JIT-compiles the server and opens the store; on a loaded 2-core machine that can take
    // several seconds. The bound only catches a server that never listens.
    private static readonly TimeSpan ReadyTimeout = TimeSpan.FromSeconds(60);
    // Longer than the server's own 30 s grace for in-flight requests, so only a real hang fails the stop.
    private static readonly TimeSpan StopTimeout = TimeSpan.FromSeconds(60);
    private static readonly TimeSpan CliTimeout = TimeSpan.FromSeconds(60);

    // A developer's own PLATTER_API_SOCKET must not send the test's CLI calls to another server, and
    // PLATTER_STORE must not matter because every path is given explicitly.
    private static readonly IReadOnlyDictionary<string, string?> CleanEnvironment =
        new Dictionary<string, string?> { ["PLATTER_API_SOCKET"] = null, ["PLATTER_STORE"] = null };

    private readonly string _storeDirectory;
    private readonly string _apiSocketPath;
    private readonly StringBuilder _log = new();
    private ServerProcess? _server;
    private bool _volumeCreated;

    /// <summary>Creates a target whose store and sockets live in <paramref name="workDirectory"/>.</summary>
    public PlatterTarget(string workDirectory, long sizeBytes)
    {
        if (sizeBytes % 512 != 0) throw new ArgumentOutOfRangeException(nameof(sizeBytes), "a volume size is a multiple of 512 bytes");
        _storeDirectory = Path.Combine(workDirectory, "store");
        _apiSocketPath = Path.Combine(workDirectory, "api.sock");
        SocketPath = Path.Combine(workDirectory, "nbd.sock");
        SizeBytes = sizeBytes;
    }

    /// <inheritdoc/>
    public string Name => "platter";

    /// <inheritdoc/>
    public string SocketPath { get; }

    /// <inheritdoc/>
    public string ExportName => "guest";

    /// <inheritdoc/>
    public long SizeBytes { get; }

    /// <inheritdoc/>
    public string Log
    {
        get
        {
            lock (_log)
            {
                return _server is null ? _log.ToString() : _log + _server.Output;
            }
        }
    }

    /// <summary>platter.dll next to the test assembly (copied there by the project reference to src/Platter.Cli).</summary>
    public static string PlatterDll
    {
        get
        {
            var dll = Path.Combine(AppContext.BaseDirectory, "platter.dll");
            if (!File.Exists(dll)) throw new InvalidOperationException($"platter.dll not found next to the tests ({AppContext.BaseDirectory}): build src/Platter.Cli");
            return dll;
        }
    }

    /// <summary>The dotnet host running the tests; it runs platter.dll too, so no separate install is needed.</summary>
    public static string DotnetHost
    {
        get
        {
            if (Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host)) return host;
            if (Environment.ProcessPath is { } self && Path.GetFileNameWithoutExtension(self) == "dotnet") return self;
            return "dotnet";
        }
    }

    /// <inheritdoc/>
    public async Task StartAsync(CancellationToken cancellationToken)
    {
        if (_server is not null) throw new InvalidOperationException("already started");
        AppendLog($"--- platter serve --store {_storeDirectory} (volume {(_volumeCreated ? "exists" : "to be created")})");
        _server = await ServerProcess.StartAsync(DotnetHost,
        [
            PlatterDll, "serve",
            "--store", _storeDirectory,
            "--socket", SocketPath,
            "--listen", "none",
            "--api-socket", _apiSocketPath,
        ], [SocketPath, _apiSocketPath], ReadyTimeout, cancellationToken, CleanEnvironment);
        AppendLog($"--- pid {_server.Id} listening");

        if (!_volumeCreated)
        {
            var size = SizeBytes % (1024 * 1024) == 0 ? $"{SizeBytes / (1024 * 1024)}M" : SizeBytes.ToString();
            var result = await ProcessRunner.RunAsync(DotnetHost,
                [PlatterDll, "volume", "create", ExportName, "--size", size, "--api-socket", _apiSocketPath],
                CliTimeout, cancellationToken, CleanEnvironment);
            AppendLog($"--- platter volume create {ExportName} --size {size}: exit {result.ExitCode}\n{result.StandardOutput}{result.StandardError}");
            if (result.TimedOut || result.ExitCode != 0)
            {
                throw new InvalidOperationException($"platter volume create {ExportName} --size {size} failed " +
                                                    $"({(result.TimedOut ? "timed out" : $"exit {result.ExitCode}")}):\n{Log}");
            }
            _volumeCreated = true;
        }
    }

    /// <summary>Runs the real CLI (<c>platter ARGS --api-socket SOCKET</c>) against this server.</summary>
    public Task<ProcessResult> CliAsync(CancellationToken cancellationToken, params string[] args) =>
        ProcessRunner.RunAsync(DotnetHost, [PlatterDll, .. args, "--api-socket", _apiSocketPath], CliTimeout, cancellationToken, CleanEnvironment);

    /// <inheritdoc/>
    public async Task StopAsync(bool graceful, CancellationToken cancellationToken)
    {
        if (_server is null) return;
        var server = _server;
        var pid = server.Id;
        try
        {
            AppendLog(graceful ? $"--- SIGTERM to pid {pid}" : $"--- SIGKILL to pid {pid}");
            // Graceful: exit code 0 within the timeout is required (ServerProcess throws otherwise).
            await server.StopAsync(graceful, StopTimeout, cancellationToken);
        }
        finally
        {
            var exitCode = server.ExitCode;
            await server.DisposeAsync();
            lock (_log)
            {
                _log.Append(server.Output);
                _log.AppendLine($"--- pid {pid} exited with code {exitCode?.ToString() ?? "? (killed)"}");
                _server = null;
            }
        }
    }

    /// <inheritdoc/>
    public async ValueTask DisposeAsync()
    {
        if (_server is not null)
        {
            // A test that failed half-way leaves the server running: stop it the clean way if it can.
            try { await StopAsync(graceful: true, CancellationToken.None); }
            catch (Exception e) when (e is InvalidOperationException or TimeoutException) { }
        }
    }

    private void AppendLog(string line)
    {
        lock (_log) { _log.AppendLine(line); }
    }
}
