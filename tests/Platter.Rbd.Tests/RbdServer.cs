using System.Diagnostics;
using System.Text;
using Platter.Testing;
using Xunit.Sdk;

namespace Platter.Rbd.Tests;

/// <summary>A real <c>platter serve --store rbd:POOL</c> process on the test cluster, NBD and API on private unix sockets.</summary>
public sealed class RbdServer : IAsyncDisposable
{
    private readonly CephCluster _ceph;
    private readonly TempDirectory _root = new("prbd");
    private readonly StringBuilder _log = new();
    private Process? _process;

    private readonly int _opTimeoutSeconds;

    /// <param name="ceph">The test cluster.</param>
    /// <param name="opTimeoutSeconds">--ceph-op-timeout: how long a request waits for the OSDs before it fails.</param>
    public RbdServer(CephCluster ceph, int opTimeoutSeconds = 60)
    {
        _ceph = ceph;
        _opTimeoutSeconds = opTimeoutSeconds;
        NbdSocketPath = _root.Combine("nbd.sock");
        ApiSocketPath = _root.Combine("api.sock");
    }

    /// <summary>
    /// With a size (e.g. "64M"), the server runs with a node cache: <c>--cache-dir</c> <see cref="CacheDirectory"/>
    /// (kept across restarts of this server, like a node's SSD) and <c>--cache-size</c> this.
    /// </summary>
    public string? CacheSize { get; init; }

    /// <summary>The node cache directory when <see cref="CacheSize"/> is set.</summary>
    public string CacheDirectory => _root.Combine("cache");

    public string NbdSocketPath { get; }
    public string ApiSocketPath { get; }
    public int Pid => _process?.Id ?? throw new InvalidOperationException("not started");

    public string Log
    {
        get { lock (_log) return _log.ToString(); }
    }

    public string Uri(string export) => $"nbd+unix:///{export}?socket={NbdSocketPath}";

    public static string PlatterDll => Path.Combine(AppContext.BaseDirectory, "platter.dll");

    public async Task StartAsync()
    {
        var psi = ProcessRunner.StartInfo("dotnet",
        [
            PlatterDll, "serve", "--store", "rbd:" + _ceph.Pool, "--ceph-conf", _ceph.ConfFile,
            // a fenced or cut-off server must fail its requests within the test's patience, not after 5 minutes
            "--ceph-op-timeout", _opTimeoutSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture),
            "--socket", NbdSocketPath, "--api-socket", ApiSocketPath, "--listen", "none",
            .. (CacheSize is null ? Array.Empty<string>() : ["--cache-dir", CacheDirectory, "--cache-size", CacheSize]),
        ], new Dictionary<string, string?> { ["PLATTER_API_SOCKET"] = null, ["CEPH_ARGS"] = null, ["PLATTER_STORE"] = _root.Combine("state") });
        var process = new Process { StartInfo = psi };
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (_log) _log.AppendLine(e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (_log) _log.AppendLine(e.Data); };
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        _process = process;
        var deadline = Stopwatch.StartNew();
        while (!(ProcessRunner.CanConnect(NbdSocketPath) && ProcessRunner.CanConnect(ApiSocketPath)))
        {
            if (process.HasExited) throw new XunitException($"platter serve exited ({process.ExitCode}) before listening\n{Log}");
            if (deadline.Elapsed > TimeSpan.FromSeconds(60))
            {
                ProcessRunner.KillTree(process);
                throw new XunitException($"platter serve did not listen within 60 s\n{Log}");
            }
            await Task.Delay(50);
        }
    }

    public Task<ProcessResult> CliAsync(params string[] args) =>
        ProcessRunner.RunAsync("dotnet", [PlatterDll, .. args, "--api-socket", ApiSocketPath], TimeSpan.FromSeconds(90),
            new Dictionary<string, string?> { ["PLATTER_API_SOCKET"] = null });

    public async Task<string> CliOkAsync(params string[] args)
    {
        var result = await CliAsync(args);
        if (result.ExitCode != 0) throw new XunitException($"platter {string.Join(' ', args)} failed\n{result.Describe()}\n--- server log ---\n{Log}");
        return result.Stdout;
    }

    public async Task StopAsync()
    {
        if (_process is not { HasExited: false } process) return;
        ProcessRunner.Terminate(process);
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await process.WaitForExitAsync(cts.Token);
    }

    public async Task KillAsync()
    {
        var process = _process ?? throw new InvalidOperationException("not started");
        process.Kill();
        await process.WaitForExitAsync();
    }

    public void Signal(string signal) => ProcessRunner.RunAsync("kill", ["-" + signal, Pid.ToString()]).GetAwaiter().GetResult().EnsureSuccess();


    public async ValueTask DisposeAsync()
    {
        if (_process is { HasExited: false } process)
        {
            Signal("CONT");
            ProcessRunner.KillTree(process);
            await process.WaitForExitAsync();
        }
        _process?.Dispose();
        _root.Dispose();
    }
}
