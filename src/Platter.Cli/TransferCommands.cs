using System.CommandLine;
using Platter.Server;
using Platter.Server.Api;

namespace Platter.Cli;

/// <summary>
/// platter send and platter receive: move a snapshot (or the changes between two snapshots) between stores as a
/// send stream (docs/SEND_STREAM.md). The server makes and applies the stream through the backend seam; the CLI only
/// pipes it between the API and stdout/stdin or a file.
/// </summary>
internal static class TransferCommands
{
    public static Command BuildSend(CliContext context)
    {
        var source = SnapshotName.Argument("VOLUME@SNAPSHOT", "The snapshot to send.");
        var from = new Option<string?>("--from")
        {
            Description = "Send only the changes since this older snapshot of the same volume (SNAPSHOT or VOLUME@SNAPSHOT). " +
                          "The target must hold that snapshot, received earlier from this volume, and be unchanged since.",
            HelpName = "SNAPSHOT",
        };
        var output = new Option<string?>("--output", "-o") { Description = "Write the stream to FILE instead of stdout.", HelpName = "FILE" };
        var api = PlatterCli.ApiSocketOption();
        var command = new Command("send",
            "Write a snapshot as a send stream, to move or back up a volume: `platter send vm1@s1 | ssh host platter receive vm1`. " +
            "A full stream carries the snapshot's data (holes stay holes); with --from only the ranges changed since the older " +
            "snapshot, so its size and time follow the change, not the volume. The stream is versioned and checksummed per record " +
            "(docs/SEND_STREAM.md); `platter receive` verifies it all and applies it all or nothing. Progress goes to stderr when it is a terminal.")
        {
            source, from, output, api,
        };
        command.SetAction(async (parse, ct) =>
        {
            var s = parse.GetRequiredValue(source);
            string? fromSnapshot = parse.GetValue(from);
            if (fromSnapshot is not null && fromSnapshot.Contains('@'))
            {
                if (SnapshotName.TryParse(fromSnapshot, out var error) is not { } parsed) throw new CliException(error!, PlatterCli.ExitUsage);
                if (parsed.Volume != s.Volume)
                    throw new CliException($"--from must be a snapshot of '{s.Volume}', not of '{parsed.Volume}'", PlatterCli.ExitUsage);
                fromSnapshot = parsed.Snapshot;
            }
            else if (fromSnapshot is not null && VolumeNames.Validate(fromSnapshot) is { } reason)
            {
                throw new CliException($"invalid snapshot name '{fromSnapshot}': {reason}", PlatterCli.ExitUsage);
            }
            string? file = parse.GetValue(output);
            if (file is null && !Console.IsOutputRedirected)
                throw new CliException("refusing to write a binary stream to a terminal: pipe it (| platter receive VOLUME) or use -o FILE");

            using var client = PlatterCli.CreateClient(parse, api, context);
            client.DisableTimeout();
            var meter = ProgressMeter.OnStderr(context, $"send {s}");
            Stream destination = file is null ? Console.OpenStandardOutput() : new FileStream(file, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20);
            long bytes;
            try
            {
                bytes = await client.SendAsync(s.Volume, s.Snapshot, fromSnapshot, destination, meter.Report, ct);
            }
            catch (Exception e)
            {
                meter.Clear();
                await destination.DisposeAsync();
                // A partial stream file would only be refused later; do not leave one behind.
                if (file is not null) File.Delete(file);
                throw e switch
                {
                    PlatterApiException { Code: "not_found" } => new CliException(PlatterCli.OneLine(e.Message) + $" (see `platter snapshot list {s.Volume}`)"),
                    IOException or HttpRequestException when e is not ServerUnreachableException =>
                        new CliException($"the stream of '{s}' was cut ({PlatterCli.OneLine(e.Message)}); nothing complete was written"),
                    _ => e,
                };
            }
            await destination.DisposeAsync();
            meter.Finish(bytes);
            return PlatterCli.ExitOk;
        });
        return command;
    }

    public static Command BuildReceive(CliContext context)
    {
        var target = new Argument<string>("VOLUME")
        {
            Description = "The volume to receive into: a new volume for a full stream; for an incremental stream, the volume that holds its base snapshot.",
            Validators =
            {
                result =>
                {
                    if (result.Tokens.Count > 0 && VolumeNames.Validate(result.Tokens[0].Value) is { } reason)
                        result.AddError($"invalid volume name '{result.Tokens[0].Value}': {reason}");
                },
            },
        };
        var input = new Option<string?>("--input", "-i") { Description = "Read the stream from FILE instead of stdin.", HelpName = "FILE" };
        var json = PlatterCli.JsonOption();
        var api = PlatterCli.ApiSocketOption();
        var command = new Command("receive",
            "Apply a send stream from `platter send`. A full stream creates VOLUME with the snapshot; an incremental stream adds the " +
            "snapshot to VOLUME, whose newest snapshot must be the stream's base (same name and identity) and which must be unchanged " +
            "since (roll it back first otherwise). Every record is verified; a stream that is cut short, damaged or made for another " +
            "base is refused and VOLUME is left exactly as it was. Do not use VOLUME while it is receiving. Progress goes to stderr when it is a terminal.")
        {
            target, input, json, api,
        };
        command.SetAction(async (parse, ct) =>
        {
            var volume = parse.GetRequiredValue(target);
            string? file = parse.GetValue(input);
            if (file is null && !Console.IsInputRedirected)
                throw new CliException("refusing to read a stream from a terminal: pipe it (platter send ... | platter receive VOLUME) or use -i FILE");
            using var client = PlatterCli.CreateClient(parse, api, context);
            client.DisableTimeout();
            var meter = ProgressMeter.OnStderr(context, $"receive {volume}");
            await using var source = file is null ? Console.OpenStandardInput() : OpenInput(file);
            if (file is not null) meter.TotalBytes = source.Length;
            ReceiveSummary summary;
            try
            {
                summary = await client.ReceiveAsync(volume, source, meter.Report, ct);
            }
            catch (Exception)
            {
                meter.Clear();
                throw;
            }
            meter.Finish(summary.StreamBytes);
            if (parse.GetValue(json))
            {
                PlatterCli.WriteJson(context, summary, TransferJsonContext.Default.ReceiveSummary);
                return PlatterCli.ExitOk;
            }
            string kind = summary.BaseSnapshot is null ? "full stream" : $"changes since '{summary.BaseSnapshot}'";
            context.Out.WriteLine($"received '{summary.Volume}@{summary.Snapshot}' ({kind}): {SizeText.Format(summary.DataBytes)} of data, " +
                                  $"{SizeText.Format(summary.ZeroBytes)} zeroed, volume size {SizeText.Format(summary.SizeBytes)}");
            return PlatterCli.ExitOk;
        });
        return command;
    }

    private static FileStream OpenInput(string file)
    {
        try
        {
            return new FileStream(file, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20);
        }
        catch (FileNotFoundException)
        {
            throw new CliException($"no such file: {file}");
        }
    }
}
