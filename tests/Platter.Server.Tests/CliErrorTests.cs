using Xunit;

namespace Platter.Server.Tests;

/// <summary>Every failure is one line on stderr starting with "platter: " and a non-zero exit code.</summary>
public class CliErrorTests
{
    private static void AssertOneLineError(CliRunner.Result result, int exitCode, string fragment)
    {
        Assert.True(result.ExitCode == exitCode, result.ToString());
        var lines = result.Error.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(lines.Length == 1, result.ToString());
        Assert.StartsWith("platter: ", lines[0]);
        Assert.Contains(fragment, lines[0]);
        Assert.Equal("", result.Out);
    }

    [Fact]
    public async Task ServerNotRunningNamesTheSocketAndTheHint()
    {
        using var home = new TempDirectory();
        var result = await CliRunner.RunAsync(CliRunner.Environment(home.Path), "volume", "list");
        var expected = Path.Combine(home.Path, ".local", "share", "platter", "api.sock");
        AssertOneLineError(result, 1, $"cannot reach the Platter server at {expected} (is `platter serve` running?)");
    }

    [Fact]
    public async Task ApiSocketComesFromTheOptionThenTheEnvironment()
    {
        using var home = new TempDirectory();
        var env = CliRunner.Environment(home.Path);
        env["PLATTER_API_SOCKET"] = home.Combine("env.sock");
        var fromEnv = await CliRunner.RunAsync(env, "volume", "info", "vm1");
        AssertOneLineError(fromEnv, 1, $"at {home.Combine("env.sock")} ");
        var fromOption = await CliRunner.RunAsync(env, "volume", "info", "vm1", "--api-socket", home.Combine("opt.sock"));
        AssertOneLineError(fromOption, 1, $"at {home.Combine("opt.sock")} ");
    }

    [Fact]
    public async Task StoreEnvironmentMovesTheDefaultSocket()
    {
        using var home = new TempDirectory();
        var env = CliRunner.Environment(home.Path);
        env["PLATTER_STORE"] = home.Combine("store");
        var result = await CliRunner.RunAsync(env, "du");
        AssertOneLineError(result, 1, $"at {home.Combine("store")}/api.sock ");
    }

    [Fact]
    public async Task ServerNotRunningForEveryClientCommand()
    {
        using var home = new TempDirectory();
        var env = CliRunner.Environment(home.Path);
        string[][] commands =
        [
            ["volume", "create", "vm1", "--size", "20G"],
            ["volume", "list", "--json"],
            ["volume", "info", "vm1"],
            ["volume", "resize", "vm1", "--size", "30G"],
            ["volume", "rename", "vm1", "vm2"],
            ["volume", "delete", "vm1"],
            ["du"],
            ["attach", "vm1"],
        ];
        foreach (var command in commands)
            AssertOneLineError(await CliRunner.RunAsync(env, command), 1, "is `platter serve` running?");
    }

    [Theory]
    [InlineData("20X", "unknown unit 'X'")]
    [InlineData("0", "greater than zero")]
    [InlineData("-5G", "negative")]
    [InlineData("lots", "expected a number")]
    [InlineData("9E", "too large")]
    public async Task BadSizeIsAUsageError(string size, string reason)
    {
        using var home = new TempDirectory();
        var result = await CliRunner.RunAsync(CliRunner.Environment(home.Path), "volume", "create", "vm1", "--size", size);
        AssertOneLineError(result, 2, reason);
        Assert.Contains("see 'platter volume create --help'", result.Error);
    }

    [Fact]
    public async Task MissingSizeIsAUsageError()
    {
        using var home = new TempDirectory();
        var result = await CliRunner.RunAsync(CliRunner.Environment(home.Path), "volume", "create", "vm1");
        AssertOneLineError(result, 2, "--size");
    }

    [Fact]
    public async Task InvalidVolumeNameIsRejectedBeforeContactingTheServer()
    {
        using var home = new TempDirectory();
        var result = await CliRunner.RunAsync(CliRunner.Environment(home.Path), "volume", "create", "a/b", "--size", "1G");
        AssertOneLineError(result, 2, "invalid volume name 'a/b'");
    }

    [Fact]
    public async Task UnknownCommandNamesTheWord()
    {
        var result = await CliRunner.RunAsync(null, "frobnicate");
        AssertOneLineError(result, 2, "frobnicate");
    }

    [Fact]
    public async Task AttachRefusesBothSocketAndTcp()
    {
        var result = await CliRunner.RunAsync(null, "attach", "vm1", "--socket", "/tmp/x.sock", "--tcp", "127.0.0.1:10809");
        AssertOneLineError(result, 2, "--socket and --tcp cannot be used together");
    }

    [Theory]
    [InlineData("localhost")]
    [InlineData("127.0.0.1")]
    [InlineData("1.2.3.4:99999")]
    [InlineData("nowhere:10809")]
    public async Task ServeRejectsBadListenAddress(string listen)
    {
        using var home = new TempDirectory();
        var result = await CliRunner.RunAsync(CliRunner.Environment(home.Path), "serve", "--store", home.Combine("s"), "--listen", listen);
        AssertOneLineError(result, 2, $"invalid --listen '{listen}'");
        Assert.False(Directory.Exists(home.Combine("s")), "a rejected command line must not create the store");
    }

    [Fact]
    public async Task ServeRefusesTlsKeyWithoutCertificate()
    {
        using var home = new TempDirectory();
        var result = await CliRunner.RunAsync(CliRunner.Environment(home.Path), "serve", "--store", home.Combine("s"), "--tls-key", "/tmp/k.pem");
        AssertOneLineError(result, 1, "--tls-cert and --tls-key go together");
    }

    [Fact]
    public async Task ServeRefusesTlsRequiredWithoutCertificate()
    {
        using var home = new TempDirectory();
        var result = await CliRunner.RunAsync(CliRunner.Environment(home.Path), "serve", "--store", home.Combine("s"), "--tls-required");
        AssertOneLineError(result, 1, "--tls-required needs --tls-cert");
    }

    [Fact]
    public async Task ServeRefusesTcpApiWithoutToken()
    {
        using var home = new TempDirectory();
        var result = await CliRunner.RunAsync(CliRunner.Environment(home.Path), "serve", "--store", home.Combine("s"), "--api-listen", "127.0.0.1:0");
        AssertOneLineError(result, 1, "--api-listen needs a token");
    }

    [Fact]
    public async Task ServeReportsAnUnreadableCertificate()
    {
        using var home = new TempDirectory();
        File.WriteAllText(home.Combine("cert.pem"), "not a certificate");
        File.WriteAllText(home.Combine("key.pem"), "not a key");
        var result = await CliRunner.RunAsync(CliRunner.Environment(home.Path), "serve", "--store", home.Combine("s"),
            "--tls-cert", home.Combine("cert.pem"), "--tls-key", home.Combine("key.pem"));
        AssertOneLineError(result, 1, "cannot load the TLS certificate");
    }

    [Fact]
    public async Task CheckWithoutAStoreSaysSo()
    {
        using var home = new TempDirectory();
        var result = await CliRunner.RunAsync(CliRunner.Environment(home.Path), "check", "--store", home.Combine("none"));
        AssertOneLineError(result, 1, $"no Platter store at {home.Combine("none")}");
    }

    [Fact]
    public async Task HelpExplainsEveryCommandAndSucceeds()
    {
        string[][] commands =
        [
            ["--help"], ["serve", "--help"], ["volume", "--help"], ["volume", "create", "--help"], ["volume", "list", "--help"],
            ["volume", "info", "--help"], ["volume", "resize", "--help"], ["volume", "rename", "--help"], ["volume", "delete", "--help"],
            ["du", "--help"], ["attach", "--help"], ["check", "--help"],
        ];
        foreach (var command in commands)
        {
            var result = await CliRunner.RunAsync(null, command);
            Assert.True(result.ExitCode == 0, string.Join(' ', command) + "\n" + result);
            Assert.Contains("Usage:", result.Out);
            Assert.Equal("", result.Error);
        }
        var serve = await CliRunner.RunAsync(null, "serve", "--help");
        foreach (var option in new[] { "--store", "--listen", "--socket", "--api-socket", "--api-listen", "--tls-cert", "--tls-key", "--tls-required", "--tls-client-ca", "--map-cache" })
            Assert.Contains(option, serve.Out);
    }
}
