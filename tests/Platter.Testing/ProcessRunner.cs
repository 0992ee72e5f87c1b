using System.Diagnostics;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;
using Xunit.Sdk;

namespace Platter.Testing;

/// <summary>The outcome of one finished (or timed-out and killed) command, with everything needed to explain a failure.</summary>
/// <param name="CommandLine">The command as a shell would spell it, for failure messages.</param>
/// <param name="ExitCode">The exit code; after a kill on timeout, whatever the killed process reported.</param>
/// <param name="Stdout">Everything the command wrote to standard output.</param>
/// <param name="Stderr">Everything the command wrote to standard error.</param>
/// <param name="Elapsed">Wall time from start to exit.</param>
/// <param name="TimedOut">True when the command outlived its time limit and was killed with its process tree.</param>
public sealed record ProcessResult(string CommandLine, int ExitCode, string Stdout, string Stderr, TimeSpan Elapsed, bool TimedOut)
{
    /// <summary>The command, its exit code (or the timeout) and the tail of both outputs.</summary>
    public string Describe() =>
        $"$ {CommandLine}\n{(TimedOut ? $"timed out after {Elapsed.TotalSeconds:0} s and was killed" : $"exit code {ExitCode}")}\n" +
        $"--- stdout ---\n{Tail(Stdout)}\n--- stderr ---\n{Tail(Stderr)}";

    /// <summary>Fails the test with the full command, exit code and output unless the command exited 0 in time.</summary>
    public ProcessResult EnsureSuccess(string? context = null)
    {
        if (TimedOut || ExitCode != 0)
            throw new XunitException($"{context ?? "command failed"}\n{Describe()}");
        return this;
    }

    /// <summary>
    /// Fails the test unless the command was refused the way the caller expects: it exited (in time) with
    /// <paramref name="exitCode"/> and its standard error contains <paramref name="message"/>. A refusal test that
    /// accepted any non-zero exit would also pass on a crash, a timeout or a usage error.
    /// </summary>
    public ProcessResult EnsureRefused(int exitCode, string message, string? context = null)
    {
        if (TimedOut || ExitCode != exitCode || !Stderr.Contains(message, StringComparison.Ordinal))
            throw new XunitException($"{context ?? "expected a refusal"}: exit code {exitCode} and \"{message}\" on stderr\n{Describe()}");
        return this;
    }

    // Tools such as `nbdcopy -v` print a lot; the end says why they failed.
    private static string Tail(string text) => text.Length <= 8000 ? text : "[...]\n" + text[^8000..];
}

/// <summary>
/// Runs external commands to completion with a hard time limit. A command that overruns is killed with its whole
/// process tree, so a hung client or server never hangs the run.
/// </summary>
public static class ProcessRunner
{
    /// <summary>The limit when the caller names none: generous for a loaded 2-core machine, short of a CI hang.</summary>
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(90);

    private const int SigTerm = 15;

    /// <summary>
    /// Runs <paramref name="fileName"/> with <paramref name="arguments"/> and captures both outputs.
    /// With <paramref name="failOnTimeout"/> (the default) a command that outlives <paramref name="timeout"/> fails
    /// the test; without, the result says <see cref="ProcessResult.TimedOut"/> and the caller decides.
    /// <paramref name="environment"/> entries set (or, when null, remove) variables of the child's environment.
    /// A missing executable fails with its name.
    /// </summary>
    public static async Task<ProcessResult> RunAsync(
        string fileName,
        IEnumerable<string> arguments,
        TimeSpan? timeout = null,
        IReadOnlyDictionary<string, string?>? environment = null,
        string? standardInput = null,
        bool failOnTimeout = true,
        CancellationToken cancellationToken = default)
    {
        var psi = StartInfo(fileName, arguments, environment);
        psi.RedirectStandardInput = standardInput is not null;
        string commandLine = FormatCommandLine(psi);
        var stdout = new StringBuilder();
        var stderr = new StringBuilder();
        var stopwatch = Stopwatch.StartNew();
        using var process = Start(psi);
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (stdout) stdout.AppendLine(e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (stderr) stderr.AppendLine(e.Data); };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        if (standardInput is not null)
        {
            await process.StandardInput.WriteAsync(standardInput);
            process.StandardInput.Close();
        }

        var limit = timeout ?? DefaultTimeout;
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        cts.CancelAfter(limit);
        bool timedOut = false;
        try
        {
            await process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            timedOut = !cancellationToken.IsCancellationRequested;
            KillTree(process);
            await process.WaitForExitAsync(CancellationToken.None);
        }
        // The parameterless wait also drains the asynchronous output readers, so the builders are complete.
        process.WaitForExit();
        cancellationToken.ThrowIfCancellationRequested();
        ProcessResult result;
        lock (stdout) lock (stderr)
            result = new ProcessResult(commandLine, process.ExitCode, stdout.ToString(), stderr.ToString(), stopwatch.Elapsed, timedOut);
        if (timedOut && failOnTimeout) throw new XunitException(result.Describe());
        return result;
    }

    /// <summary>Starts <paramref name="psi"/>; a missing or unrunnable executable fails with its name and the reason.</summary>
    public static Process Start(ProcessStartInfo psi)
    {
        try
        {
            return Process.Start(psi) ?? throw new InvalidOperationException($"could not start {psi.FileName}");
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new InvalidOperationException($"could not start {psi.FileName}: {e.Message}", e);
        }
    }

    /// <summary>Start info with both output streams redirected (callers must drain them) and the environment edits applied.</summary>
    public static ProcessStartInfo StartInfo(string fileName, IEnumerable<string> arguments, IReadOnlyDictionary<string, string?>? environment = null)
    {
        var psi = new ProcessStartInfo(fileName)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in arguments) psi.ArgumentList.Add(a);
        foreach (var (name, value) in environment ?? new Dictionary<string, string?>())
        {
            if (value is null) psi.Environment.Remove(name);
            else psi.Environment[name] = value;
        }
        return psi;
    }

    /// <summary>The command line as a shell would take it, for logs and failure messages.</summary>
    public static string FormatCommandLine(ProcessStartInfo psi) =>
        string.Join(' ', new[] { psi.FileName }.Concat(psi.ArgumentList).Select(Quote));

    /// <summary>SIGKILL to the process and all its children; a process that already exited is left be.</summary>
    public static void KillTree(Process process)
    {
        try
        {
            if (!process.HasExited) process.Kill(entireProcessTree: true);
        }
        catch (InvalidOperationException)
        {
            // Exited between the check and the kill.
        }
    }

    /// <summary>
    /// Sends SIGTERM: the graceful stop a service manager uses. <see cref="Process.Kill()"/> sends SIGKILL, which
    /// would skip exactly the shutdown path the tests check.
    /// </summary>
    public static void Terminate(Process process)
    {
        if (kill(process.Id, SigTerm) != 0 && !process.HasExited)
            throw new InvalidOperationException($"kill({process.Id}, SIGTERM) failed: errno {Marshal.GetLastPInvokeError()}");
    }

    /// <summary>True when something accepts connections on the unix socket at <paramref name="path"/> (bound is not enough: it must listen).</summary>
    public static bool CanConnect(string path)
    {
        if (!File.Exists(path)) return false;
        try
        {
            using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            socket.Connect(new UnixDomainSocketEndPoint(path));
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }

    /// <summary>Returns the full path of <paramref name="tool"/> on PATH, or fails the test naming the package to install.</summary>
    public static string RequireTool(string tool, string package) =>
        FindTool(tool) ?? throw new XunitException($"{tool} not found on PATH: install {package} (scripts/install-test-deps.sh)");

    /// <summary>The full path of <paramref name="tool"/> on PATH, or null.</summary>
    public static string? FindTool(string tool)
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries))
        {
            var candidate = Path.Combine(dir, tool);
            if (File.Exists(candidate)) return candidate;
        }
        return null;
    }

    private static string Quote(string arg) =>
        arg.Length > 0 && arg.All(c => char.IsLetterOrDigit(c) || "-_./=:,+@%".Contains(c))
            ? arg
            : "'" + arg.Replace("'", "'\\''") + "'";

    [DllImport("libc", SetLastError = true)]
    private static extern int kill(int pid, int sig);
}
