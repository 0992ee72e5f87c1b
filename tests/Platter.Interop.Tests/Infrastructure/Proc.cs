using System.Diagnostics;
using System.Text;
using Xunit.Sdk;

namespace Platter.Interop.Tests.Infrastructure;

/// <summary>The outcome of one external command, with everything needed to explain a failure.</summary>
public sealed record ProcessResult(string CommandLine, int ExitCode, string Stdout, string Stderr)
{
    public string Describe() =>
        $"$ {CommandLine}\nexit code {ExitCode}\n--- stdout ---\n{Tail(Stdout)}\n--- stderr ---\n{Tail(Stderr)}";

    /// <summary>Fails the test with the full command, exit code and output unless the command succeeded.</summary>
    public ProcessResult EnsureSuccess(string? context = null)
    {
        if (ExitCode != 0)
            throw new XunitException($"{context ?? "command failed"}\n{Describe()}");
        return this;
    }

    // Tools such as `nbdcopy -v` print a lot; the end says why they failed.
    private static string Tail(string text) => text.Length <= 8000 ? text : "[...]\n" + text[^8000..];
}

/// <summary>
/// Runs external tools with a hard timeout. A command that overruns is killed with its whole process tree
/// and fails the test, so a hung client or server never hangs the run.
/// </summary>
public static class Proc
{
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(90);

    public static async Task<ProcessResult> RunAsync(
        string fileName,
        IEnumerable<string> arguments,
        TimeSpan? timeout = null,
        IReadOnlyDictionary<string, string?>? environment = null,
        string? standardInput = null)
    {
        var psi = CreateStartInfo(fileName, arguments, environment);
        psi.RedirectStandardInput = standardInput is not null;
        string commandLine = FormatCommandLine(psi);

        using var process = new Process { StartInfo = psi };
        var stdout = new StringBuilder();
        var stderr = new StringBuilder();
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (stdout) stdout.AppendLine(e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (stderr) stderr.AppendLine(e.Data); };

        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        if (standardInput is not null)
        {
            await process.StandardInput.WriteAsync(standardInput);
            process.StandardInput.Close();
        }

        var limit = timeout ?? DefaultTimeout;
        using var cts = new CancellationTokenSource(limit);
        try
        {
            await process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            KillTree(process);
            await process.WaitForExitAsync();
            string outText, errText;
            lock (stdout) outText = stdout.ToString();
            lock (stderr) errText = stderr.ToString();
            throw new XunitException(
                $"timed out after {limit.TotalSeconds:0} s and was killed\n{new ProcessResult(commandLine, -1, outText, errText).Describe()}");
        }

        // WaitForExitAsync returns once the output streams are drained, so the builders are complete.
        string o, err;
        lock (stdout) o = stdout.ToString();
        lock (stderr) err = stderr.ToString();
        return new ProcessResult(commandLine, process.ExitCode, o, err);
    }

    public static ProcessStartInfo CreateStartInfo(string fileName, IEnumerable<string> arguments, IReadOnlyDictionary<string, string?>? environment)
    {
        var psi = new ProcessStartInfo(fileName)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in arguments) psi.ArgumentList.Add(a);
        if (environment is not null)
        {
            foreach (var (key, value) in environment)
            {
                if (value is null) psi.Environment.Remove(key);
                else psi.Environment[key] = value;
            }
        }
        return psi;
    }

    public static string FormatCommandLine(ProcessStartInfo psi) =>
        string.Join(' ', new[] { psi.FileName }.Concat(psi.ArgumentList).Select(Quote));

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

    private static string Quote(string arg) =>
        arg.Length > 0 && arg.All(c => char.IsLetterOrDigit(c) || "-_./=:,+@%".Contains(c))
            ? arg
            : "'" + arg.Replace("'", "'\\''") + "'";
}
