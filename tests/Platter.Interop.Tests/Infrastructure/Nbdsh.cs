using System.Text.Json;
using Xunit.Sdk;

namespace Platter.Interop.Tests.Infrastructure;

/// <summary>
/// Runs Python scripts in nbdsh (python3-libnbd). A script reports its findings by printing one JSON object
/// as its last line; the test asserts on that, so a failure names the value that was wrong.
/// </summary>
public static class Nbdsh
{
    public static async Task<JsonElement> RunAsync(string script, IReadOnlyDictionary<string, string> variables)
    {
        // -n: the script makes its own handles, each configured before it connects.
        var result = await ProcessRunner.RunAsync(Tools.Require("nbdsh", "python3-libnbd"), ["-n", "-c", script], TimeSpan.FromSeconds(60), Environment(variables));
        result.EnsureSuccess("nbdsh script failed");
        var lines = result.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        if (lines.Length == 0) throw new XunitException($"nbdsh script printed nothing\n{result.Describe()}");
        return Clients.ParseJson(result, lines[^1]);
    }

    /// <summary>
    /// Starts a script that runs alongside the test (stdin, stdout and stderr redirected). The caller owns the
    /// process and must kill it (<see cref="ProcessRunner.KillTree"/>) when done.
    /// </summary>
    public static System.Diagnostics.Process Start(string script, IReadOnlyDictionary<string, string> variables)
    {
        var psi = ProcessRunner.StartInfo(Tools.Require("nbdsh", "python3-libnbd"), ["-n", "-c", script], Environment(variables));
        psi.RedirectStandardInput = true;
        return System.Diagnostics.Process.Start(psi) ?? throw new XunitException("could not start nbdsh");
    }

    private static Dictionary<string, string?> Environment(IReadOnlyDictionary<string, string> variables)
    {
        var environment = new Dictionary<string, string?>
        {
            ["PATH"] = Tools.RequireLibnbdPythonDirectory() + ":" + System.Environment.GetEnvironmentVariable("PATH"),
        };
        foreach (var (k, v) in variables) environment[k] = v;
        return environment;
    }
}
