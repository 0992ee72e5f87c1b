using System.CommandLine;
using Platter.Server;
using Platter.Storage;

namespace Platter.Cli;

/// <summary>platter check: offline consistency check of a store (the server must be stopped).</summary>
internal static class CheckCommand
{
    public static Command Build(CliContext context)
    {
        var store = new Option<string?>("--store")
        {
            Description = "Store directory. Default: $PLATTER_STORE, else $XDG_DATA_HOME/platter, else ~/.local/share/platter.",
            HelpName = "DIR",
        };
        var verify = new Option<bool>("--verify-checksums") { Description = "Also read every data block and verify its checksum (reads all stored data)." };
        var json = PlatterCli.JsonOption();
        var command = new Command("check", "Check a store's metadata offline. Refuses to run while a server holds the store.") { store, verify, json };
        command.SetAction(int (ParseResult parse) =>
        {
            var directory = Path.GetFullPath(parse.GetValue(store) ?? StorePaths.DefaultStoreDirectory(context.GetEnvironment));
            if (!Directory.Exists(directory) || !VolumeStore.Exists(directory))
                throw new CliException($"no Platter store at {directory}");
            StoreLock storeLock;
            try
            {
                storeLock = StoreLock.Acquire(directory);
            }
            catch (StoreLockedException e)
            {
                throw new CliException(e.Message + " (platter check runs offline)");
            }
            using (storeLock)
            {
                throw new CliException("platter check is not available yet: this build's storage engine has no consistency check (VolumeStore.Check)");
            }
#pragma warning disable CS0162 // replaced by the report once VolumeStore.Check lands
            return PlatterCli.ExitOk;
#pragma warning restore CS0162
        });
        return command;
    }
}
