using System.CommandLine;
using Platter.Cli;
using Xunit;

namespace Platter.Server.Tests;

/// <summary>
/// Issue 12's command-line sweep: every command takes --store, no input makes any command print a stack trace or
/// read a response file, and names that could not be managed afterwards are refused before they reach the server.
/// </summary>
public class CliSafetyTests
{
    /// <summary>Every leaf command of `platter`, as its path of names, with the command itself.</summary>
    private static IEnumerable<(string[] Path, Command Command)> LeafCommands()
    {
        var root = PlatterCli.BuildRootCommand(new CliContext());
        var pending = new Stack<(string[], Command)>();
        foreach (var c in root.Subcommands) pending.Push(([c.Name], c));
        while (pending.Count > 0)
        {
            var (path, command) = pending.Pop();
            if (command.Subcommands.Count == 0) yield return (path, command);
            foreach (var sub in command.Subcommands) pending.Push(([.. path, sub.Name], sub));
        }
    }

    /// <summary>Plausible required arguments for <paramref name="command"/>, so it gets as far as calling the server.</summary>
    private static string[] PlausibleArguments(Command command, TempDirectory home)
    {
        var args = new List<string>();
        // import reads an existing image; export writes a new file.
        var image = home.Combine("disk.img");
        if (!File.Exists(image)) File.WriteAllBytes(image, new byte[4096]);
        foreach (var a in command.Arguments)
        {
            if (a.Arity.MinimumNumberOfValues == 0) continue;
            args.Add(a.Name switch
            {
                "VOLUME@SNAPSHOT" or "FROM" => "vm1@s1",
                "NEW_NAME" => "vm2",
                "NEW_VOLUME" => "vm3",
                "FILE" => command.Name == "import" ? image : home.Combine("out.img"),
                _ => "vm1",
            });
        }
        if (command.Options.Any(o => o.Name == "--size" && o.Required)) args.AddRange(["--size", "1G"]);
        if (command.Options.Any(o => o.Name == "--cache" && o.Required)) args.AddRange(["--cache", "none"]);
        return [.. args];
    }

    private static void AssertOneLine(CliRunner.Result result, string because)
    {
        var lines = result.Error.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(lines.Length <= 1, $"{because}: more than one line on stderr\n{result}");
        if (result.ExitCode != 0) Assert.True(lines.Length == 1 && lines[0].StartsWith("platter: ", StringComparison.Ordinal), $"{because}\n{result}");
        Assert.DoesNotContain("   at ", result.Error);
        Assert.DoesNotContain("Exception", result.Error.Replace("internal error", ""));
        Assert.DoesNotContain("Response file", result.Error);
    }

    [Fact]
    public async Task Every_client_command_takes_store_and_reaches_that_stores_socket()
    {
        using var home = new TempDirectory();
        var store = home.Combine("elsewhere");
        int clients = 0;
        foreach (var (path, command) in LeafCommands())
        {
            // serve has --api-socket too (where to listen); it is a server, not a client.
            if (path[0] == "serve" || !command.Options.Any(o => o.Name == "--api-socket")) continue;
            clients++;
            string[] args = [.. path, .. PlausibleArguments(command, home), "--store", store];
            var result = await CliRunner.RunAsync(CliRunner.Environment(home.Path), args);
            Assert.True(result.ExitCode == 1, $"platter {string.Join(' ', args)}\n{result}");
            Assert.Equal($"platter: cannot reach the Platter server at {Path.Combine(store, "api.sock")} (is `platter serve` running?)\n",
                result.Error);
        }
        Assert.True(clients >= 15, $"only {clients} client commands found");

        var both = await CliRunner.RunAsync(CliRunner.Environment(home.Path), "volume", "list", "--store", store, "--api-socket", home.Combine("x.sock"));
        Assert.Equal((2, "platter: give --store or --api-socket, not both\n"), (both.ExitCode, both.Error));
    }

    public static TheoryData<string> AwkwardTokens() => new()
    {
        "@s", "@", "vm1", "vm1@", "@@", "-", "--", "..", ".", "-x", "\u202Eevil", "a\tb", "", "vm1@s1@s2", "99999999999999999999",
    };

    [Theory]
    [MemberData(nameof(AwkwardTokens))]
    public async Task No_command_prints_a_stack_trace_or_reads_a_response_file(string token)
    {
        using var home = new TempDirectory();
        foreach (var (path, command) in LeafCommands())
        {
            if (path[0] == "serve") continue; // would start a server; its arguments are checked in CliErrorTests
            foreach (string[] args in new string[][] { [.. path, token], [.. path, token, token], [.. path, "vm1@s1", token] })
            {
                var result = await CliRunner.RunAsync(CliRunner.Environment(home.Path), [.. args, "--store", home.Combine("none")]);
                AssertOneLine(result, "platter " + string.Join(' ', args));
            }
        }
    }

    [Fact]
    public async Task Diff_of_a_volume_where_a_snapshot_is_expected_is_a_usage_error()
    {
        using var home = new TempDirectory();
        var result = await CliRunner.RunAsync(CliRunner.Environment(home.Path), "diff", "vm1");
        Assert.Equal(2, result.ExitCode);
        Assert.Equal("platter: 'vm1' is not a snapshot: write VOLUME@SNAPSHOT, e.g. vm1@before-upgrade (see 'platter diff --help')\n", result.Error);
    }

    [Fact]
    public async Task An_argument_starting_with_at_is_a_name_not_a_response_file()
    {
        using var home = new TempDirectory();
        var result = await CliRunner.RunAsync(CliRunner.Environment(home.Path), "snapshot", "create", "@s");
        Assert.Equal(2, result.ExitCode);
        Assert.Equal("platter: invalid volume name '': a name cannot be empty (see 'platter snapshot create --help')\n", result.Error);
    }

    [Theory]
    [InlineData(".", "a name cannot be '.' or '..'")]
    [InlineData("..", "a name cannot be '.' or '..'")]
    [InlineData("-x", "a name cannot start with '-'")]
    [InlineData("evil\u202Etxt.exe", "bidirectional formatting characters (U+202E)")]
    [InlineData("bell\u0007", "control characters")]
    public async Task New_names_that_could_not_be_managed_are_refused_by_the_cli(string name, string reason)
    {
        using var home = new TempDirectory();
        var env = CliRunner.Environment(home.Path);
        foreach (var args in new[]
                 {
                     new[] { "volume", "create", "--size", "1G", "--", name },
                     ["volume", "rename", "vm1", "--", name],
                     ["snapshot", "create", "vm1@" + name],
                     ["clone", "vm1@s1", "--", name],
                 })
        {
            var result = await CliRunner.RunAsync(env, args);
            Assert.True(result.ExitCode == 2, $"platter {string.Join(' ', args)}\n{result}");
            Assert.Contains(reason, result.Error);
            AssertOneLine(result, string.Join(' ', args));
        }
    }
}
