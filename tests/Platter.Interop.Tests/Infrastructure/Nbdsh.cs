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
        string nbdsh = Tools.Require("nbdsh", "python3-libnbd");
        var environment = new Dictionary<string, string?>
        {
            ["PATH"] = Tools.RequireLibnbdPythonDirectory() + ":" + Environment.GetEnvironmentVariable("PATH"),
        };
        foreach (var (k, v) in variables) environment[k] = v;

        // -n: the script makes its own handles, each configured before it connects.
        var result = await Proc.RunAsync(nbdsh, ["-n", "-c", script], TimeSpan.FromSeconds(60), environment);
        result.EnsureSuccess("nbdsh script failed");
        var lines = result.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        if (lines.Length == 0) throw new XunitException($"nbdsh script printed nothing\n{result.Describe()}");
        return Clients.ParseJson(result, lines[^1]);
    }
}
