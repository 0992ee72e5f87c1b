using System.Diagnostics;
using System.Text;

namespace Platter.Guest.Tests;

/// <summary>The outcome of a finished (or timed-out and killed) child process.</summary>
public sealed record ProcessResult(int ExitCode, string StandardOutput, string StandardError, TimeSpan Elapsed, bool TimedOut);

/// <summary>Runs a command to completion with a hard time limit, capturing its output.</summary>
public static class ProcessRunner
{
    /// <summary>
    /// Runs <paramref name="fileName"/>; if it outlives <paramref name="timeout"/> it is killed and the
    /// result says <see cref="ProcessResult.TimedOut"/>. A missing executable throws with a clear message.
    /// <paramref name="environment"/> entries set (or, when null, remove) variables of the child's environment.
    /// </summary>
    public static async Task<ProcessResult> RunAsync(string fileName, IEnumerable<string> arguments, TimeSpan timeout,
        CancellationToken cancellationToken = default, IReadOnlyDictionary<string, string?>? environment = null)
    {
        var psi = StartInfo(fileName, arguments, environment);
        var stdout = new StringBuilder();
        var stderr = new StringBuilder();
        var stopwatch = Stopwatch.StartNew();
        Process process;
        try
        {
            process = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {fileName}");
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new InvalidOperationException($"could not start {fileName}: {e.Message}", e);
        }
        using (process)
        {
            process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (stdout) stdout.AppendLine(e.Data); };
            process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (stderr) stderr.AppendLine(e.Data); };
            process.BeginOutputReadLine();
            process.BeginErrorReadLine();
            using var cts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            cts.CancelAfter(timeout);
            var timedOut = false;
            try
            {
                await process.WaitForExitAsync(cts.Token);
            }
            catch (OperationCanceledException)
            {
                timedOut = true;
                process.Kill(entireProcessTree: true);
                await process.WaitForExitAsync(CancellationToken.None);
            }
            // The parameterless wait also drains the asynchronous output readers.
            process.WaitForExit();
            cancellationToken.ThrowIfCancellationRequested();
            lock (stdout) lock (stderr)
                return new ProcessResult(process.ExitCode, stdout.ToString(), stderr.ToString(), stopwatch.Elapsed, timedOut);
        }
    }

    /// <summary>Start info with both output streams redirected (callers must drain them) and the environment edits applied.</summary>
    public static ProcessStartInfo StartInfo(string fileName, IEnumerable<string> arguments, IReadOnlyDictionary<string, string?>? environment)
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
}
