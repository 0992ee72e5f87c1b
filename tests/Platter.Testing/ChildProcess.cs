using System.Diagnostics;
using System.Text;
using Xunit.Sdk;

namespace Platter.Testing;

/// <summary>
/// A long-running child process (a server): started with its output captured, ready when its unix sockets accept
/// connections, stopped with SIGTERM (graceful) or SIGKILL. Every failure carries the child's own output.
/// </summary>
public sealed class ChildProcess : IAsyncDisposable
{
    private readonly Process _process;
    private readonly bool _readOutput;
    private readonly StringBuilder _output = new();
    private Task? _drainAfterExit;

    private ChildProcess(Process process, string commandLine, bool readOutput)
    {
        _process = process;
        _readOutput = readOutput;
        CommandLine = commandLine;
    }

    /// <summary>The command as a shell would spell it.</summary>
    public string CommandLine { get; }

    /// <summary>Process id, for logs.</summary>
    public int Id => _process.Id;

    /// <summary>True once the process has exited.</summary>
    public bool HasExited => _process.HasExited;

    /// <summary>Exit code once the process has exited, else null.</summary>
    public int? ExitCode => _process.HasExited ? _process.ExitCode : null;

    /// <summary>
    /// Everything the child wrote to stdout and stderr so far. A child started without reading its output shows it
    /// only after it exited.
    /// </summary>
    public string Output
    {
        get { lock (_output) return _output.ToString(); }
    }

    /// <summary>
    /// Starts <paramref name="fileName"/>. With <paramref name="readOutput"/> (the default) both outputs are read as
    /// they come; without, nothing reads them until the child has exited, like a log consumer that has stalled (the
    /// child blocks once the pipes are full unless it copes). <paramref name="environment"/> entries set (or, when
    /// null, remove) variables of the child's environment.
    /// </summary>
    public static ChildProcess Start(string fileName, IEnumerable<string> arguments,
        IReadOnlyDictionary<string, string?>? environment = null, bool readOutput = true)
    {
        var psi = ProcessRunner.StartInfo(fileName, arguments, environment);
        var child = new ChildProcess(ProcessRunner.Start(psi), ProcessRunner.FormatCommandLine(psi), readOutput);
        if (readOutput)
        {
            child._process.OutputDataReceived += (_, e) => child.Append(e.Data);
            child._process.ErrorDataReceived += (_, e) => child.Append(e.Data);
            child._process.BeginOutputReadLine();
            child._process.BeginErrorReadLine();
        }
        return child;
    }

    /// <summary>
    /// Waits until every path in <paramref name="socketPaths"/> accepts a connection. Fails the test, with the
    /// child's output, when the child exits first or is not ready within <paramref name="timeout"/> (it is then killed).
    /// </summary>
    public async Task WaitUntilListeningAsync(IReadOnlyList<string> socketPaths, TimeSpan timeout, CancellationToken cancellationToken = default)
    {
        var deadline = Stopwatch.StartNew();
        while (!socketPaths.All(ProcessRunner.CanConnect))
        {
            if (_process.HasExited)
            {
                await DrainAsync();
                throw new XunitException(
                    $"{CommandLine}\nexited with code {_process.ExitCode} before listening on {string.Join(" and ", socketPaths)}\n{Output}");
            }
            if (deadline.Elapsed > timeout)
            {
                await KillAsync();
                throw new XunitException(
                    $"{CommandLine}\ndid not listen on {string.Join(" and ", socketPaths)} within {timeout.TotalSeconds:0} s (killed)\n{Output}");
            }
            await Task.Delay(50, cancellationToken);
        }
    }

    /// <summary>
    /// Sends SIGTERM and returns the exit code. Fails the test, with the child's output, when it does not exit within
    /// <paramref name="timeout"/> (it is then killed).
    /// </summary>
    public async Task<int> TerminateAsync(TimeSpan timeout, CancellationToken cancellationToken = default)
    {
        if (!_process.HasExited) ProcessRunner.Terminate(_process);
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        cts.CancelAfter(timeout);
        try
        {
            await _process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            await KillAsync();
            throw new XunitException(
                $"{CommandLine}\ndid not exit within {timeout.TotalSeconds:0} s of SIGTERM{(_readOutput ? "" : " while its output was not read")} (killed)\n{Output}");
        }
        await DrainAsync();
        return _process.ExitCode;
    }

    /// <summary>SIGKILL to the child and its children (a crash: no shutdown code runs); waits until it is gone.</summary>
    public async Task KillAsync()
    {
        ProcessRunner.KillTree(_process);
        await _process.WaitForExitAsync(CancellationToken.None);
        await DrainAsync();
    }

    /// <summary>Kills the child if it still runs.</summary>
    public async ValueTask DisposeAsync()
    {
        await KillAsync();
        _process.Dispose();
    }

    // Once the child has exited: the readers have seen everything (the parameterless wait drains them), or, when
    // nobody read the output, it is read now.
    private Task DrainAsync()
    {
        if (_readOutput)
        {
            _process.WaitForExit();
            return Task.CompletedTask;
        }
        return _drainAfterExit ??= DrainUnreadAsync();
    }

    private async Task DrainUnreadAsync()
    {
        var stdout = _process.StandardOutput.ReadToEndAsync();
        var stderr = _process.StandardError.ReadToEndAsync();
        string o = await stdout, e = await stderr;
        lock (_output) _output.Append(o).Append(e);
    }

    private void Append(string? line)
    {
        if (line is null) return;
        lock (_output) _output.AppendLine(line);
    }
}
