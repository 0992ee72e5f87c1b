using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Platter.Server;
using Platter.Server.Api;

namespace Platter.Cli;

/// <summary>
/// The `platter` command line. Every command writes its result to stdout (a table or text for people, JSON with
/// --json) and reports a failure as exactly one line on stderr starting with "platter: ", with exit code 1
/// (2 for a command line that does not parse).
/// </summary>
public static class PlatterCli
{
    /// <summary>Success.</summary>
    public const int ExitOk = 0;
    /// <summary>The command ran and failed (unknown volume, server not running, bad store...).</summary>
    public const int ExitError = 1;
    /// <summary>The command line itself is wrong.</summary>
    public const int ExitUsage = 2;

    internal const string ApiUrlEnvironmentVariable = "PLATTER_API_URL";
    internal const string ApiTokenEnvironmentVariable = "PLATTER_API_TOKEN";

    /// <summary>Parses and runs <paramref name="args"/>; returns the exit code.</summary>
    public static async Task<int> RunAsync(string[] args, CliContext? context = null)
    {
        context ??= new CliContext();
        ParseResult parse;
        try
        {
            var root = BuildRootCommand(context);
            try
            {
                args = ServeConfig.Expand(args, root.Subcommands.First(c => c.Name == "serve"));
            }
            catch (CliException e)
            {
                context.Error.WriteLine("platter: " + e.Message);
                return e.ExitCode;
            }
            // No response files: "@s" is how a snapshot name starts (platter snapshot create @s), never a file of arguments.
            parse = root.Parse(args, new ParserConfiguration { ResponseFileTokenReplacer = null });
        }
        catch (Exception e)
        {
            // A validator that throws is a bug; it still gets one line, not a stack trace and exit 134.
            context.Error.WriteLine($"platter: internal error ({e.GetType().Name}): {OneLine(e.Message)}");
            return ExitError;
        }
        if (parse.Errors.Count > 0 && parse.Action is not System.CommandLine.Help.HelpAction)
        {
            var command = CommandPath(parse.CommandResult);
            // An unknown word explains more than the "required command" error it causes.
            var error = parse.Errors.FirstOrDefault(e => e.Message.StartsWith("Unrecognized", StringComparison.Ordinal)) ?? parse.Errors[0];
            context.Error.WriteLine($"platter: {OneLine(error.Message)} (see '{command} --help')");
            return ExitUsage;
        }
        var invocation = new InvocationConfiguration
        {
            Output = context.Out,
            Error = context.Error,
            // serve installs its own SIGINT/SIGTERM handlers so that shutdown can take as long as flushing needs.
            ProcessTerminationTimeout = null,
            EnableDefaultExceptionHandler = false,
        };
        try
        {
            return await parse.InvokeAsync(invocation).ConfigureAwait(false);
        }
        catch (CliException e)
        {
            context.Error.WriteLine("platter: " + e.Message);
            return e.ExitCode;
        }
        catch (ServerUnreachableException e)
        {
            context.Error.WriteLine($"platter: cannot reach the Platter server at {e.Endpoint} (is `platter serve` running?)");
            return ExitError;
        }
        catch (PlatterApiException e)
        {
            context.Error.WriteLine("platter: " + OneLine(e.Message));
            return ExitError;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or TaskCanceledException or HttpRequestException)
        {
            context.Error.WriteLine("platter: " + OneLine(e.Message));
            return ExitError;
        }
        catch (Exception e)
        {
            // A bug, but still one line: a stack trace helps nobody at a prompt, and scripts parse stderr.
            context.Error.WriteLine($"platter: internal error ({e.GetType().Name}): {OneLine(e.Message)}");
            return ExitError;
        }
    }

    private static string CommandPath(CommandResult result)
    {
        var names = new List<string>();
        for (SymbolResult? r = result; r is CommandResult c; r = c.Parent) names.Add(c.Command is RootCommand ? "platter" : c.Command.Name);
        names.Reverse();
        return string.Join(' ', names);
    }

    internal static string OneLine(string message) => message.ReplaceLineEndings(" ").Trim();

    /// <summary>The whole command tree.</summary>
    public static RootCommand BuildRootCommand(CliContext context)
    {
        var root = new RootCommand(
            "Platter serves virtual machine disks over NBD from an embedded store.\n" +
            "Run `platter serve` to start the server, then manage volumes with `platter volume` and snapshots with `platter snapshot`.");
        root.Add(ServeCommand.Build(context));
        root.Add(VolumeCommands.Build(context));
        root.Add(SnapshotCommands.Build(context));
        root.Add(SnapshotCommands.BuildClone(context));
        root.Add(SnapshotCommands.BuildRollback(context));
        root.Add(SnapshotCommands.BuildDiff(context));
        root.Add(ImageCommands.BuildImport(context));
        root.Add(ImageCommands.BuildExport(context));
        root.Add(TransferCommands.BuildSend(context));
        root.Add(TransferCommands.BuildReceive(context));
        root.Add(VolumeCommands.BuildUsage(context));
        root.Add(AttachCommand.Build(context));
        root.Add(ScrubCommands.Build(context));
        root.Add(CheckCommand.Build(context));
        AddStoreOption(root);
        return root;
    }

    /// <summary>
    /// Gives every client of the API (each command with --api-socket) a --store DIR option too, meaning that store's
    /// API socket, so the same --store works for `serve`, `check` and everything in between.
    /// </summary>
    private static void AddStoreOption(Command command)
    {
        if (command.Options.Any(o => o.Name == ApiSocketOptionName) && !command.Options.Any(o => o.Name == StoreOptionName))
        {
            command.Add(new Option<string?>(StoreOptionName)
            {
                Description = "Talk to the server of the store in DIR (its API socket DIR/api.sock). Default: $PLATTER_STORE, " +
                              "else $XDG_DATA_HOME/platter, else ~/.local/share/platter.",
                HelpName = "DIR",
            });
        }
        foreach (var sub in command.Subcommands) AddStoreOption(sub);
    }

    private const string ApiSocketOptionName = "--api-socket";
    private const string StoreOptionName = "--store";

    /// <summary>--json: machine-readable output.</summary>
    internal static Option<bool> JsonOption() => new("--json") { Description = "Print the result as JSON for scripts instead of text for people." };

    /// <summary>--api-socket for client commands.</summary>
    internal static Option<string?> ApiSocketOption() => new(ApiSocketOptionName)
    {
        Description = "The server's management API socket. Default: $PLATTER_API_SOCKET, else api.sock in the default store " +
                      "($PLATTER_STORE, else $XDG_DATA_HOME/platter, else ~/.local/share/platter). " +
                      "To reach an API on TCP set PLATTER_API_URL (e.g. http://host:8080) and PLATTER_API_TOKEN instead.",
        HelpName = "PATH",
    };

    /// <summary>--size for create and resize, parsed by <see cref="SizeParser"/>.</summary>
    internal static Option<long> SizeOption(string description) => new("--size", "-s")
    {
        Description = description + " Units are powers of 1024: 512, 4K, 10M, 20G, 1.5T.",
        HelpName = "SIZE",
        Required = true,
        CustomParser = result =>
        {
            var text = result.Tokens.Count > 0 ? result.Tokens[0].Value : "";
            if (SizeParser.TryParse(text, out var bytes, out var error)) return bytes;
            result.AddError(error);
            return 0;
        },
    };

    /// <summary>
    /// The API client for a client command: --api-socket, else --store's socket, else the environment, else the
    /// default store's socket.
    /// </summary>
    internal static PlatterApiClient CreateClient(ParseResult parse, Option<string?> apiSocket, CliContext context)
    {
        var socket = parse.GetValue(apiSocket);
        var store = parse.CommandResult.Command.Options.OfType<Option<string?>>().FirstOrDefault(o => o.Name == StoreOptionName) is { } storeOption
            ? parse.GetValue(storeOption) : null;
        if (!string.IsNullOrWhiteSpace(socket) && !string.IsNullOrWhiteSpace(store))
            throw new CliException("give --store or --api-socket, not both", ExitUsage);
        if (!string.IsNullOrWhiteSpace(socket)) return PlatterApiClient.ForUnixSocket(Path.GetFullPath(socket));
        if (!string.IsNullOrWhiteSpace(store)) return PlatterApiClient.ForUnixSocket(StorePaths.ApiSocketPath(Path.GetFullPath(store)));
        var envSocket = context.GetEnvironment(StorePaths.ApiSocketEnvironmentVariable);
        if (!string.IsNullOrWhiteSpace(envSocket)) return PlatterApiClient.ForUnixSocket(Path.GetFullPath(envSocket));
        var url = context.GetEnvironment(ApiUrlEnvironmentVariable);
        if (!string.IsNullOrWhiteSpace(url))
        {
            if (!Uri.TryCreate(url, UriKind.Absolute, out var uri) || (uri.Scheme != "http" && uri.Scheme != "https"))
                throw new CliException($"{ApiUrlEnvironmentVariable} is not an http(s) URL: {url}");
            var token = context.GetEnvironment(ApiTokenEnvironmentVariable);
            if (string.IsNullOrEmpty(token)) throw new CliException($"{ApiUrlEnvironmentVariable} is set but {ApiTokenEnvironmentVariable} is not");
            return PlatterApiClient.ForTcp(uri, token);
        }
        return PlatterApiClient.ForUnixSocket(StorePaths.DefaultApiSocketPath(context.GetEnvironment));
    }

    internal static void WriteJson<T>(CliContext context, T value, JsonTypeInfo<T> type) =>
        context.Out.WriteLine(JsonSerializer.Serialize(value, type));

    internal static string FormatTime(DateTimeOffset time) =>
        time.ToUniversalTime().ToString("yyyy-MM-dd HH:mm:ss'Z'", CultureInfo.InvariantCulture);
}
