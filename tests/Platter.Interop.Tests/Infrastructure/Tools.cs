using Xunit.Sdk;

namespace Platter.Interop.Tests.Infrastructure;

/// <summary>
/// Finds the real clients the interop tests drive. A missing tool fails the test with the package to install:
/// an interop test that silently passes without its client proves nothing.
/// </summary>
public static class Tools
{
    public static string QemuImg => Require("qemu-img", "qemu-utils");
    public static string QemuIo => Require("qemu-io", "qemu-utils");
    public static string NbdInfo => Require("nbdinfo", "libnbd-bin");
    public static string NbdCopy => Require("nbdcopy", "libnbd-bin");
    public static string Fio => Require("fio", "fio");
    public static string Promtool => Require("promtool", "prometheus");
    public static string Chromium => Require("chromium", "chromium");

    /// <summary>Returns the full path of <paramref name="tool"/> on PATH, or fails the test naming the package.</summary>
    public static string Require(string tool, string package) => ProcessRunner.RequireTool(tool, package);

    private static readonly Lazy<string?> LibnbdPython = new(FindLibnbdPython);

    /// <summary>
    /// Directory of a python3 that can <c>import nbd</c>. nbdsh is a shell wrapper that runs whatever
    /// <c>python3</c> comes first on PATH; on machines with pyenv or a venv first, that python does not see
    /// Debian's python3-libnbd, so nbdsh is run with this directory first on PATH.
    /// </summary>
    public static string RequireLibnbdPythonDirectory() =>
        LibnbdPython.Value ?? throw new XunitException(
            "no python3 on this machine can 'import nbd': install python3-libnbd (scripts/install-test-deps.sh)");

    private static string? FindLibnbdPython()
    {
        var candidates = new List<string> { "/usr/bin/python3" };
        if (ProcessRunner.FindTool("python3") is { } onPath) candidates.Add(onPath);
        foreach (var python in candidates.Distinct())
        {
            if (!File.Exists(python)) continue;
            var result = ProcessRunner.RunAsync(python, ["-c", "import nbd"], TimeSpan.FromSeconds(30)).GetAwaiter().GetResult();
            if (result.ExitCode == 0) return Path.GetDirectoryName(python);
        }
        return null;
    }
}
