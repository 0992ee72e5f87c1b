using System.Diagnostics;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;

namespace Platter.Guest.Tests;

/// <summary>
/// A long-running server child process: started with its output captured, considered ready when its
/// unix socket accepts a connection, stopped with SIGTERM (graceful) or SIGKILL.
/// </summary>
public sealed class ServerProcess : IAsyncDisposable
{
    private const int SigTerm = 15;
    private readonly Process _process;
    private readonly StringBuilder _output = new();

    private ServerProcess(Process process) => _process = process;

    /// <summary>Everything the server wrote to stdout and stderr so far.</summary>
    public string Output { get { lock (_output) { return _output.ToString(); } } }

    /// <summary>Process id, for logs.</summary>
    public int Id => _process.Id;

    /// <summary>Exit code once the process has exited, else null.</summary>
    public int? ExitCode => _process.HasExited ? _process.ExitCode : null;

    /// <summary>
    /// Starts <paramref name="fileName"/> and waits (up to <paramref name="readyTimeout"/>) until every path in
    /// <paramref name="socketPaths"/> accepts a connection. <paramref name="environment"/> entries set (or, when
    /// null, remove) variables of the child's environment.
    /// </summary>
    public static async Task<ServerProcess> StartAsync(string fileName, IEnumerable<string> arguments, IReadOnlyList<string> socketPaths,
        TimeSpan readyTimeout, CancellationToken cancellationToken, IReadOnlyDictionary<string, string?>? environment = null)
    {
        var psi = ProcessRunner.StartInfo(fileName, arguments, environment);
        Process process;
        try
        {
            process = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {fileName}");
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new InvalidOperationException($"could not start {fileName}: {e.Message}", e);
        }
        var server = new ServerProcess(process);
        process.OutputDataReceived += (_, e) => server.Append(e.Data);
        process.ErrorDataReceived += (_, e) => server.Append(e.Data);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();

        var deadline = DateTime.UtcNow + readyTimeout;
        while (true)
        {
            if (process.HasExited)
            {
                throw new InvalidOperationException(
                    $"{fileName} exited with code {process.ExitCode} before listening on {string.Join(" and ", socketPaths)}:\n{server.Output}");
            }
            if (await AllAcceptAsync(socketPaths, cancellationToken))
            {
                return server;
            }
            if (DateTime.UtcNow > deadline)
            {
                await server.DisposeAsync();
                throw new TimeoutException(
                    $"{fileName} did not accept connections on {string.Join(" and ", socketPaths)} within {readyTimeout}:\n{server.Output}");
            }
            await Task.Delay(50, cancellationToken);
        }
    }

    private void Append(string? line)
    {
        if (line is null) return;
        lock (_output) { _output.AppendLine(line); }
    }

    private static async Task<bool> AllAcceptAsync(IReadOnlyList<string> socketPaths, CancellationToken cancellationToken)
    {
        foreach (var path in socketPaths)
        {
            if (!File.Exists(path) || !await CanConnectAsync(path, cancellationToken)) return false;
        }
        return true;
    }

    private static async Task<bool> CanConnectAsync(string socketPath, CancellationToken cancellationToken)
    {
        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), cancellationToken);
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }

    /// <summary>
    /// Stops the server. Graceful: SIGTERM, then the exit must come within <paramref name="timeout"/> and
    /// with code 0 (a server that cannot shut down cleanly is a bug the test should see). Otherwise SIGKILL.
    /// </summary>
    public async Task StopAsync(bool graceful, TimeSpan timeout, CancellationToken cancellationToken)
    {
        if (_process.HasExited) return;
        if (!graceful)
        {
            _process.Kill(entireProcessTree: true);
            await _process.WaitForExitAsync(cancellationToken);
            return;
        }
        if (kill(_process.Id, SigTerm) != 0)
        {
            throw new InvalidOperationException($"kill(SIGTERM) failed: errno {Marshal.GetLastPInvokeError()}");
        }
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        cts.CancelAfter(timeout);
        try
        {
            await _process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            _process.Kill(entireProcessTree: true);
            throw new TimeoutException($"server did not exit within {timeout} of SIGTERM:\n{Output}");
        }
        // Let the asynchronous output readers drain before anyone reads Output.
        _process.WaitForExit();
        if (_process.ExitCode != 0)
        {
            throw new InvalidOperationException($"server exited with code {_process.ExitCode} after SIGTERM:\n{Output}");
        }
    }

    /// <summary>Kills the server if it still runs.</summary>
    public async ValueTask DisposeAsync()
    {
        try
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true);
                await _process.WaitForExitAsync();
            }
        }
        catch (InvalidOperationException)
        {
            // Already gone.
        }
        _process.Dispose();
    }

    [DllImport("libc", SetLastError = true)]
    private static extern int kill(int pid, int sig);
}
