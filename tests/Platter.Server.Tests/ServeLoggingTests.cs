using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using Platter.Cli;
using Xunit;

namespace Platter.Server.Tests;

/// <summary>The text log format: readable categories, one line per event, journald priorities under systemd.</summary>
public class ServeLoggingTests
{
    [Theory]
    [InlineData("Platter.Nbd.NbdServer", "nbd")]
    [InlineData("Platter.Api", "api")]
    [InlineData("Platter.Storage", "store")]
    [InlineData("Platter.Server", "server")]
    [InlineData("Platter", "platter")]
    [InlineData("Microsoft.AspNetCore.Server.Kestrel", "http")]
    [InlineData("Microsoft.Hosting.Lifetime", "host")]
    public void CategoriesAreShortNames(string category, string expected) => Assert.Equal(expected, ServeLogging.ShortCategory(category));

    [Fact]
    public void TextLineHasTimeLevelCategoryAndMessageOnOneLine()
    {
        var line = Format(journal: false, LogLevel.Information, "Platter.Nbd.NbdServer", "NBD unix: opened export 'vm1'\nforged");
        Assert.Matches(@"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z info  nbd     NBD unix: opened export 'vm1' forged\n$", line);
        Assert.DoesNotContain("[0]", line);
    }

    [Fact]
    public void JournalLinesCarryThePriorityAndNoTimestamp()
    {
        Assert.Equal("<4>api     disk almost full\n", Format(journal: true, LogLevel.Warning, "Platter.Api", "disk almost full"));
        Assert.Equal("<6>server  store open\n", Format(journal: true, LogLevel.Information, "Platter.Server", "store open"));
        var withException = Format(journal: true, LogLevel.Error, "Platter.Server", "failed", new InvalidOperationException("boom"));
        Assert.StartsWith("<3>server  failed\n<3>    System.InvalidOperationException: boom", withException);
    }

    private static string Format(bool journal, LogLevel level, string category, string message, Exception? exception = null)
    {
        using var formatter = new PlatterFormatter(new FixedOptions(new PlatterFormatterOptions { Journal = journal }));
        var writer = new StringWriter();
        var entry = new Microsoft.Extensions.Logging.Abstractions.LogEntry<string>(level, category, new EventId(0), message, exception, (s, _) => s);
        formatter.Write(in entry, null, writer);
        return writer.ToString();
    }

    private sealed class FixedOptions(PlatterFormatterOptions value) : IOptionsMonitor<PlatterFormatterOptions>
    {
        public PlatterFormatterOptions CurrentValue => value;
        public PlatterFormatterOptions Get(string? name) => value;
        public IDisposable? OnChange(Action<PlatterFormatterOptions, string?> listener) => null;
    }
}
