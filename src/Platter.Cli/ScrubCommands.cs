using System.CommandLine;
using System.Globalization;
using Platter.Server;
using Platter.Server.Api;

namespace Platter.Cli;

/// <summary>platter scrub start|status|stop: the online scrub, a client of the management API.</summary>
internal static class ScrubCommands
{
    public static Command Build(CliContext context)
    {
        var scrub = new Command("scrub",
            "Read every stored block while the server keeps serving and verify its checksum, to find damage before a reader does. Needs a running `platter serve`.");
        scrub.Add(Start(context));
        scrub.Add(Status(context));
        scrub.Add(Stop(context));
        return scrub;
    }

    private static Command Start(CliContext context)
    {
        var targets = new Argument<string[]>("VOLUME[@SNAPSHOT]")
        {
            Description = "Volumes and snapshots to scrub (blocks they share are read once); none: the whole store.",
            Arity = ArgumentArity.ZeroOrMore,
        };
        var rate = new Option<double?>("--rate")
        {
            Description = "I/O budget in MB/s (10^6 bytes per second); 0 = no limit. Default: 64.",
            Validators =
            {
                r =>
                {
                    if (r.GetValueOrDefault<double?>() is < 0) r.AddError("--rate must be 0 (no limit) or more MB/s");
                },
            },
        };
        var restart = new Option<bool>("--restart") { Description = "Start from the beginning even when a paused scrub of the same targets could resume." };
        var json = PlatterCli.JsonOption();
        var api = PlatterCli.ApiSocketOption();
        var command = new Command("start", "Start a scrub, or resume a paused one of the same targets (progress survives server restarts).") { targets, rate, restart, json, api };
        command.SetAction(async (parse, ct) =>
        {
            using var client = PlatterCli.CreateClient(parse, api, context);
            long? bytesPerSecond = parse.GetValue(rate) is { } mb ? (long)Math.Round(mb * 1_000_000) : null;
            var status = await client.StartScrubAsync(new ScrubStartRequest(parse.GetValue(targets) ?? [], bytesPerSecond, parse.GetValue(restart)), ct);
            if (parse.GetValue(json)) PlatterCli.WriteJson(context, status, PlatterJsonContext.Default.ScrubStatusDto);
            else context.Out.WriteLine($"scrub of {What(status)} {status.State} at {Percent(status)} ({Rate(status.RateBytesPerSecond)}); `platter scrub status` shows progress");
            return PlatterCli.ExitOk;
        });
        return command;
    }

    private static Command Status(CliContext context)
    {
        var json = PlatterCli.JsonOption();
        var api = PlatterCli.ApiSocketOption();
        var command = new Command("status", "Progress, rate, ETA, blocks checked and the bad blocks found, with every volume/snapshot and offset that references each.") { json, api };
        command.SetAction(async (parse, ct) =>
        {
            using var client = PlatterCli.CreateClient(parse, api, context);
            var status = await client.GetScrubStatusAsync(ct);
            if (parse.GetValue(json))
            {
                PlatterCli.WriteJson(context, status, PlatterJsonContext.Default.ScrubStatusDto);
                return PlatterCli.ExitOk;
            }
            var o = context.Out;
            if (status.State == "none")
            {
                o.WriteLine("no scrub has run on this store (start one with `platter scrub start`)");
                return PlatterCli.ExitOk;
            }
            o.WriteLine($"scrub of {What(status)}: {status.State}, {Percent(status)}");
            o.WriteLine($"  checked: {status.BlocksChecked:N0} of {status.BlocksTotal:N0} blocks ({SizeText.Format(status.BytesChecked)})");
            if (status.State == "running")
            {
                string eta = status.EtaSeconds is { } s ? TimeSpan.FromSeconds(Math.Ceiling(s)).ToString("c", CultureInfo.InvariantCulture) : "unknown";
                o.WriteLine($"  rate:    {status.CurrentBytesPerSecond / 1e6:0.0} MB/s ({Rate(status.RateBytesPerSecond)}), ETA {eta}");
            }
            if (status.StartedUtc is { } started) o.WriteLine($"  started: {PlatterCli.FormatTime(started)}");
            if (status.FinishedUtc is { } finished) o.WriteLine($"  finished: {PlatterCli.FormatTime(finished)}");
            o.WriteLine($"  bad blocks found: {status.BadBlocksFound}; listed now (still referenced): {status.BadBlocks.Count}");
            foreach (var bad in status.BadBlocks)
            {
                var where = string.Join(", ", bad.References.Select(r => $"{r.Version} at offset {r.Offset}"));
                o.WriteLine($"  physical block {bad.PhysicalBlock} ({bad.Reason}): {where}");
            }
            if (status.BadBlocks.Count > 0)
                o.WriteLine("  reads of these blocks fail with EIO until they are restored or overwritten: see README \"Scrub\" for what to do");
            return PlatterCli.ExitOk;
        });
        return command;
    }

    private static Command Stop(CliContext context)
    {
        var json = PlatterCli.JsonOption();
        var api = PlatterCli.ApiSocketOption();
        var command = new Command("stop", "Pause the running scrub, keeping its progress (`platter scrub start` resumes it).") { json, api };
        command.SetAction(async (parse, ct) =>
        {
            using var client = PlatterCli.CreateClient(parse, api, context);
            var status = await client.StopScrubAsync(ct);
            if (parse.GetValue(json)) PlatterCli.WriteJson(context, status, PlatterJsonContext.Default.ScrubStatusDto);
            else context.Out.WriteLine(status.State == "paused"
                ? $"scrub of {What(status)} paused at {Percent(status)}; `platter scrub start` resumes it"
                : $"no scrub is running (state: {status.State})");
            return PlatterCli.ExitOk;
        });
        return command;
    }

    private static string What(ScrubStatusDto s) => s.Targets.Count == 0 ? "the whole store" : string.Join(", ", s.Targets);

    private static string Percent(ScrubStatusDto s) => s.Percent.ToString("0.0", CultureInfo.InvariantCulture) + "%";

    private static string Rate(long bytesPerSecond) => bytesPerSecond == 0 ? "no limit" : $"budget {bytesPerSecond / 1e6:0.#} MB/s";
}
