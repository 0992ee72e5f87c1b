using System.Diagnostics;
using System.Globalization;
using Platter.CrashWorker;
using Xunit;

namespace Platter.Crash.Tests;

/// <summary>
/// The kill loops share the machine's two cores: run them one after the other, so the kill moments of one are
/// not skewed by the other's load.
/// </summary>
[CollectionDefinition(nameof(CrashCollection), DisableParallelization = true)]
public sealed class CrashCollection;

/// <summary>
/// When to kill the worker: after it opened the store (mid-workload) or after it started (start-up, replay); with
/// <see cref="WaitForReclaim"/>, as soon as (DelayMs after) it logs the start of a background reclaim.
/// </summary>
internal readonly record struct KillMoment(bool WaitForOpen, int DelayMs, bool WaitForReclaim = false)
{
    /// <summary>Right after a background reclaim starts ("reclaim" mode only: nothing else logs one).</summary>
    public static KillMoment DuringReclaim(Random rng) => new(true, rng.Next(0, 4), WaitForReclaim: true);

    /// <summary>Mostly in the middle of the workload, sometimes during start-up and journal replay.</summary>
    public static KillMoment Choose(Random rng)
    {
        bool waitForOpen = rng.Next(4) != 0;
        return new KillMoment(waitForOpen, waitForOpen ? rng.Next(0, 700) : rng.Next(0, 400));
    }

    public override string ToString() => WaitForReclaim ? $"after a reclaim started +{DelayMs} ms" : $"{(WaitForOpen ? "after open +" : "after start +")}{DelayMs} ms";
}

/// <summary>Starts the crash worker on a store and kills it with SIGKILL at a chosen moment.</summary>
internal static class CrashHarness
{
    public static int? EnvInt(string name) =>
        int.TryParse(Environment.GetEnvironmentVariable(name), NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) ? v : null;

    public static void RunAndKill(string storeDir, int runSeed, string logPath, KillMoment kill, string ctx, string mode)
    {
        string workerDll = Path.Combine(AppContext.BaseDirectory, "Platter.CrashWorker.dll");
        Assert.True(File.Exists(workerDll), $"worker not found at {workerDll}");
        var psi = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
            UseShellExecute = false,
        };
        foreach (var a in new[] { workerDll, storeDir, runSeed.ToString(CultureInfo.InvariantCulture), logPath, "60", mode }) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        var stdout = p.StandardOutput.ReadToEndAsync();
        try
        {
            // Liveness bounds: start-up plus recovery take well under a second on a healthy store, and the reclaim
            // workload deletes a snapshot every few operations. A reclaim is polled every millisecond: the worker
            // holds each reclaim's end back only 5-30 ms.
            void WaitFor(Func<bool> condition, string what, int pollMs)
            {
                var deadline = DateTime.UtcNow.AddSeconds(30);
                while (!condition())
                {
                    if (p.HasExited) Assert.Fail($"{ctx}: the worker exited ({p.ExitCode}) before {what}:\n{stderr.Result}{stdout.Result}");
                    Assert.True(DateTime.UtcNow < deadline, $"{ctx}: waited 30 s, and still not {what}");
                    Thread.Sleep(pollMs);
                }
            }
            if (kill.WaitForOpen) WaitFor(() => LogSaysOpened(logPath), "the store opened", 5);
            if (kill.WaitForReclaim) WaitFor(() => ReclaimRunning(logPath), "a background reclaim started", 1);
            Thread.Sleep(kill.DelayMs);
            if (p.HasExited)
                Assert.Fail($"{ctx}: the worker exited on its own ({p.ExitCode}) before the kill:\n{stderr.Result}{stdout.Result}");
        }
        finally
        {
            if (!p.HasExited) p.Kill(entireProcessTree: true); // SIGKILL
            p.WaitForExit();
        }
    }

    /// <summary>
    /// True when the worker's log shows a background reclaim that started and has not ended: read after the kill, the
    /// kill landed inside a reclaim.
    /// </summary>
    public static bool ReclaimRunning(string logPath)
    {
        if (!File.Exists(logPath)) return false;
        using var fs = new FileStream(logPath, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        using var r = new StreamReader(fs);
        int open = 0;
        for (string? line; (line = r.ReadLine()) is not null;)
        {
            if (line == CrashWorkload.ReclaimStartedLine) open++;
            else if (line == CrashWorkload.ReclaimEndedLine) open--;
        }
        return open > 0;
    }

    private static bool LogSaysOpened(string logPath)
    {
        if (!File.Exists(logPath)) return false;
        using var fs = new FileStream(logPath, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        using var r = new StreamReader(fs);
        return r.ReadLine() == CrashWorkload.OpenedLine;
    }
}
