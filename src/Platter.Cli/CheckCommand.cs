using System.CommandLine;
using Microsoft.Extensions.Logging;
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
        var command = new Command("check",
            "Check a store offline: every extent inside its volume and the data file, no block mapped twice or both mapped and free, " +
            "space adding up. Refuses to run while a server holds the store. Exit code 1 when it finds a problem.")
        {
            store, verify, json,
        };
        command.SetAction(int (ParseResult parse) =>
        {
            var directory = Path.GetFullPath(parse.GetValue(store) ?? StorePaths.DefaultStoreDirectory(context.GetEnvironment));
            // Either file alone is a damaged store (Open says which); neither is no store.
            if (!Directory.Exists(directory) || (!File.Exists(Path.Combine(directory, "data.mdb")) && !File.Exists(Path.Combine(directory, "data"))))
                throw new CliException($"no Platter store at {directory}");
            CheckReport report;
            // Recovery's warnings (a journal record dropped, and what it held) belong in the check's output.
            using var loggerFactory = context.CreateLoggerFactory?.Invoke(LogLevel.Warning) ?? ServeLogging.Create(LogLevel.Warning, LogFormat.Text, journal: false);
            try
            {
                using var opened = VolumeStore.Open(directory, new StoreOptions { CreateIfMissing = false, LoggerFactory = loggerFactory });
                report = opened.Check(parse.GetValue(verify));
            }
            catch (StorageException e) when (e.Error == StorageError.InUse)
            {
                throw new CliException($"the store at {directory} is in use by a running server; stop `platter serve` first (platter check runs offline)");
            }
            catch (StorageException e)
            {
                // Damaged metadata refuses a normal open; a salvage open (which writes nothing) lists every problem.
                var damage = e.Error == StorageError.BadStore ? ListDamage(directory) : [];
                if (damage.Count == 0) throw new CliException($"cannot open the store at {directory}: {PlatterCli.OneLine(e.Message)}");
                foreach (var problem in damage) context.Out.WriteLine("problem: " + problem);
                throw new CliException($"the store at {directory} has damaged metadata ({damage.Count} problem(s) above); `platter serve --salvage` serves its intact volumes read-only");
            }

            if (parse.GetValue(json))
            {
                PlatterCli.WriteJson(context, report, CliJsonContext.Default.CheckReport);
            }
            else
            {
                context.Out.WriteLine($"store:          {directory}");
                context.Out.WriteLine($"volumes:        {report.Volumes}");
                context.Out.WriteLine($"extent records: {report.ExtentRecords}");
                context.Out.WriteLine($"blocks:         {report.MappedBlocks} mapped, {report.FreeBlocks} free, {report.TotalBlocks} in the data file");
                if (parse.GetValue(verify)) context.Out.WriteLine($"checksums:      {report.BlocksVerified} blocks read and verified");
                foreach (var problem in report.Problems) context.Out.WriteLine("problem: " + problem);
                if (report.Ok) context.Out.WriteLine("ok: no problems found");
            }
            if (!report.Ok) throw new CliException($"the store at {directory} has {report.Problems.Count} problem(s)");
            return PlatterCli.ExitOk;
        });
        return command;
    }

    private static IReadOnlyList<string> ListDamage(string directory)
    {
        try
        {
            using var salvaged = VolumeStore.Open(directory, new StoreOptions { Salvage = true, CreateIfMissing = false });
            return salvaged.Damage;
        }
        catch (StorageException)
        {
            return [];
        }
    }
}
