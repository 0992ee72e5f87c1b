using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Logging.Console;
using Microsoft.Extensions.DependencyInjection;

namespace Platter.Cli;

/// <summary>How <c>platter serve</c> writes its log: <c>text</c> (one readable line per event) or <c>json</c> (one object per line).</summary>
internal enum LogFormat
{
    Text,
    Json,
}

/// <summary>
/// The server's console logging. Text lines read <c>2026-12-02T00:42:00.123Z info  nbd     NBD unix: opened export 'vm1'</c>:
/// a short category (nbd, api, store, server, http) instead of .NET's <c>info: Platter.Server[0]</c>. Under systemd
/// (<c>$JOURNAL_STREAM</c> set: stdout is the journal) each line starts with the syslog priority (<c>&lt;6&gt;</c>) so
/// <c>journalctl -p warning</c> filters by level, and the timestamp is left to journald.
/// </summary>
internal static class ServeLogging
{
    /// <summary>Set by systemd when stdout goes to the journal (systemd.exec(5)).</summary>
    public const string JournalStreamVariable = "JOURNAL_STREAM";

    public static ILoggerFactory Create(LogLevel level, LogFormat format, bool journal) => LoggerFactory.Create(logging =>
    {
        logging.SetMinimumLevel(level);
        // ASP.NET Core's own request logging is noise for an operator; its warnings and errors still show.
        logging.AddFilter("Microsoft", level <= LogLevel.Debug ? LogLevel.Information : LogLevel.Warning);
        // The console logger queues lines for a background writer; by default, once its queue is full, every
        // logging call waits. A log consumer that reads slowly or not at all (a pipe nobody drains, a stuck
        // terminal) would then stall NBD and API requests, which log. A server must keep serving: drop lines
        // instead (the logger reports how many it dropped once it catches up).
        logging.AddConsole(console =>
        {
            console.QueueFullMode = ConsoleLoggerQueueFullMode.DropWrite;
            console.FormatterName = format == LogFormat.Json ? ConsoleFormatterNames.Json : PlatterFormatter.FormatterName;
        });
        // The trimming/AOT warnings are about binding the options from IConfiguration; nothing binds them here (they
        // are set in code, below), so nothing the binder would reach for is trimmed away.
#pragma warning disable IL2026, IL3050
        logging.AddConsoleFormatter<PlatterFormatter, PlatterFormatterOptions>(options => options.Journal = journal);
#pragma warning restore IL2026, IL3050
        // The JSON formatter is built in; AddJsonConsole would also make it the default, so only its options are set here.
        logging.Services.Configure<JsonConsoleFormatterOptions>(json =>
        {
            json.UseUtcTimestamp = true;
            json.TimestampFormat = "yyyy-MM-ddTHH:mm:ss.fffZ";
            json.IncludeScopes = false;
        });
    });

    /// <summary>The short name an operator reads for a logger category.</summary>
    public static string ShortCategory(string category) => category switch
    {
        _ when category.StartsWith("Platter.Nbd", StringComparison.Ordinal) => "nbd",
        _ when category.StartsWith("Platter.Api", StringComparison.Ordinal) => "api",
        _ when category.StartsWith("Platter.Storage", StringComparison.Ordinal) => "store",
        _ when category.StartsWith("Platter.Server", StringComparison.Ordinal) => "server",
        "Platter" => "platter",
        _ when category.StartsWith("Microsoft.AspNetCore", StringComparison.Ordinal) => "http",
        _ when category.StartsWith("Microsoft.", StringComparison.Ordinal) => "host",
        _ => category[(category.LastIndexOf('.') + 1)..].ToLowerInvariant(),
    };

    /// <summary>The level as the text format spells it (five characters, aligned).</summary>
    public static string LevelText(LogLevel level) => level switch
    {
        LogLevel.Trace => "trace",
        LogLevel.Debug => "debug",
        LogLevel.Information => "info ",
        LogLevel.Warning => "warn ",
        LogLevel.Error => "error",
        LogLevel.Critical => "crit ",
        _ => "     ",
    };

    /// <summary>The syslog priority journald reads from a <c>&lt;N&gt;</c> prefix (sd-daemon(3)).</summary>
    public static int SyslogPriority(LogLevel level) => level switch
    {
        LogLevel.Critical => 2,
        LogLevel.Error => 3,
        LogLevel.Warning => 4,
        LogLevel.Information => 6,
        _ => 7,
    };
}

/// <summary>Options of <see cref="PlatterFormatter"/>.</summary>
internal sealed class PlatterFormatterOptions : ConsoleFormatterOptions
{
    /// <summary>Write for journald: priority prefixes, no timestamps.</summary>
    public bool Journal { get; set; }
}

/// <summary>One line per event: UTC time, level, short category, message; an exception follows on indented lines.</summary>
internal sealed class PlatterFormatter : ConsoleFormatter, IDisposable
{
    public const string FormatterName = "platter";

    private readonly IDisposable? _reload;
    private PlatterFormatterOptions _options;

    public PlatterFormatter(Microsoft.Extensions.Options.IOptionsMonitor<PlatterFormatterOptions> options) : base(FormatterName)
    {
        _options = options.CurrentValue;
        _reload = options.OnChange((o, _) => _options = o);
    }

    public override void Write<TState>(in LogEntry<TState> logEntry, IExternalScopeProvider? scopeProvider, TextWriter textWriter)
    {
        var message = logEntry.Formatter(logEntry.State, logEntry.Exception);
        if (message is null && logEntry.Exception is null) return;
        var options = _options;
        var prefix = options.Journal
            ? $"<{ServeLogging.SyslogPriority(logEntry.LogLevel)}>"
            : DateTime.UtcNow.ToString("yyyy-MM-ddTHH:mm:ss.fffZ ", System.Globalization.CultureInfo.InvariantCulture);
        textWriter.Write(prefix);
        if (!options.Journal)
        {
            // journald already shows the level (from the priority) in colour; the text repeats it elsewhere.
            textWriter.Write(ServeLogging.LevelText(logEntry.LogLevel));
            textWriter.Write(' ');
        }
        textWriter.Write(ServeLogging.ShortCategory(logEntry.Category).PadRight(7));
        textWriter.Write(' ');
        // One event, one line: a newline inside a message (a client's text, say) must not forge a second entry.
        textWriter.Write(message?.ReplaceLineEndings(" "));
        textWriter.Write('\n');
        if (logEntry.Exception is { } e)
        {
            foreach (var line in e.ToString().Split('\n'))
            {
                if (options.Journal) textWriter.Write(prefix);
                textWriter.Write("    ");
                textWriter.Write(line.TrimEnd('\r'));
                textWriter.Write('\n');
            }
        }
    }

    public void Dispose() => _reload?.Dispose();
}
