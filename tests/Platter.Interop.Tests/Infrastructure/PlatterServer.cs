using System.Diagnostics;
using System.Text;
using Xunit.Sdk;

namespace Platter.Interop.Tests.Infrastructure;

/// <summary>
/// A real <c>platter serve</c> process on a private store with NBD and the management API on unix sockets
/// (no TCP, so parallel test classes never collide on ports). Volumes are created through the real CLI.
/// </summary>
public sealed class PlatterServer : IAsyncDisposable
{
    private static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(60);
    // Longer than the server's own 30 s grace for in-flight requests, so a slow drain shows up as a slow
    // exit in the log rather than as a kill; only a real hang fails here.
    private static readonly TimeSpan StopTimeout = TimeSpan.FromSeconds(60);
    private static readonly TimeSpan CliTimeout = TimeSpan.FromSeconds(60);

    private readonly TempDirectory _root = new();
    private readonly StringBuilder _log = new();
    private Process? _process;

    public PlatterServer()
    {
        StoreDirectory = _root.File("store");
        NbdSocketPath = _root.File("nbd.sock");
        ApiSocketPath = _root.File("api.sock");
    }

    public string StoreDirectory { get; }
    /// <summary>The NBD unix socket; a test may move it before <see cref="StartAsync"/>.</summary>
    public string NbdSocketPath { get; set; }

    /// <summary>The API unix socket; a test may move it (e.g. into the store, where --store finds it) before <see cref="StartAsync"/>.</summary>
    public string ApiSocketPath { get; set; }

    /// <summary>Everything the server printed, across restarts; attached to failures.</summary>
    public string Log
    {
        get { lock (_log) return _log.ToString(); }
    }

    public bool IsRunning => _process is { HasExited: false };

    /// <summary>Start the next <see cref="StartAsync"/> with <c>--read-only</c>: every NBD export read-only.</summary>
    public bool ReadOnly { get; set; }

    /// <summary>The <c>--listen</c> value of the next <see cref="StartAsync"/>: no TCP listener unless a test needs one.</summary>
    public string Listen { get; set; } = "none";

    /// <summary>More <c>platter serve</c> arguments for the next <see cref="StartAsync"/> (TLS options).</summary>
    public string[] ExtraArguments { get; set; } = [];

    /// <summary>Path of platter.dll, copied next to the test assembly by the project reference.</summary>
    public static string PlatterDll
    {
        get
        {
            var dll = Path.Combine(AppContext.BaseDirectory, "platter.dll");
            if (!File.Exists(dll))
                throw new XunitException($"platter.dll not found next to the tests ({AppContext.BaseDirectory}): build src/Platter.Cli");
            return dll;
        }
    }

    /// <summary>The dotnet host that runs the tests; it runs platter.dll too.</summary>
    public static string DotnetHost
    {
        get
        {
            if (Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host)) return host;
            if (Environment.ProcessPath is { } self && Path.GetFileNameWithoutExtension(self) == "dotnet") return self;
            return Tools.Require("dotnet", "the .NET SDK");
        }
    }

    public async Task StartAsync()
    {
        if (IsRunning) throw new InvalidOperationException("already running");
        _process?.Dispose(); // exited on its own (or never listened): only its log remains
        _process = null;
        AppendLog($"--- starting platter serve (store {StoreDirectory}{(ReadOnly ? ", read-only" : "")})");

        string[] args =
        [
            PlatterDll, "serve",
            "--store", StoreDirectory,
            "--socket", NbdSocketPath,
            "--listen", Listen,
            "--api-socket", ApiSocketPath,
            .. (ReadOnly ? (string[])["--read-only"] : []),
            .. ExtraArguments,
        ];
        var psi = Proc.CreateStartInfo(DotnetHost, args, CleanEnvironment);
        var process = new Process { StartInfo = psi };
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) AppendLog(e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) AppendLog(e.Data); };
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        _process = process;

        var deadline = Stopwatch.StartNew();
        while (!(Signals.CanConnect(NbdSocketPath) && Signals.CanConnect(ApiSocketPath)))
        {
            if (process.HasExited)
                throw new XunitException($"platter serve exited with code {process.ExitCode} before listening\n{Log}");
            if (deadline.Elapsed > StartTimeout)
            {
                Proc.KillTree(process);
                throw new XunitException($"platter serve did not listen on {NbdSocketPath} and {ApiSocketPath} within {StartTimeout.TotalSeconds} s\n{Log}");
            }
            await Task.Delay(50);
        }
    }

    /// <summary>Stops the server with SIGTERM and returns its exit code; fails if it does not exit in time.</summary>
    public async Task<int> StopAsync()
    {
        var process = _process ?? throw new InvalidOperationException("not started");
        AppendLog("--- sending SIGTERM");
        var stopping = Stopwatch.StartNew();
        Signals.Terminate(process);
        using var cts = new CancellationTokenSource(StopTimeout);
        try
        {
            await process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            Proc.KillTree(process);
            await process.WaitForExitAsync();
            process.Dispose();
            _process = null;
            AppendLog($"--- killed: still running {StopTimeout.TotalSeconds} s after SIGTERM");
            throw new XunitException($"platter serve did not exit within {StopTimeout.TotalSeconds} s of SIGTERM\n{Log}");
        }
        int exitCode = process.ExitCode;
        process.Dispose();
        _process = null;
        AppendLog($"--- exited with code {exitCode}, {stopping.Elapsed.TotalSeconds:0.0} s after SIGTERM");
        return exitCode;
    }

    /// <summary>Kills the server with SIGKILL (a crash: no shutdown code runs) and waits for it to be gone.</summary>
    public async Task KillAsync()
    {
        var process = _process ?? throw new InvalidOperationException("not started");
        AppendLog("--- sending SIGKILL");
        process.Kill();
        await process.WaitForExitAsync();
        process.Dispose();
        _process = null;
    }

    /// <summary>Runs <c>platter ARGS --api-socket SOCKET</c> against this server.</summary>
    public Task<ProcessResult> CliAsync(params string[] args) =>
        Proc.RunAsync(DotnetHost, [PlatterDll, .. args, "--api-socket", ApiSocketPath], CliTimeout, CleanEnvironment);

    /// <summary>Runs the CLI with the API socket given only through PLATTER_API_SOCKET.</summary>
    public Task<ProcessResult> CliWithEnvironmentSocketAsync(params string[] args) =>
        Proc.RunAsync(DotnetHost, [PlatterDll, .. args], CliTimeout,
            new Dictionary<string, string?> { ["PLATTER_API_SOCKET"] = ApiSocketPath });

    /// <summary>Creates a volume of <paramref name="sizeBytes"/> (given to the CLI in MiB when whole, else in bytes).</summary>
    public Task<NbdExport> CreateExportAsync(string name, long sizeBytes) =>
        CreateVolumeAsync(name, sizeBytes % (1024 * 1024) == 0 ? $"{sizeBytes / (1024 * 1024)}M" : $"{sizeBytes}", sizeBytes);

    /// <summary>Creates a volume with <c>platter volume create NAME --size SIZE</c>; it is an export named after it.</summary>
    public async Task<NbdExport> CreateVolumeAsync(string name, string size, long sizeBytes)
    {
        var result = await CliAsync("volume", "create", name, "--size", size);
        if (result.ExitCode != 0)
            throw new XunitException($"platter volume create failed\n{result.Describe()}\n--- server log ---\n{Log}");
        return new NbdExport(name, NbdSocketPath, sizeBytes);
    }

    public async ValueTask DisposeAsync()
    {
        if (_process is { } process)
        {
            if (!process.HasExited)
            {
                Signals.Terminate(process);
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(10));
                try
                {
                    await process.WaitForExitAsync(cts.Token);
                }
                catch (OperationCanceledException)
                {
                    Proc.KillTree(process);
                }
            }
            process.Dispose();
            _process = null;
        }
        _root.Dispose();
    }

    // The developer's own PLATTER_API_SOCKET must not redirect the tests' CLI calls to another server.
    private static readonly IReadOnlyDictionary<string, string?> CleanEnvironment =
        new Dictionary<string, string?> { ["PLATTER_API_SOCKET"] = null };

    private void AppendLog(string line)
    {
        lock (_log) _log.AppendLine(line);
    }
}
