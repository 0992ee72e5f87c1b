using Platter.Cli;
using Xunit;

namespace Platter.Server.Tests;

/// <summary>The systemd units in packaging/systemd and `serve --config`, which the unit uses.</summary>
public class ServicePackagingTests
{
    private static string UnitDirectory => Path.Combine(Repository.Root, "packaging", "systemd");

    [Fact]
    public async Task UnitFilesPassSystemdAnalyzeVerify()
    {
        using var dir = new TempDirectory();
        // verify checks that ExecStart's program exists: point it at the platter built next to the tests.
        var platter = Path.Combine(AppContext.BaseDirectory, "platter");
        Assert.True(File.Exists(platter), $"no platter apphost in {AppContext.BaseDirectory}");
        string[] units = ["platter.service", "platter-nbd.socket", "platter-api.socket"];
        foreach (var unit in units)
        {
            var text = await File.ReadAllTextAsync(Path.Combine(UnitDirectory, unit));
            await File.WriteAllTextAsync(dir.Combine(unit), text.Replace("/usr/bin/platter", platter));
        }
        var psi = new System.Diagnostics.ProcessStartInfo("systemd-analyze")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            WorkingDirectory = dir.Path,
        };
        foreach (var a in new[] { "verify", "--man=no" }.Concat(units.Select(u => "./" + u))) psi.ArgumentList.Add(a);
        using var process = System.Diagnostics.Process.Start(psi)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        // Unknown keys are only warnings (exit 0): any output at all fails the test.
        Assert.True(process.ExitCode == 0 && (await stderr).Length == 0 && (await stdout).Length == 0,
            $"systemd-analyze verify: exit {process.ExitCode}\n{await stdout}{await stderr}");

        var service = await File.ReadAllTextAsync(Path.Combine(UnitDirectory, "platter.service"));
        Assert.Contains("\nType=notify\n", service);
        Assert.Matches(@"\nTimeoutStopSec=\d+\n", service);
    }

    [Fact]
    public async Task TheServiceCommandLineAndSampleConfigParse()
    {
        var service = await File.ReadAllLinesAsync(Path.Combine(UnitDirectory, "platter.service"));
        var exec = service.Single(l => l.StartsWith("ExecStart=", StringComparison.Ordinal))["ExecStart=".Length..].Split(' ');
        Assert.Equal("/usr/bin/platter", exec[0]);
        var args = exec[1..].Select(a => a == "/etc/platter/platter.conf" ? Path.Combine(UnitDirectory, "platter.conf") : a).ToArray();
        var output = new StringWriter();
        var error = new StringWriter();
        // --help after the real arguments: parsing (and the config file) must succeed, nothing is started.
        int exit = await PlatterCli.RunAsync([.. args, "--help"], new CliContext { Out = output, Error = error, GetEnvironment = _ => null });
        Assert.True(exit == 0, $"exit {exit}: {error}");
        Assert.Contains("--config", output.ToString());
    }

    [Fact]
    public async Task ConfigFileSettingsApplyAndFlagsOverrideThem()
    {
        using var dir = new TempDirectory();
        var config = dir.Combine("platter.conf");
        await File.WriteAllTextAsync(config,
            "# a comment\n" +
            $"store = {dir.Combine("from-file")}\n" +
            "listen = none   # NBD on TCP off\n" +
            "socket = none\n" +
            "read-only = true\n" +
            "map-checksum-cache = 64M   # the map cache's old name, in files written for older versions\n" +
            "verbose = false\n");
        var stop = new TaskCompletionSource();
        var serving = new TaskCompletionSource<PlatterHost>(TaskCreationOptions.RunContinuationsAsynchronously);
        var error = new StringWriter();
        var context = new CliContext
        {
            Out = new StringWriter(),
            Error = error,
            GetEnvironment = name => name == "HOME" ? dir.Path : null,
            ShutdownRequested = stop.Task,
            Serving = host => serving.TrySetResult(host),
            CreateLoggerFactory = _ => Microsoft.Extensions.Logging.Abstractions.NullLoggerFactory.Instance,
        };
        var run = PlatterCli.RunAsync(["serve", "--config", config, "--store", dir.Combine("from-flag")], context);
        var finished = await Task.WhenAny(serving.Task, run);
        Assert.True(finished == serving.Task, $"serve ended early: {error}");
        var options = (await serving.Task).Options;
        Assert.Equal(dir.Combine("from-flag"), options.StoreDirectory);
        Assert.True(options.ReadOnly);
        Assert.Equal(64L << 20, options.MapCacheBytes);
        Assert.Null(options.NbdTcpEndPoint);
        Assert.Null(options.NbdSocketPath);
        stop.SetResult();
        Assert.Equal(0, await run);
        Assert.False(Directory.Exists(dir.Combine("from-file")));
    }

    [Theory]
    [InlineData("stor = /x\n", ":1: unknown setting 'stor'")]
    [InlineData("\nread-only = yes\n", ":2: 'read-only' is true or false, not 'yes'")]
    [InlineData("store\n", ":1: expected 'name = value'")]
    public async Task BadConfigFilesAreOneLineErrors(string text, string fragment)
    {
        using var dir = new TempDirectory();
        var config = dir.Combine("bad.conf");
        await File.WriteAllTextAsync(config, text);
        var result = await CliRunner.RunAsync(null, "serve", "--config", config);
        Assert.Equal(2, result.ExitCode);
        Assert.Contains(config + fragment, result.Error);
        Assert.Single(result.Error.Split('\n', StringSplitOptions.RemoveEmptyEntries));
    }
}
