using Microsoft.Extensions.Logging;
using Platter.Server;

namespace Platter.Cli;

/// <summary>
/// What the CLI reads from and writes to its process. Tests run the CLI in-process with their own writers,
/// environment and shutdown trigger, so nothing here may be global state.
/// </summary>
public sealed class CliContext
{
    /// <summary>Standard output: results for people or JSON for scripts.</summary>
    public TextWriter Out { get; init; } = Console.Out;

    /// <summary>Standard error: the one-line error messages.</summary>
    public TextWriter Error { get; init; } = Console.Error;

    /// <summary>Environment lookup (PLATTER_STORE, PLATTER_API_SOCKET, XDG_DATA_HOME, HOME...).</summary>
    public Func<string, string?> GetEnvironment { get; init; } = Environment.GetEnvironmentVariable;

    /// <summary>
    /// When set, <c>serve</c> stops when this task completes instead of waiting for SIGINT/SIGTERM.
    /// </summary>
    public Task? ShutdownRequested { get; init; }

    /// <summary>Called once <c>serve</c> is listening.</summary>
    public Action<PlatterHost>? Serving { get; init; }

    /// <summary>Creates the logger factory for <c>serve</c>; the default logs one line per event to stdout.</summary>
    public Func<LogLevel, ILoggerFactory>? CreateLoggerFactory { get; init; }
}

/// <summary>An error to report as one line and a non-zero exit code.</summary>
public sealed class CliException(string message, int exitCode = PlatterCli.ExitError) : Exception(message)
{
    /// <summary>The process exit code.</summary>
    public int ExitCode { get; } = exitCode;
}
