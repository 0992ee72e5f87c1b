using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Platter.Server;
using Platter.Server.Api;
using Platter.Storage;

namespace Platter.Cli;

/// <summary>
/// platter snapshot create|list|delete, platter clone, platter rollback and platter diff: clients of the management API.
/// </summary>
internal static class SnapshotCommands
{
    public static Command Build(CliContext context)
    {
        var snapshot = new Command("snapshot",
            "Take, list and delete snapshots: read-only, point-in-time images of a volume, named VOLUME@SNAPSHOT. " +
            "A snapshot is also an NBD export of that name (read-only), for backups or to inspect old data. Needs a running `platter serve`.");
        snapshot.Add(Create(context));
        snapshot.Add(List(context));
        snapshot.Add(Delete(context));
        return snapshot;
    }

    private static Command Create(CliContext context)
    {
        var name = SnapshotName.Argument("VOLUME@SNAPSHOT", "The volume to snapshot and the new snapshot's name.", forNew: true);
        var json = PlatterCli.JsonOption();
        var api = PlatterCli.ApiSocketOption();
        var command = new Command("create",
            "Take a snapshot of a volume's current content. It is instant and costs no space when taken, however big the volume (O(1): " +
            "nothing is copied); from then on, blocks the volume overwrites stay held by the snapshot, so it grows as the volume changes. " +
            "Writes acknowledged before the command are in it; the snapshot is durable when the command returns. " +
            "For a consistent image of a running VM, freeze or flush the guest's file systems first.")
        {
            name, json, api,
        };
        command.SetAction(async (parse, ct) =>
        {
            var s = parse.GetRequiredValue(name);
            using var client = PlatterCli.CreateClient(parse, api, context);
            var created = await Call(client, () => client.CreateSnapshotAsync(s.Volume, s.Snapshot, ct), s.Volume, s.Snapshot, ct);
            if (parse.GetValue(json)) PlatterCli.WriteJson(context, created, PlatterJsonContext.Default.SnapshotDto);
            else context.Out.WriteLine($"created snapshot '{created.FullName}' ({SizeText.Format(created.SizeBytes)})");
            return PlatterCli.ExitOk;
        });
        return command;
    }

    /// <summary>What the ALLOCATED column shows for a snapshot whose allocated bytes the server did not count (not 0: that would be a claim).</summary>
    internal const string NotComputed = "n/a";

    private static Command List(CliContext context)
    {
        var volume = new Argument<string?>("VOLUME")
        {
            Description = "List only this volume's snapshots (oldest first). Default: every volume's.",
            Arity = ArgumentArity.ZeroOrOne,
        };
        volume.Validators.Add(result =>
        {
            if (result.Tokens.Count > 0 && VolumeNames.ValidateExisting(result.Tokens[0].Value) is { } reason)
                result.AddError($"invalid volume name '{result.Tokens[0].Value}': {reason}");
        });
        var json = PlatterCli.JsonOption();
        var api = PlatterCli.ApiSocketOption();
        var command = new Command("list",
            "List snapshots with their size, the data they map, when they were taken and the volumes cloned from them " +
            "(a snapshot with clones cannot be deleted).")
        {
            volume, json, api,
        };
        command.Aliases.Add("ls");
        command.SetAction(async (parse, ct) =>
        {
            using var client = PlatterCli.CreateClient(parse, api, context);
            var only = parse.GetValue(volume);
            var snapshots = only is null
                ? await client.ListSnapshotsAsync(ct)
                : await VolumeCommands.Call(() => client.ListSnapshotsAsync(only, ct), only);
            if (parse.GetValue(json))
            {
                PlatterCli.WriteJson(context, new SnapshotListDto(snapshots), PlatterJsonContext.Default.SnapshotListDto);
                return PlatterCli.ExitOk;
            }
            if (snapshots.Count == 0)
            {
                context.Out.WriteLine(only is null
                    ? "no snapshots (take one with `platter snapshot create VOLUME@SNAPSHOT`)"
                    : $"volume '{only}' has no snapshots (take one with `platter snapshot create {only}@SNAPSHOT`)");
                return PlatterCli.ExitOk;
            }
            var table = new Table("NAME", "SIZE", "ALLOCATED", "CREATED", "CLONES").AlignRight(1, 2);
            // Grouped by volume, each volume's snapshots in the server's order (oldest first).
            foreach (var s in snapshots.OrderBy(s => s.Volume, StringComparer.Ordinal))
            {
                table.Add(s.FullName, SizeText.Format(s.SizeBytes), s.AllocatedBytes is { } allocated ? SizeText.Format(allocated) : NotComputed,
                    PlatterCli.FormatTime(s.CreatedUtc), s.Clones.Count == 0 ? "-" : string.Join(",", s.Clones));
            }
            context.Out.Write(table.ToString());
            if (snapshots.Any(s => s.AllocatedBytes is null))
                context.Out.WriteLine($"{NotComputed}: not counted when listing on this store (an RBD store walks each snapshot's object map for it); `platter du` counts it");
            return PlatterCli.ExitOk;
        });
        return command;
    }

    private static Command Delete(CliContext context)
    {
        var name = SnapshotName.Argument("VOLUME@SNAPSHOT", "The snapshot to delete.");
        var force = ForceOption("Delete it even while NBD clients read it (they then get I/O errors).");
        var json = PlatterCli.JsonOption();
        var api = PlatterCli.ApiSocketOption();
        var command = new Command("delete",
            "Delete a snapshot. The volume is not affected; space only the snapshot held is freed in the background. " +
            "A snapshot that volumes were cloned from cannot be deleted while those clones exist: delete the clones first " +
            "(`platter snapshot list` shows them). This cannot be undone.")
        {
            name, json, api,
        };
        command.Add(force);
        command.Aliases.Add("rm");
        command.SetAction(async (parse, ct) =>
        {
            var s = parse.GetRequiredValue(name);
            using var client = PlatterCli.CreateClient(parse, api, context);
            bool forced = parse.GetValue(force);
            await Call(client, async () => { await client.DeleteSnapshotAsync(s.Volume, s.Snapshot, forced, ct); return 0; }, s.Volume, s.Snapshot, ct);
            if (parse.GetValue(json)) context.Out.WriteLine("{\"deleted\":\"" + JsonEncodedText.Encode(s.ToString()) + "\"}");
            else context.Out.WriteLine($"deleted snapshot '{s}'");
            return PlatterCli.ExitOk;
        });
        return command;
    }

    internal static Option<bool> ForceOption(string description) => new("--force", "-f") { Description = description };

    /// <summary>platter clone VOL@SNAP NEWVOL.</summary>
    public static Command BuildClone(CliContext context)
    {
        var source = SnapshotName.Argument("VOLUME@SNAPSHOT", "The snapshot to clone.");
        var newName = new Argument<string>("NEW_VOLUME")
        {
            Description = "Name of the new volume (and its NBD export name).",
            Validators =
            {
                result =>
                {
                    if (result.Tokens.Count > 0 && VolumeNames.Validate(result.Tokens[0].Value) is { } reason)
                        result.AddError($"invalid volume name '{result.Tokens[0].Value}': {reason}");
                },
            },
        };
        var json = PlatterCli.JsonOption();
        var api = PlatterCli.ApiSocketOption();
        var command = new Command("clone",
            "Create a new writable volume whose content is the snapshot's. Instant and free however big the snapshot (O(1): " +
            "the clone shares the snapshot's blocks and stores only what is written to it afterwards). " +
            "While the clone exists its snapshot cannot be deleted (so neither can the source volume, even with --recursive) " +
            "unless the clone is made independent first with `platter volume flatten NEW_VOLUME` (which copies the shared data); " +
            "`platter volume info NEW_VOLUME` shows where it came from.")
        {
            source, newName, json, api,
        };
        command.SetAction(async (parse, ct) =>
        {
            var s = parse.GetRequiredValue(source);
            var target = parse.GetRequiredValue(newName);
            using var client = PlatterCli.CreateClient(parse, api, context);
            var created = await Call(client, () => client.CloneSnapshotAsync(s.Volume, s.Snapshot, target, ct), s.Volume, s.Snapshot, ct);
            if (parse.GetValue(json)) PlatterCli.WriteJson(context, created, PlatterJsonContext.Default.VolumeDto);
            else context.Out.WriteLine($"cloned '{s}' to volume '{created.Name}' ({SizeText.Format(created.SizeBytes)})");
            return PlatterCli.ExitOk;
        });
        return command;
    }

    /// <summary>platter rollback VOL@SNAP [--recursive].</summary>
    public static Command BuildRollback(CliContext context)
    {
        var target = SnapshotName.Argument("VOLUME@SNAPSHOT", "The snapshot to return the volume to.");
        var recursive = new Option<bool>("--recursive", "-r")
        {
            Description = "Also delete the volume's snapshots newer than this one (without it their existence refuses the rollback). " +
                          "Snapshots that have clones are never deleted: the rollback is refused instead.",
        };
        var force = ForceOption("Roll back even while NBD clients use the volume (they see its content change under them; " +
                                "a VM's file systems can be corrupted). Without it, connected clients refuse the rollback.");
        var json = PlatterCli.JsonOption();
        var api = PlatterCli.ApiSocketOption();
        var command = new Command("rollback",
            "Return a volume to a snapshot: its content and size become the snapshot's, instantly. Everything written to the volume " +
            "since the snapshot was taken is discarded for good (the snapshot itself is kept). Clients connected to the volume see " +
            "the old content at once, so stop the VM using it first: while NBD clients are connected it is refused unless --force " +
            "(`platter volume status VOLUME` lists them).")
        {
            target, recursive, force, json, api,
        };
        command.SetAction(async (parse, ct) =>
        {
            var s = parse.GetRequiredValue(target);
            bool deleteNewer = parse.GetValue(recursive);
            using var client = PlatterCli.CreateClient(parse, api, context);
            bool forced = parse.GetValue(force);
            var volume = await Call(client, () => client.RollbackAsync(s.Volume, s.Snapshot, deleteNewer, forced, ct), s.Volume, s.Snapshot, ct);
            if (parse.GetValue(json)) PlatterCli.WriteJson(context, volume, PlatterJsonContext.Default.VolumeDto);
            else context.Out.WriteLine($"rolled volume '{volume.Name}' back to snapshot '{s}' ({SizeText.Format(volume.SizeBytes)})");
            return PlatterCli.ExitOk;
        });
        return command;
    }

    /// <summary>platter diff VOL@SNAP1 [VOL@SNAP2|VOL].</summary>
    public static Command BuildDiff(CliContext context)
    {
        var from = SnapshotName.Argument("FROM", "The older point: VOLUME@SNAPSHOT.");
        var to = new Argument<string?>("TO")
        {
            Description = "The newer point: VOLUME@SNAPSHOT of the same volume, or VOLUME for its current content (the default).",
            Arity = ArgumentArity.ZeroOrOne,
        };
        var json = PlatterCli.JsonOption();
        var api = PlatterCli.ApiSocketOption();
        var command = new Command("diff",
            "List the byte ranges whose content differs between a snapshot and a later snapshot or the live volume: what an " +
            "incremental backup has to copy. 'data' ranges hold new data, 'zero' ranges were trimmed or zeroed and read as zeros. " +
            "Fast: the time depends on how much changed, not on the volume's size.")
        {
            from, to, json, api,
        };
        command.Validators.Add(result =>
        {
            // FROM's own parser reports a bad FROM (e.g. a volume where a snapshot is expected); reading its value
            // here would throw, so its text is parsed again instead.
            if (result.GetResult(from) is not { Tokens: [var fromToken] } || SnapshotName.TryParse(fromToken.Value, out _) is not { } f) return;
            if (result.GetResult(to) is not { Tokens: [var toToken] }) return;
            var t = toToken.Value;
            if (VolumeNames.TrySplitSnapshotName(t, out var volume, out _))
            {
                if (SnapshotName.TryParse(t, out var error) is null) result.AddError(error!);
                else if (volume != f.Volume) result.AddError($"both points must be of the same volume: '{f}' and '{t}'");
            }
            else if (t != f.Volume)
            {
                result.AddError($"TO must be '{f.Volume}' (the live volume) or '{f.Volume}@SNAPSHOT', not '{t}'");
            }
        });
        command.SetAction(async (parse, ct) =>
        {
            var f = parse.GetRequiredValue(from);
            string? toSnapshot = null;
            if (parse.GetValue(to) is { } t && VolumeNames.TrySplitSnapshotName(t, out _, out var snap)) toSnapshot = snap;
            using var client = PlatterCli.CreateClient(parse, api, context);
            DiffDto diff;
            try
            {
                diff = await client.DiffAsync(f.Volume, f.Snapshot, toSnapshot, ct);
            }
            catch (PlatterApiException e) when (e.Code == "not_found")
            {
                // Name whichever of the volume and the two snapshots is missing.
                throw new CliException(await MissingSnapshotMessage(client, f.Volume, toSnapshot is null ? [f.Snapshot] : [f.Snapshot, toSnapshot], ct));
            }
            if (parse.GetValue(json))
            {
                PlatterCli.WriteJson(context, diff, PlatterJsonContext.Default.DiffDto);
                return PlatterCli.ExitOk;
            }
            var toText = toSnapshot is null ? f.Volume : $"{f.Volume}@{toSnapshot}";
            if (diff.Extents.Count == 0)
            {
                context.Out.WriteLine($"no changes between '{f}' and '{toText}'");
                return PlatterCli.ExitOk;
            }
            var table = new Table("OFFSET", "LENGTH", "CONTENT").AlignRight(0, 1);
            foreach (var e in diff.Extents) table.Add(e.Offset.ToString(CultureInfo.InvariantCulture), e.Length.ToString(CultureInfo.InvariantCulture), e.Allocated ? "data" : "zero");
            context.Out.Write(table.ToString());
            context.Out.WriteLine($"{SizeText.Format(diff.ChangedBytes)} changed in {diff.Extents.Count} range{(diff.Extents.Count == 1 ? "" : "s")} " +
                                  $"between '{f}' and '{toText}'");
            return PlatterCli.ExitOk;
        });
        return command;
    }

    /// <summary>
    /// Runs a call about snapshot <paramref name="volume"/>@<paramref name="snapshot"/> and says, when it is not found,
    /// whether the volume or the snapshot is missing.
    /// </summary>
    private static async Task<T> Call<T>(PlatterApiClient client, Func<Task<T>> call, string volume, string snapshot, CancellationToken ct)
    {
        // Other refusals (already_exists, has_dependents naming the clones or newer snapshots) are the server's own
        // sentence, printed as one line by PlatterCli.
        try
        {
            return await call();
        }
        catch (PlatterApiException e) when (e.Code == "not_found")
        {
            throw new CliException(await MissingSnapshotMessage(client, volume, [snapshot], ct));
        }
    }

    /// <summary>Says whether the volume or which snapshot is missing (only called on the error path).</summary>
    private static async Task<string> MissingSnapshotMessage(PlatterApiClient client, string volume, string[] snapshots, CancellationToken ct)
    {
        IReadOnlyList<SnapshotDto> existing;
        try
        {
            existing = await client.ListSnapshotsAsync(volume, ct);
        }
        catch (PlatterApiException e) when (e.Code == "not_found")
        {
            return $"no volume named '{volume}' (see `platter volume list`)";
        }
        var missing = snapshots.FirstOrDefault(s => !existing.Any(x => x.Name == s)) ?? snapshots[0];
        return $"no snapshot '{volume}@{missing}' (see `platter snapshot list {volume}`)";
    }
}
