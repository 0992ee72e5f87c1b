using Platter.Cli;

namespace Platter.Server.Tests;

/// <summary>Runs the `platter` entry point in-process with captured output and a private environment.</summary>
internal static class CliRunner
{
    public sealed record Result(int ExitCode, string Out, string Error)
    {
        public override string ToString() => $"exit {ExitCode}\nstdout:\n{Out}\nstderr:\n{Error}";
    }

    public static async Task<Result> RunAsync(IReadOnlyDictionary<string, string>? environment, params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        var context = new CliContext
        {
            Out = output,
            Error = error,
            GetEnvironment = name => environment is not null && environment.TryGetValue(name, out var value) ? value : null,
        };
        int exit = await PlatterCli.RunAsync(args, context);
        return new Result(exit, output.ToString(), error.ToString());
    }

    /// <summary>An environment whose HOME is <paramref name="home"/> and nothing else is set.</summary>
    public static Dictionary<string, string> Environment(string home) => new() { ["HOME"] = home };
}
