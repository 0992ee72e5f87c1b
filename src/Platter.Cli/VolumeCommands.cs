using System.CommandLine;
using Platter.Server;
using Platter.Server.Api;
using Platter.Storage;

namespace Platter.Cli;

/// <summary>platter volume create|list|info|resize|rename|delete and platter du: clients of the management API.</summary>
internal static class VolumeCommands
{
    public static Command Build(CliContext context)
    {
        var volume = new Command("volume", "Create, list, inspect, resize, rename, flatten and delete volumes (virtual disks). Needs a running `platter serve`.");
        volume.Add(Create(context));
        volume.Add(List(context));
        volume.Add(Info(context));
        volume.Add(Resize(context));
        volume.Add(Rename(context));
        volume.Add(Delete(context));
        volume.Add(Flatten(context));
        volume.Add(Status(context));
        volume.Add(TakeOver(context));
        volume.Add(Set(context));
        volume.Add(Release(context));
        return volume;
    }

    /// <summary>
    /// A volume name argument. A new name (create, rename to) must pass today's rules; a name that refers to an existing
    /// volume only the older, looser ones, so a volume an older version created as '..' or '-x' can still be renamed
    /// and deleted (a name starting with '-' goes after '--': platter volume rename -- -x fixed).
    /// </summary>
    private static Argument<string> NameArgument(string description = "The volume's name (also its NBD export name).", string argumentName = "NAME",
        bool forNew = false) =>
        new(argumentName)
        {
            Description = description,
            Validators =
            {
                result =>
                {
                    if (result.Tokens.Count == 0) return;
                    var name = result.Tokens[0].Value;
                    var reason = forNew ? VolumeNames.Validate(name) : VolumeNames.ValidateExisting(name);
                    if (reason is not null) result.AddError($"invalid volume name '{name}': {reason}");
                },
            },
        };

    private static Command Create(CliContext context)
    {
        var name = NameArgument("Name of the new volume; it becomes the NBD export name. Letters, digits and most punctuation; " +
                                "not '/', '@', '.' or '..', no leading '-', control or bidirectional-formatting characters.", forNew: true);
        var size = PlatterCli.SizeOption("Virtual size of the volume. Space is allocated only when written (thin provisioning).");
        var json = PlatterCli.JsonOption();
        var api = PlatterCli.ApiSocketOption();
        var cache = CacheOption(required: false);
        var command = new Command("create", "Create a thin-provisioned volume.") { name, size, cache, json, api };
        command.SetAction(async (parse, ct) =>
        {
            using var client = PlatterCli.CreateClient(parse, api, context);
            var created = await Call(() => client.CreateVolumeAsync(parse.GetRequiredValue(name), parse.GetValue(size), parse.GetValue(cache), ct), parse.GetRequiredValue(name));
            if (parse.GetValue(json)) PlatterCli.WriteJson(context, created, PlatterJsonContext.Default.VolumeDto);
            else context.Out.WriteLine($"created volume '{created.Name}' ({SizeText.Format(created.SizeBytes)})");
            return PlatterCli.ExitOk;
        });
        return command;
    }

    private static Option<string?> CacheOption(bool required) => new("--cache")
    {
        Description = "Node cache mode (cluster stores; the server needs --cache-dir): none (the default), writethrough (reads cached on the " +
                      "server's local disk, writes acknowledged by the cluster), writeback (writes acknowledged from an ordered, checksummed " +
                      "log on the local disk and written back in order; see `platter volume release`). The embedded store has only none.",
        HelpName = "MODE",
        Required = required,
        Validators =
        {
            result =>
            {
                if (result.Tokens.Count > 0 && !Platter.Cache.CacheModes.TryParse(result.Tokens[0].Value, out _))
                    result.AddError($"--cache is none, writethrough or writeback, not '{result.Tokens[0].Value}'");
            },
        },
    };

    private static Command Set(CliContext context)
    {
        var name = NameArgument();
        var cache = CacheOption(required: true);
        var json = PlatterCli.JsonOption();
        var api = PlatterCli.ApiSocketOption();
        var command = new Command("set",
            "Change a volume's settings. --cache applies from the volume's next open: when no client is connected the server closes it now " +
            "(a write-back log is written back first); otherwise once its clients disconnect and it is released or the server restarts.")
        {
            name, cache, json, api,
        };
        command.SetAction(async (parse, ct) =>
        {
            using var client = PlatterCli.CreateClient(parse, api, context);
            var v = await Call(() => client.SetVolumeCacheAsync(parse.GetRequiredValue(name), parse.GetRequiredValue(cache)!, ct), parse.GetRequiredValue(name));
            if (parse.GetValue(json)) PlatterCli.WriteJson(context, v, PlatterJsonContext.Default.VolumeDto);
            else context.Out.WriteLine($"volume '{v.Name}': cache mode {v.Cache?.Mode ?? "none"}");
            return PlatterCli.ExitOk;
        });
        return command;
    }

    private static Command Release(CliContext context)
    {
        var name = NameArgument();
        var json = PlatterCli.JsonOption();
        var api = PlatterCli.ApiSocketOption();
        var command = new Command("release",
            "Let another server have a volume (migration): writes its write-back cache back to the cluster completely, clears its dirty " +
            "marker, closes it here and frees its lock. Refused while NBD clients are connected to it. Waits as long as write-back takes.")
        {
            name, json, api,
        };
        command.SetAction(async (parse, ct) =>
        {
            using var client = PlatterCli.CreateClient(parse, api, context);
            var result = await Call(() => client.ReleaseVolumeAsync(parse.GetRequiredValue(name), ct), parse.GetRequiredValue(name));
            if (parse.GetValue(json)) PlatterCli.WriteJson(context, result, PlatterJsonContext.Default.ReleaseDto);
            else context.Out.WriteLine($"released volume '{result.Name}' ({SizeText.Format(result.WrittenBackBytes)} written back first); another server may serve it now");
            return PlatterCli.ExitOk;
        });
        return command;
    }

    private static Command List(CliContext context)
    {
        var json = PlatterCli.JsonOption();
        var api = PlatterCli.ApiSocketOption();
        var command = new Command("list", "List volumes with their size and allocated space.") { json, api };
        command.Aliases.Add("ls");
        command.SetAction(async (parse, ct) =>
        {
            using var client = PlatterCli.CreateClient(parse, api, context);
            var volumes = await client.ListVolumesAsync(ct);
            if (parse.GetValue(json))
            {
                PlatterCli.WriteJson(context, new VolumeListDto(volumes), PlatterJsonContext.Default.VolumeListDto);
                return PlatterCli.ExitOk;
            }
            if (volumes.Count == 0)
            {
                context.Out.WriteLine("no volumes (create one with `platter volume create NAME --size 20G`)");
                return PlatterCli.ExitOk;
            }
            var table = new Table("NAME", "SIZE", "ALLOCATED", "CREATED").AlignRight(1, 2);
            foreach (var v in volumes.OrderBy(v => v.Name, StringComparer.Ordinal))
                table.Add(v.Name, SizeText.Format(v.SizeBytes), Allocated(v.AllocatedBytes), PlatterCli.FormatTime(v.CreatedUtc));
            context.Out.Write(table.ToString());
            if (volumes.Any(v => v.AllocatedBytes is null))
                context.Out.WriteLine($"{SnapshotCommands.NotComputed}: not counted when listing on this store (an RBD store walks each image's object map for it); `platter volume info NAME --usage` and `platter du` count it");
            return PlatterCli.ExitOk;
        });
        return command;
    }

    // Allocated bytes as the list shows them: n/a where the store did not count them (never 0 for "unknown").
    private static string Allocated(long? bytes) => bytes is { } b ? SizeText.Format(b) : SnapshotCommands.NotComputed;

    private static Command Info(CliContext context)
    {
        var name = NameArgument();
        var json = PlatterCli.JsonOption();
        var api = PlatterCli.ApiSocketOption();
        var usage = new Option<bool>("--usage")
        {
            Description = "Count the allocated space also on a store where that walks the image (RBD: as `rbd du`, one step per 4 MiB object); without it an RBD volume shows n/a",
        };
        var command = new Command("info",
            "Show one volume: size, allocated space, its origin (for a clone, the VOLUME@SNAPSHOT it was cloned from) and how many snapshots it has.")
        {
            name, usage, json, api,
        };
        command.SetAction(async (parse, ct) =>
        {
            using var client = PlatterCli.CreateClient(parse, api, context);
            var v = await Call(() => client.GetVolumeAsync(parse.GetRequiredValue(name), parse.GetValue(usage), ct), parse.GetRequiredValue(name));
            if (parse.GetValue(json))
            {
                PlatterCli.WriteJson(context, v, PlatterJsonContext.Default.VolumeDto);
                return PlatterCli.ExitOk;
            }
            context.Out.WriteLine($"name:       {v.Name}");
            context.Out.WriteLine($"size:       {SizeText.Format(v.SizeBytes)} ({v.SizeBytes} bytes)");
            context.Out.WriteLine(v.AllocatedBytes is { } allocated
                ? $"allocated:  {SizeText.Format(allocated)} ({allocated} bytes)"
                : $"allocated:  {SnapshotCommands.NotComputed} (not counted on this store unless asked: --usage)");
            context.Out.WriteLine($"created:    {PlatterCli.FormatTime(v.CreatedUtc)}");
            context.Out.WriteLine($"origin:     {v.Origin ?? "-"}");
            context.Out.WriteLine($"snapshots:  {v.SnapshotCount}");
            context.Out.WriteLine($"id:         {v.Id}");
            if (v.Backend is not null) context.Out.WriteLine($"backend:    {v.Backend} ({v.Store})");
            if (v.Cache is { } c)
            {
                context.Out.WriteLine($"cache:      {c.Mode}{(c.Active is null ? " (not open on this server)" : $" (served here as {c.Active})")}");
                if (c.Active is "writeback" or "writethrough")
                    context.Out.WriteLine($"read cache: {c.Hits} hits, {c.Misses} misses ({c.HitRatio:P0} hit ratio)");
                if (c.Active == "writeback")
                {
                    context.Out.WriteLine($"dirty:      {SizeText.Format(c.DirtyBytes)} ({c.DirtyBytes} bytes) not yet in the cluster; log {SizeText.Format(c.LogUsedBytes)} used of {SizeText.Format(c.LogCapacityBytes)}");
                    context.Out.WriteLine($"lag:        {c.LagRecords} record(s) not yet written back");
                }
                if (c.Failure is not null) context.Out.WriteLine($"failure:    {c.Failure}");
                if (c.DirtyMarker is not null) context.Out.WriteLine($"dirty on:   {c.DirtyMarker}");
            }
            return PlatterCli.ExitOk;
        });
        return command;
    }

    private static Command TakeOver(CliContext context)
    {
        var name = NameArgument();
        var acceptLoss = new Option<bool>("--accept-cache-loss")
        {
            Description = "Take the volume over even though the holder's write-back cache may hold writes the image lacks (that server " +
                          "or its disk is lost): the image is then an ordered prefix of the writes it acknowledged, consistent but older. " +
                          "On the server whose own cache log is damaged, writes back its intact records and discards the rest.",
        };
        var json = PlatterCli.JsonOption();
        var api = PlatterCli.ApiSocketOption();
        var command = new Command("takeover",
            "Take a volume over from another server that holds it (RBD store): breaks its exclusive lock and blocklists that " +
            "server's connection, so if it was only hung, its writes fail from then on and never reach the volume. Use it when " +
            "the holder is dead or unreachable; then serve the volume from this server. Refused while the holder's write-back cache may " +
            "hold writes the image lacks, unless --accept-cache-loss.")
        {
            name, acceptLoss, json, api,
        };
        command.SetAction(async (parse, ct) =>
        {
            using var client = PlatterCli.CreateClient(parse, api, context);
            var result = await Call(() => client.TakeOverVolumeAsync(parse.GetRequiredValue(name), parse.GetValue(acceptLoss), ct), parse.GetRequiredValue(name));
            if (parse.GetValue(json)) PlatterCli.WriteJson(context, result, PlatterJsonContext.Default.TakeoverDto);
            else if (result.PreviousHolder is null) context.Out.WriteLine($"volume '{result.Name}' was not held by any server: nothing to take over");
            else context.Out.WriteLine($"took volume '{result.Name}' over: fenced the previous holder ({result.PreviousHolder})");
            return PlatterCli.ExitOk;
        });
        return command;
    }

    private static Command Resize(CliContext context)
    {
        var name = NameArgument();
        var size = PlatterCli.SizeOption("The new virtual size. Shrinking discards the data past the new end and needs --allow-shrink.");
        var allowShrink = new Option<bool>("--allow-shrink")
        {
            Description = "Allow a size smaller than the current one. The data past the new end is discarded for good (take a " +
                          "snapshot first to keep it); without this flag a shrink is refused.",
        };
        var json = PlatterCli.JsonOption();
        var api = PlatterCli.ApiSocketOption();
        var command = new Command("resize",
            "Grow a volume, or shrink it with --allow-shrink. Clients see the new size when they reconnect.") { name, size, allowShrink, json, api };
        command.SetAction(async (parse, ct) =>
        {
            using var client = PlatterCli.CreateClient(parse, api, context);
            var v = await Call(() => client.ResizeVolumeAsync(parse.GetRequiredValue(name), parse.GetValue(size), parse.GetValue(allowShrink), ct),
                parse.GetRequiredValue(name));
            if (parse.GetValue(json)) PlatterCli.WriteJson(context, v, PlatterJsonContext.Default.VolumeDto);
            else context.Out.WriteLine($"resized volume '{v.Name}' to {SizeText.Format(v.SizeBytes)}");
            return PlatterCli.ExitOk;
        });
        return command;
    }

    private static Command Rename(CliContext context)
    {
        var name = NameArgument("The volume's current name.");
        var newName = NameArgument("The new name (and NBD export name).", "NEW_NAME", forNew: true);
        var json = PlatterCli.JsonOption();
        var api = PlatterCli.ApiSocketOption();
        var command = new Command("rename", "Rename a volume. Connected clients keep working; new clients use the new name.") { name, newName, json, api };
        command.SetAction(async (parse, ct) =>
        {
            using var client = PlatterCli.CreateClient(parse, api, context);
            var from = parse.GetRequiredValue(name);
            var v = await Call(() => client.RenameVolumeAsync(from, parse.GetRequiredValue(newName), ct), from);
            if (parse.GetValue(json)) PlatterCli.WriteJson(context, v, PlatterJsonContext.Default.VolumeDto);
            else context.Out.WriteLine($"renamed volume '{from}' to '{v.Name}'");
            return PlatterCli.ExitOk;
        });
        return command;
    }

    private static Command Flatten(CliContext context)
    {
        var name = NameArgument("The clone to make independent.");
        var json = PlatterCli.JsonOption();
        var api = PlatterCli.ApiSocketOption();
        var command = new Command("flatten",
            "Make a clone independent of the snapshot it was cloned from, so that snapshot and its volume can be deleted " +
            "(`platter volume delete VOL --recursive`). The clone's content does not change and its clients keep working. " +
            "Cost: it copies the data the clone still shares with its origin (everything it has not overwritten), so it " +
            "takes time and space in proportion to that data, like `rbd flatten`; nothing else is rewritten. Embedded " +
            "store: a clone that has snapshots of its own is refused (delete them first); a full disk stops the copy with " +
            "an error and leaves the clone as it was, and flattening again continues where it stopped. RBD store: runs " +
            "`rbd_flatten` (the clone's snapshots are detached too).")
        {
            name, json, api,
        };
        command.SetAction(async (parse, ct) =>
        {
            using var client = PlatterCli.CreateClient(parse, api, context);
            // The copy may take longer than the API client's default timeout.
            client.DisableTimeout();
            var volumeName = parse.GetRequiredValue(name);
            var result = await Call(() => client.FlattenVolumeAsync(volumeName, ct), volumeName);
            if (parse.GetValue(json)) PlatterCli.WriteJson(context, result, PlatterJsonContext.Default.FlattenDto);
            else
                context.Out.WriteLine($"flattened volume '{result.Name}': it no longer depends on '{result.Origin}'" +
                    (result.CopiedBytes is { } copied ? $" (copied {SizeText.Format(copied)} in {result.Seconds:0.0} s)" : $" ({result.Seconds:0.0} s)"));
            return PlatterCli.ExitOk;
        });
        return command;
    }

    private static Command Delete(CliContext context)
    {
        var name = NameArgument();
        var recursive = new Option<bool>("--recursive", "-r")
        {
            Description = "Also delete the volume's snapshots. Without it a volume that has snapshots is not deleted. " +
                          "Snapshots that volumes were cloned from are never deleted this way: delete those clones first, or make them " +
                          "independent with `platter volume flatten CLONE`.",
        };
        var force = SnapshotCommands.ForceOption("Delete it even while NBD clients use it or its snapshots (they then get I/O errors). " +
                                                 "Without it, connected clients refuse the delete (`platter volume status NAME` lists them).");
        var json = PlatterCli.JsonOption();
        var api = PlatterCli.ApiSocketOption();
        var command = new Command("delete",
            "Delete a volume and free its space. A volume with snapshots needs --recursive; one with connected NBD clients needs --force. " +
            "This cannot be undone.")
        {
            name, recursive, force, json, api,
        };
        command.Aliases.Add("rm");
        command.SetAction(async (parse, ct) =>
        {
            using var client = PlatterCli.CreateClient(parse, api, context);
            var volumeName = parse.GetRequiredValue(name);
            bool withSnapshots = parse.GetValue(recursive);
            // A refusal (snapshots, or clones of them) is the engine's sentence: it names them and says what to do.
            bool forced = parse.GetValue(force);
            await Call(async () => { await client.DeleteVolumeAsync(volumeName, withSnapshots, forced, ct); return 0; }, volumeName);
            if (parse.GetValue(json)) context.Out.WriteLine("{\"deleted\":\"" + System.Text.Json.JsonEncodedText.Encode(volumeName) + "\"}");
            else context.Out.WriteLine($"deleted volume '{volumeName}'{(withSnapshots ? " and its snapshots" : "")}");
            return PlatterCli.ExitOk;
        });
        return command;
    }

    private static Command Status(CliContext context)
    {
        var name = NameArgument();
        var json = PlatterCli.JsonOption();
        var api = PlatterCli.ApiSocketOption();
        var command = new Command("status",
            "List the clients using a volume and its snapshots (like `rbd status`), NBD connections and VMs over vhost-user alike: who " +
            "(ADDR:PORT, or the process on a unix socket), which export, since when, and whether they can write. Delete and rollback are " +
            "refused while there are any.")
        {
            name, json, api,
        };
        command.SetAction(async (parse, ct) =>
        {
            using var client = PlatterCli.CreateClient(parse, api, context);
            var status = await Call(() => client.GetVolumeStatusAsync(parse.GetRequiredValue(name), ct), parse.GetRequiredValue(name));
            if (parse.GetValue(json))
            {
                PlatterCli.WriteJson(context, status, PlatterJsonContext.Default.VolumeStatusDto);
                return PlatterCli.ExitOk;
            }
            if (status.Clients.Count == 0)
            {
                context.Out.WriteLine($"volume '{status.Name}' has no connected clients");
                return PlatterCli.ExitOk;
            }
            var table = new Table("CLIENT", "EXPORT", "SINCE", "MODE", "TLS");
            foreach (var c in status.Clients)
                table.Add(c.Peer, c.Export, PlatterCli.FormatTime(c.ConnectedUtc), c.ReadOnly ? "read-only" : "read-write", c.Tls ? "yes" : "no");
            context.Out.Write(table.ToString());
            return PlatterCli.ExitOk;
        });
        return command;
    }

    /// <summary>platter du: space used by the store, and by each volume and snapshot.</summary>
    public static Command BuildUsage(CliContext context)
    {
        var json = PlatterCli.JsonOption();
        var api = PlatterCli.ApiSocketOption();
        var command = new Command("du",
            "Show the store's space (provisioned = sum of volume sizes, used by data, free in the data files) and, per volume and " +
            "snapshot: ALLOCATED = data it maps, UNIQUE = data only it maps (what deleting it alone would free), " +
            "SHARED = data it shares with other volumes and snapshots (a snapshot and its volume share what has not changed since).")
        {
            json, api,
        };
        command.SetAction(async (parse, ct) =>
        {
            using var client = PlatterCli.CreateClient(parse, api, context);
            var u = await client.GetUsageAsync(ct);
            // Volumes, each followed by its snapshots in the server's order (oldest first).
            var entries = (await client.GetSpaceUsageAsync(ct))
                .OrderBy(e => VolumeOf(e.Name), StringComparer.Ordinal).ThenBy(e => e.IsSnapshot).ToArray();
            if (parse.GetValue(json))
            {
                var report = new DiskUsageReport(u.DataFileBytes, u.UsedBytes, u.FreeBytes, u.VolumeCount, u.ProvisionedBytes, entries,
                    u.FileSystemBytes, u.FileSystemAvailableBytes, u.MetadataReserveBytes, u.CapacityBytes, u.Overcommit, u.Warnings ?? []);
                PlatterCli.WriteJson(context, report, CliJsonContext.Default.DiskUsageReport);
                return PlatterCli.ExitOk;
            }
            context.Out.WriteLine($"volumes:      {u.VolumeCount}");
            context.Out.WriteLine($"provisioned:  {SizeText.Format(u.ProvisionedBytes)}");
            context.Out.WriteLine($"used:         {SizeText.Format(u.UsedBytes)}");
            if (u.FileSystemBytes > 0)
            {
                context.Out.WriteLine($"capacity:     {SizeText.Format(u.CapacityBytes)} (used + what the file system can still give to data; overcommit {u.Overcommit:0.00}x)");
                context.Out.WriteLine($"file system:  {SizeText.Format(u.FileSystemAvailableBytes)} free of {SizeText.Format(u.FileSystemBytes)} ({SizeText.Format(u.MetadataReserveBytes)} kept for metadata)");
            }
            context.Out.WriteLine($"data files:   {SizeText.Format(u.DataFileBytes)} (sparse)");
            context.Out.WriteLine($"free:         {SizeText.Format(u.FreeBytes)} (blocks inside the data files)");
            foreach (var warning in u.Warnings ?? []) context.Out.WriteLine($"warning: {warning}");
            if (entries.Length > 0)
            {
                var table = new Table("NAME", "ALLOCATED", "UNIQUE", "SHARED").AlignRight(1, 2, 3);
                foreach (var e in entries)
                    table.Add(e.Name, SizeText.Format(e.AllocatedBytes), SizeText.Format(e.UniqueBytes), SizeText.Format(e.SharedBytes));
                context.Out.WriteLine();
                context.Out.Write(table.ToString());
            }
            return PlatterCli.ExitOk;
        });
        return command;
    }

    private static string VolumeOf(string name)
    {
        int at = name.IndexOf('@');
        return at < 0 ? name : name[..at];
    }

    /// <summary>Runs an API call and words "not found" as the user thinks of it.</summary>
    internal static async Task<T> Call<T>(Func<Task<T>> call, string volumeName)
    {
        try
        {
            return await call();
        }
        catch (PlatterApiException e) when (e.Code == "not_found")
        {
            throw new CliException($"no volume named '{volumeName}' (see `platter volume list`)");
        }
        catch (PlatterApiException e) when (e.Code is "already_exists" or "shrink_refused" or "clients_connected")
        {
            throw new CliException(PlatterCli.OneLine(e.Message));
        }
    }
}
