using System.Text;
using Xunit.Sdk;

namespace Platter.Testing;

/// <summary>One export a test can point real NBD clients at.</summary>
public sealed record NbdExport(string Name, string SocketPath, long SizeBytes)
{
    /// <summary>The NBD URI (nbd+unix:///NAME?socket=PATH) every libnbd and QEMU tool accepts.</summary>
    public string Uri => NbdUri(Name, SocketPath);

    /// <summary>The NBD URI of export <paramref name="name"/> on the unix socket <paramref name="socketPath"/>.</summary>
    public static string NbdUri(string name, string socketPath) =>
        $"nbd+unix:///{System.Uri.EscapeDataString(name)}?socket={socketPath}";
}

/// <summary>
/// A real <c>platter serve</c> process (platter.dll, copied next to the tests by a project reference to
/// src/Platter.Cli, or the published binary named by <c>PLATTER_TEST_BINARY</c>) on a private store, with NBD and the management API on unix sockets and no TCP unless asked
/// for, so parallel tests never collide on ports. It can be stopped (SIGTERM), killed (SIGKILL) and started again
/// on the same store; <see cref="Log"/> keeps what every run printed. Volumes are created through the real CLI.
/// </summary>
public sealed class PlatterServer : IAsyncDisposable
{
    // A cold start JIT-compiles the server and opens the store; on a loaded 2-core machine that can take several
    // seconds. The bound only catches a server that never listens.
    private static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(60);
    // Longer than the server's own 30 s grace for in-flight requests, so a slow drain shows up as a slow exit in the
    // log rather than as a kill; only a real hang fails here.
    private static readonly TimeSpan StopTimeout = TimeSpan.FromSeconds(60);
    private static readonly TimeSpan CliTimeout = TimeSpan.FromSeconds(60);

    // A developer's own PLATTER_API_SOCKET must not send the tests' CLI calls to another server, and PLATTER_STORE
    // must not matter because every path is given explicitly.
    private static readonly IReadOnlyDictionary<string, string?> CleanEnvironment =
        new Dictionary<string, string?> { ["PLATTER_API_SOCKET"] = null, ["PLATTER_STORE"] = null };

    private readonly TempDirectory? _ownedRoot;
    private readonly StringBuilder _log = new();
    private ChildProcess? _process;

    /// <summary>
    /// A server whose store and sockets live in <paramref name="workDirectory"/>, or in a private temp directory
    /// (removed on dispose) when none is given.
    /// </summary>
    public PlatterServer(string? workDirectory = null)
    {
        if (workDirectory is null)
        {
            _ownedRoot = new TempDirectory("plts");
            workDirectory = _ownedRoot.Path;
        }
        StoreDirectory = Path.Combine(workDirectory, "store");
        NbdSocketPath = Path.Combine(workDirectory, "nbd.sock");
        ApiSocketPath = Path.Combine(workDirectory, "api.sock");
        CacheDirectory = Path.Combine(workDirectory, "cache");
    }

    /// <summary>
    /// The store directory (<c>--store</c>); settable before a start, so a test may put the store on a file system of
    /// its own (a small loop-mounted one, for the full-disk tests).
    /// </summary>
    public string StoreDirectory { get; set; }

    /// <summary>
    /// The NBD unix socket (<c>--socket</c>), unless <see cref="ServeNbd"/> is off; a test may move it before
    /// <see cref="StartAsync"/>.
    /// </summary>
    public string NbdSocketPath { get; set; }

    /// <summary>
    /// The management API's unix socket (<c>--api-socket</c>); a test may move it (e.g. into the store, where
    /// <c>--store</c> finds it) before <see cref="StartAsync"/>.
    /// </summary>
    public string ApiSocketPath { get; set; }

    /// <summary>Start the next <see cref="StartAsync"/> with <c>--read-only</c>: every NBD export read-only.</summary>
    public bool ReadOnly { get; set; }

    /// <summary>Serve NBD on <see cref="NbdSocketPath"/>; off gives <c>--socket none</c> (the API alone).</summary>
    public bool ServeNbd { get; set; } = true;

    /// <summary>
    /// The <c>--listen</c> value of the next <see cref="StartAsync"/>: no TCP listener unless a test needs one; null
    /// leaves the option out (the server's own default).
    /// </summary>
    public string? Listen { get; set; } = "none";

    /// <summary>Start the next <see cref="StartAsync"/> with <c>--verbose</c> (a log line per API request).</summary>
    public bool Verbose { get; set; }

    /// <summary>
    /// Read the server's output as it comes (the default). Off, nothing reads it until the server has exited, like a
    /// log consumer that stalled: the server must keep serving all the same.
    /// </summary>
    public bool ReadOutput { get; set; } = true;

    /// <summary>
    /// Environment variables for the next <see cref="StartAsync"/>'s server process (a null value removes one), on top
    /// of the clean environment every start gets; for example a .NET startup hook that injects a fault.
    /// </summary>
    public Dictionary<string, string?> Environment { get; } = new(StringComparer.Ordinal);

    /// <summary>
    /// With a size (e.g. "64M"), the next <see cref="StartAsync"/> runs with a node cache (<c>--cache-dir</c>
    /// <see cref="CacheDirectory"/> <c>--cache-size</c> this): for cluster stores (<c>--store rbd:POOL</c>).
    /// </summary>
    public string? CacheSize { get; set; }

    /// <summary>The node cache directory when <see cref="CacheSize"/> is set; kept across restarts, like a node's SSD.</summary>
    public string CacheDirectory { get; }

    /// <summary>More <c>platter serve</c> arguments for the next <see cref="StartAsync"/> (TLS options).</summary>
    public string[] ExtraArguments { get; set; } = [];

    /// <summary>Everything the server printed, across restarts, with start and stop markers; for failure messages.</summary>
    public string Log
    {
        get
        {
            lock (_log) return _process is null ? _log.ToString() : _log + _process.Output;
        }
    }

    /// <summary>
    /// Waits (bounded) until the server's log contains <paramref name="fragment"/>, and fails the test with the log if
    /// it never does. The server logs through a background queue and its output is read asynchronously, so a line about
    /// something a client just saw can reach <see cref="Log"/> a moment after the client saw it.
    /// </summary>
    public async Task AssertLogContainsAsync(string fragment, TimeSpan? timeout = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(30));
        while (!Log.Contains(fragment, StringComparison.Ordinal))
        {
            if (DateTime.UtcNow >= deadline)
                throw new XunitException($"the server log never showed \"{fragment}\"\n--- server log ---\n{Log}");
            await Task.Delay(50);
        }
    }

    /// <summary>
    /// Waits (bounded) until a line of the server's log matches <paramref name="pattern"/> and returns the match (for a
    /// value the server only logs, such as the port it chose for <c>--listen 127.0.0.1:0</c>); fails the test with the log
    /// if none does. <see cref="StartAsync"/> returns once the unix sockets exist, which can be before the TCP
    /// listener's line has been read from the server's output.
    /// </summary>
    public async Task<System.Text.RegularExpressions.Match> WaitForLogMatchAsync(string pattern, TimeSpan? timeout = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(30));
        while (true)
        {
            var match = System.Text.RegularExpressions.Regex.Match(Log, pattern);
            if (match.Success) return match;
            if (DateTime.UtcNow >= deadline)
                throw new XunitException($"no line of the server log matched /{pattern}/\n--- server log ---\n{Log}");
            await Task.Delay(50);
        }
    }

    /// <summary>True while a started server process has not exited.</summary>
    public bool IsRunning => _process is { HasExited: false };

    /// <summary>The running server's process id.</summary>
    public int ProcessId => (_process ?? throw new InvalidOperationException("not started")).Id;

    /// <summary>
    /// <c>platter SEND... | platter RECEIVE...</c> through a real shell pipe (pipefail: either end failing fails it),
    /// each end against its own server's API socket.
    /// </summary>
    public static Task<ProcessResult> PipeAsync(PlatterServer from, string[] send, PlatterServer to, string[] receive)
    {
        static string Quote(IEnumerable<string> args) => string.Join(' ', args.Select(a => "'" + a + "'"));
        string platter = Quote([DotnetHost, PlatterDll]);
        return ProcessRunner.RunAsync("bash", ["-c",
            $"set -o pipefail; {platter} {Quote(send)} --api-socket '{from.ApiSocketPath}' | {platter} {Quote(receive)} --api-socket '{to.ApiSocketPath}'"]);
    }

    /// <summary>platter.dll next to the test assembly (copied there by the project reference to src/Platter.Cli).</summary>
    public static string PlatterDll
    {
        get
        {
            var dll = Path.Combine(AppContext.BaseDirectory, "platter.dll");
            if (!File.Exists(dll))
                throw new XunitException($"platter.dll not found next to the tests ({AppContext.BaseDirectory}): reference src/Platter.Cli and build it");
            return dll;
        }
    }

    /// <summary>The dotnet host that runs the tests; it runs platter.dll too, so no separate install is needed.</summary>
    public static string DotnetHost
    {
        get
        {
            if (System.Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host)) return host;
            if (System.Environment.ProcessPath is { } self && Path.GetFileNameWithoutExtension(self) == "dotnet") return self;
            return ProcessRunner.RequireTool("dotnet", "the .NET SDK");
        }
    }

    /// <summary>
    /// A published <c>platter</c> executable (the Native AOT binary) to run instead of platter.dll, from
    /// <c>PLATTER_TEST_BINARY</c>; null runs platter.dll with <see cref="DotnetHost"/>. scripts/test.sh sets it to run
    /// the metrics and dashboard tests once more against the binary the .deb ships.
    /// </summary>
    public static string? TestBinary =>
        System.Environment.GetEnvironmentVariable("PLATTER_TEST_BINARY") is { Length: > 0 } binary ? Path.GetFullPath(binary) : null;

    /// <summary>
    /// The Native AOT binary the .deb ships, when the run has one: <c>PLATTER_TEST_BINARY</c>, else
    /// <c>PLATTER_DEB_BINARY</c> (scripts/test.sh publishes it once and sets the latter for the whole run); null
    /// otherwise. A test that must exercise the shipped binary rather than the JIT build (the guest restart test: how
    /// fast the server is back decides how long guests wait) sets <see cref="Binary"/> to it.
    /// </summary>
    public static string? AotBinary =>
        TestBinary ?? (System.Environment.GetEnvironmentVariable("PLATTER_DEB_BINARY") is { Length: > 0 } deb ? Path.GetFullPath(deb) : null);

    /// <summary>The program and arguments that run <c>platter ARGS</c>: <see cref="TestBinary"/>, else dotnet platter.dll.</summary>
    public static (string FileName, string[] Arguments) PlatterCommand(IEnumerable<string> args) => PlatterCommand(TestBinary, args);

    private static (string FileName, string[] Arguments) PlatterCommand(string? binary, IEnumerable<string> args) =>
        binary is not null ? (binary, [.. args]) : (DotnetHost, [PlatterDll, .. args]);

    /// <summary>
    /// The published executable this server and its CLI calls run (settable before a start), else platter.dll under
    /// dotnet; <see cref="TestBinary"/> by default.
    /// </summary>
    public string? Binary { get; set; } = TestBinary;

    /// <summary>Starts <c>platter serve</c> and waits until the API socket (and the NBD socket, when served) accept connections.</summary>
    public async Task StartAsync(CancellationToken cancellationToken = default)
    {
        if (IsRunning) throw new InvalidOperationException("already running");
        await ForgetExitedAsync(); // exited on its own (or never listened): only its log remains
        var (program, args) = PlatterCommand(Binary,
        [
            "serve",
            "--store", StoreDirectory,
            "--socket", ServeNbd ? NbdSocketPath : "none",
            .. (Listen is null ? [] : (string[])["--listen", Listen]),
            "--api-socket", ApiSocketPath,
            .. (ReadOnly ? (string[])["--read-only"] : []),
            .. (Verbose ? (string[])["--verbose"] : []),
            .. (CacheSize is null ? [] : (string[])["--cache-dir", CacheDirectory, "--cache-size", CacheSize]),
            .. ExtraArguments,
        ]);
        var environment = new Dictionary<string, string?>(CleanEnvironment);
        foreach (var (name, value) in Environment) environment[name] = value;
        var process = ChildProcess.Start(program, args, environment, ReadOutput);
        AppendLog($"--- started pid {process.Id}: {process.CommandLine}");
        _process = process;
        await process.WaitUntilListeningAsync(ServeNbd ? [NbdSocketPath, ApiSocketPath] : [ApiSocketPath], StartTimeout, cancellationToken);
    }

    /// <summary>Stops the server with SIGTERM and returns its exit code; fails the test if it does not exit in time.</summary>
    public async Task<int> StopAsync(CancellationToken cancellationToken = default)
    {
        var process = _process ?? throw new InvalidOperationException("not started");
        AppendLog($"--- SIGTERM to pid {process.Id}");
        var stopping = System.Diagnostics.Stopwatch.StartNew();
        int exitCode;
        try
        {
            exitCode = await process.TerminateAsync(StopTimeout, cancellationToken);
        }
        finally
        {
            await ForgetExitedAsync();
        }
        AppendLog($"--- exited with code {exitCode}, {stopping.Elapsed.TotalSeconds:0.0} s after SIGTERM");
        return exitCode;
    }

    /// <summary>Kills the server with SIGKILL (a crash: no shutdown code runs) and waits for it to be gone.</summary>
    public async Task KillAsync()
    {
        var process = _process ?? throw new InvalidOperationException("not started");
        AppendLog($"--- SIGKILL to pid {process.Id}");
        await process.KillAsync();
        await ForgetExitedAsync();
        AppendLog("--- killed");
    }

    /// <summary>
    /// One line per thread of the running server: its name, scheduler state and the kernel function it sleeps in
    /// (<c>/proc/PID/task/TID/{comm,stat,wchan}</c>), grouped and counted. For the failure message of a test that saw
    /// the server stop answering: threads asleep in <c>futex_wait</c> wait on each other, one in a file system's
    /// sync waits on the disk, all in <c>ep_poll</c> wait for a client that sends nothing. Works for the JIT and the
    /// Native AOT build alike (no debugger attach, which an AOT binary would not answer to).
    /// </summary>
    public string DescribeThreads()
    {
        if (_process is not { HasExited: false } process) return "(the server is not running)";
        var counts = new SortedDictionary<string, int>(StringComparer.Ordinal);
        try
        {
            foreach (var task in Directory.EnumerateDirectories($"/proc/{process.Id}/task"))
            {
                try
                {
                    string name = File.ReadAllText(Path.Combine(task, "comm")).Trim();
                    string stat = File.ReadAllText(Path.Combine(task, "stat"));
                    string state = stat[(stat.LastIndexOf(')') + 2)..].Split(' ')[0];
                    string wchan = File.ReadAllText(Path.Combine(task, "wchan")).Trim();
                    string key = $"{name} state {state} in {(wchan is "" or "0" ? "(running)" : wchan)}";
                    counts[key] = counts.GetValueOrDefault(key) + 1;
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    // The thread ended while being read.
                }
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return $"(threads of pid {process.Id} not readable: {e.Message})";
        }
        return string.Join('\n', counts.Select(c => $"{c.Value,3} x {c.Key}"));
    }

    /// <summary>Runs <c>platter ARGS --api-socket SOCKET</c> against this server.</summary>
    public Task<ProcessResult> CliAsync(params string[] args)
    {
        var (program, arguments) = PlatterCommand(Binary, [.. args, "--api-socket", ApiSocketPath]);
        return ProcessRunner.RunAsync(program, arguments, CliTimeout, CleanEnvironment);
    }

    /// <summary>Runs <c>platter ARGS</c> like <see cref="CliAsync"/> and returns its stdout; fails the test, with the server's log, on a non-zero exit.</summary>
    public async Task<string> CliOkAsync(params string[] args)
    {
        var result = await CliAsync(args);
        if (result.TimedOut || result.ExitCode != 0)
            throw new XunitException($"platter {string.Join(' ', args)} failed\n{result.Describe()}\n--- server log ---\n{Log}");
        return result.Stdout;
    }

    /// <summary>The NBD URI of <paramref name="export"/> on this server's unix socket.</summary>
    public string Uri(string export) => NbdExport.NbdUri(export, NbdSocketPath);

    /// <summary>Sends signal <paramref name="signal"/> (a name such as "STOP" or "CONT") to the running server.</summary>
    public void Signal(string signal)
    {
        AppendLog($"--- SIG{signal} to pid {ProcessId}");
        ProcessRunner.RunAsync("kill", ["-" + signal, ProcessId.ToString(System.Globalization.CultureInfo.InvariantCulture)])
            .GetAwaiter().GetResult().EnsureSuccess();
    }

    /// <summary>Runs the CLI with the API socket given only through PLATTER_API_SOCKET.</summary>
    public Task<ProcessResult> CliWithEnvironmentSocketAsync(params string[] args)
    {
        var (program, arguments) = PlatterCommand(Binary, args);
        return ProcessRunner.RunAsync(program, arguments, CliTimeout,
            new Dictionary<string, string?> { ["PLATTER_API_SOCKET"] = ApiSocketPath, ["PLATTER_STORE"] = null });
    }

    /// <summary>Creates a volume of <paramref name="sizeBytes"/> (given to the CLI in MiB when whole, else in bytes).</summary>
    public Task<NbdExport> CreateExportAsync(string name, long sizeBytes) =>
        CreateVolumeAsync(name, sizeBytes % (1024 * 1024) == 0 ? $"{sizeBytes / (1024 * 1024)}M" : $"{sizeBytes}", sizeBytes);

    /// <summary>Creates a volume with <c>platter volume create NAME --size SIZE</c>; it is an export named after it.</summary>
    public async Task<NbdExport> CreateVolumeAsync(string name, string size, long sizeBytes)
    {
        var result = await CliAsync("volume", "create", name, "--size", size);
        AppendLog($"--- platter volume create {name} --size {size}: exit {result.ExitCode}");
        if (result.TimedOut || result.ExitCode != 0)
            throw new XunitException($"platter volume create failed\n{result.Describe()}\n--- server log ---\n{Log}");
        return new NbdExport(name, NbdSocketPath, sizeBytes);
    }

    /// <summary>Stops a running server (SIGTERM, then SIGKILL if it lingers) and removes the private directory.</summary>
    public async ValueTask DisposeAsync()
    {
        if (_process is { } process)
        {
            // A server a test stopped (SIGSTOP) and did not continue would ignore SIGTERM until killed.
            if (!process.HasExited) await ProcessRunner.RunAsync("kill", ["-CONT", process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
            try
            {
                if (!process.HasExited) await process.TerminateAsync(TimeSpan.FromSeconds(10));
            }
            catch (XunitException)
            {
                // Killed after the grace: disposal must not fail the test that already has its verdict.
            }
            await ForgetExitedAsync();
        }
        _ownedRoot?.Dispose();
    }

    // Moves an exited process's output into the log and lets it go.
    private async Task ForgetExitedAsync()
    {
        if (_process is not { } process) return;
        await process.DisposeAsync();
        lock (_log)
        {
            _log.Append(process.Output);
            _process = null;
        }
    }

    private void AppendLog(string line)
    {
        lock (_log) _log.AppendLine(line);
    }
}
