using System.CommandLine;

namespace Platter.Cli;

/// <summary>
/// <c>platter serve --config FILE</c>: the same settings as the flags, one per line as <c>name = value</c> where name
/// is the flag without its dashes (<c>store = /var/lib/platter</c>, <c>read-only = true</c>); '#' starts a comment.
/// The file's settings become flags in front of the command line, except those the command line gives itself, so a
/// flag always overrides the file (the systemd unit reads /etc/platter/platter.conf this way).
/// </summary>
internal static class ServeConfig
{
    /// <summary>The option that names the file.</summary>
    public const string OptionName = "--config";

    // A configuration file is a few hundred bytes; anything far larger is the wrong file.
    private const long FileBytesMax = 64 * 1024;

    /// <summary>
    /// Returns <paramref name="args"/> with the file's settings spliced in when it is a serve command line with
    /// --config; otherwise <paramref name="args"/> itself. Errors name the file and line.
    /// </summary>
    public static string[] Expand(string[] args, Command serve)
    {
        int at = Array.IndexOf(args, OptionName);
        if (args.Length == 0 || args[0] != "serve" || at < 0) return args;
        if (at + 1 >= args.Length) throw new CliException($"{OptionName} needs a FILE", PlatterCli.ExitUsage);
        var path = args[at + 1];
        string[] lines;
        try
        {
            if (new FileInfo(path).Length > FileBytesMax) throw new CliException($"{path} is larger than {FileBytesMax / 1024} KiB: not a Platter configuration file");
            lines = File.ReadAllLines(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CliException($"cannot read the configuration file: {e.Message}");
        }

        var given = new HashSet<string>(args.Where(a => a.StartsWith("--", StringComparison.Ordinal)).Select(a => a.Split('=', 2)[0]));
        foreach (var option in serve.Options)
        {
            // A short alias on the command line (-r, -v) counts as its long flag.
            if (option.Aliases.Any(given.Contains)) given.Add(option.Name);
        }
        var extra = new List<string>();
        for (int i = 0; i < lines.Length; i++)
        {
            var line = lines[i];
            int hash = line.IndexOf('#');
            if (hash >= 0) line = line[..hash];
            line = line.Trim();
            if (line.Length == 0) continue;
            int eq = line.IndexOf('=');
            if (eq <= 0) throw new CliException($"{path}:{i + 1}: expected 'name = value', got '{line}'", PlatterCli.ExitUsage);
            var name = "--" + line[..eq].Trim();
            var value = line[(eq + 1)..].Trim();
            // A setting may use a flag's old name (map-checksum-cache for map-cache): files written for an older version keep working.
            var option = serve.Options.FirstOrDefault(o => (o.Name == name || o.Aliases.Contains(name)) && name != OptionName && name != "--help");
            if (option is null) throw new CliException($"{path}:{i + 1}: unknown setting '{name[2..]}' (the settings are serve's flags without '--': see platter serve --help)", PlatterCli.ExitUsage);
            if (given.Contains(option.Name)) continue;
            if (option is Option<bool>)
            {
                if (!bool.TryParse(value, out var on)) throw new CliException($"{path}:{i + 1}: '{name[2..]}' is true or false, not '{value}'", PlatterCli.ExitUsage);
                if (on) extra.Add(name);
            }
            else
            {
                if (value.Length == 0) throw new CliException($"{path}:{i + 1}: '{name[2..]}' has no value", PlatterCli.ExitUsage);
                extra.Add(name);
                extra.Add(value);
            }
        }
        return [args[0], .. extra, .. args[1..]];
    }
}
