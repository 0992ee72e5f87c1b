using System.Text.RegularExpressions;
using Platter.Cli;
using Xunit;

namespace Platter.Server.Tests;

/// <summary>Every `platter serve` flag is explained in --help and in the README, so adding one without documenting it fails here.</summary>
public class DocumentationTests
{
    [Fact]
    public async Task ServeHelpDescribesEveryFlag()
    {
        var serve = ServeCommand.Build(new CliContext());
        var help = await CliRunner.RunAsync(null, "serve", "--help");
        Assert.Equal(0, help.ExitCode);
        foreach (var option in serve.Options)
        {
            Assert.False(string.IsNullOrWhiteSpace(option.Description), $"{option.Name} has no description");
            Assert.Contains(option.Name, help.Out);
        }
        Assert.Contains("--read-only", help.Out);
    }

    [Fact]
    public void ReadmeMentionsEveryServeFlag()
    {
        var readme = File.ReadAllText(Repository.PathOf("README.md"));
        var missing = ServeCommand.Build(new CliContext()).Options
            .Where(o => o.Name.StartsWith("--", StringComparison.Ordinal) && o.Name != "--help")
            // The whole flag: "--tls" must not count as mentioned because "--tls-cert" is.
            .Where(o => !Regex.IsMatch(readme, Regex.Escape(o.Name) + "(?![a-z-])"))
            .Select(o => o.Name)
            .ToArray();
        Assert.True(missing.Length == 0, "README.md does not mention: " + string.Join(", ", missing));
    }
}
