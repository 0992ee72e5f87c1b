using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Platter.Server;
using Platter.Server.Api;

namespace Platter.Cli;

/// <summary>
/// platter import and platter export: disk image files in and out of volumes. qemu-img (Debian's qemu-utils) does
/// the format work and the copy, over NBD to the running server; Platter sizes the volume, builds the NBD address,
/// shows progress and cleans up a failed import.
/// </summary>
internal static class ImageCommands
{
    private static readonly string[] ImportFormats = ["auto", "raw", "qcow2", "vmdk", "vdi", "vhdx"];
    private static readonly string[] ExportFormats = ["raw", "qcow2"];

    public static Command BuildImport(CliContext context)
    {
        var file = FileArgument("The disk image to import.");
        var volume = VolumeArgument("VOLUME", "The new volume; it is created with the image's virtual size.");
        var format = FormatOption(ImportFormats, "auto", "The image's format; auto lets qemu-img detect it (a raw image is detected as raw).");
        var json = PlatterCli.JsonOption();
        var api = PlatterCli.ApiSocketOption();
        var command = new Command("import",
            "Create VOLUME from a disk image file (raw, qcow2, vmdk, vdi, vhdx). The volume gets the image's virtual size and its data; " +
            "holes and runs of zeros stay unallocated, so the volume takes only the space of the data. qemu-img (package qemu-utils) " +
            "reads the format and copies over NBD to the running server (qemu-img convert -n --target-is-zero), and the import ends " +
            "with a flush: when it returns, the volume is on disk. A failed import deletes the volume it created. Progress with rate and ETA on a terminal; --json prints a summary instead.")
        {
            file, volume, format, json, api,
        };
        command.SetAction(async (parse, ct) =>
        {
            var path = Path.GetFullPath(parse.GetRequiredValue(file));
            var name = parse.GetRequiredValue(volume);
            var fmt = parse.GetValue(format)!;
            if (!File.Exists(path)) throw new CliException($"no such file: {path}");
            // The server first: a stopped server (or one without a plain NBD listener) is reported before the image is
            // read, which for a large compressed image takes a while.
            using var client = PlatterCli.CreateClient(parse, api, context);
            var uri = await NbdUriAsync(client, name, ct);
            var qemuImg = QemuImg();
            var info = await ImageInfoAsync(qemuImg, path, fmt == "auto" ? null : fmt, ct);
            if (info.VirtualSize <= 0 || info.VirtualSize % 512 != 0)
                throw new CliException($"{path}: virtual size {info.VirtualSize} is not a positive multiple of 512 bytes");

            await VolumeCommands.Call(() => client.CreateVolumeAsync(name, info.VirtualSize, ct), name);
            var clock = Stopwatch.StartNew();
            try
            {
                // qemu-img's NBD driver flushes the target when it closes it, even in convert's default cache mode
                // (unsafe: it skips flushes to disk, and NBD's flush counts as one to the OS), so a finished import is
                // on disk (MovingTests checks the flush).
                await RunQemuImgAsync(context, qemuImg, $"import {name}", info.VirtualSize, parse.GetValue(json),
                    ["convert", "-p", "-n", "--target-is-zero", "-W", "-f", info.Format, "-O", "raw", path, uri], ct);
            }
            catch
            {
                // The volume exists only for this import: a half-copied disk must not look like a good one.
                try { await client.DeleteVolumeAsync(name, CancellationToken.None); }
                catch (Exception e) when (e is PlatterApiException or ServerUnreachableException) { }
                throw;
            }
            var after = await client.GetVolumeAsync(name, usage: true, ct);
            long allocated = after.AllocatedBytes ?? 0; // counted: usage asked for
            var summary = new ImageTransferSummary("import", path, info.Format, name, info.VirtualSize, allocated, clock.Elapsed.TotalSeconds);
            Print(context, parse.GetValue(json), summary,
                $"imported {path} ({info.Format}) into '{name}': {SizeText.Format(info.VirtualSize)}, {SizeText.Format(allocated)} allocated, " +
                $"{clock.Elapsed.TotalSeconds.ToString("0.0", CultureInfo.InvariantCulture)} s");
            return PlatterCli.ExitOk;
        });
        return command;
    }

    public static Command BuildExport(CliContext context)
    {
        var source = new Argument<string>("VOLUME[@SNAPSHOT]")
        {
            Description = "The volume or snapshot to export. A snapshot gives a consistent image while the volume is in use.",
        };
        var file = FileArgument("The image file to write (must not exist).");
        var format = FormatOption(ExportFormats, "raw", "The image's format. raw is written sparse (holes where the volume reads zeros).");
        var json = PlatterCli.JsonOption();
        var api = PlatterCli.ApiSocketOption();
        var command = new Command("export",
            "Write a volume or a snapshot to a disk image file (raw or qcow2). qemu-img (package qemu-utils) reads the export over NBD and " +
            "writes the file; unallocated and zero ranges become holes (raw) or unallocated clusters (qcow2). Export a snapshot " +
            "(VOLUME@SNAPSHOT) of a volume in use: the live volume may change while it is being read. Progress with rate and ETA on a " +
            "terminal; --json prints a summary instead.")
        {
            source, file, format, json, api,
        };
        command.SetAction(async (parse, ct) =>
        {
            var name = parse.GetRequiredValue(source);
            var path = Path.GetFullPath(parse.GetRequiredValue(file));
            var fmt = parse.GetValue(format)!;
            if (File.Exists(path)) throw new CliException($"{path} exists: export writes a new file (delete it first)");
            using var client = PlatterCli.CreateClient(parse, api, context);
            long size;
            if (name.Contains('@'))
            {
                if (SnapshotName.TryParse(name, out var error) is not { } s) throw new CliException(error!, PlatterCli.ExitUsage);
                try
                {
                    size = (await client.GetSnapshotAsync(s.Volume, s.Snapshot, ct)).SizeBytes;
                }
                catch (PlatterApiException e) when (e.Code == "not_found")
                {
                    throw new CliException($"no snapshot '{s}' (see `platter snapshot list {s.Volume}`)");
                }
            }
            else
            {
                // An existing volume: the older naming rules, so a volume named before they tightened can be exported.
                if (VolumeNames.ValidateExisting(name) is { } reason) throw new CliException($"invalid volume name '{name}': {reason}", PlatterCli.ExitUsage);
                size = (await VolumeCommands.Call(() => client.GetVolumeAsync(name, ct), name)).SizeBytes;
            }
            var qemuImg = QemuImg();
            var uri = await NbdUriAsync(client, name, ct);
            var clock = Stopwatch.StartNew();
            try
            {
                await RunQemuImgAsync(context, qemuImg, $"export {name}", size, parse.GetValue(json),
                    ["convert", "-p", "-f", "raw", "-O", fmt, uri, path], ct);
            }
            catch
            {
                File.Delete(path);
                throw;
            }
            long allocated = AllocatedBytes(path);
            var summary = new ImageTransferSummary("export", path, fmt, name, size, allocated, clock.Elapsed.TotalSeconds);
            Print(context, parse.GetValue(json), summary,
                $"exported '{name}' to {path} ({fmt}): {SizeText.Format(size)}, {SizeText.Format(allocated)} on disk, " +
                $"{clock.Elapsed.TotalSeconds.ToString("0.0", CultureInfo.InvariantCulture)} s");
            return PlatterCli.ExitOk;
        });
        return command;
    }

    // An empty path would reach Path.GetFullPath and come out as an internal error; it is a usage error.
    private static Argument<string> FileArgument(string description) => new("FILE")
    {
        Description = description,
        Validators =
        {
            result =>
            {
                if (result.Tokens.Count > 0 && string.IsNullOrWhiteSpace(result.Tokens[0].Value)) result.AddError("FILE cannot be empty");
            },
        },
    };

    private static Argument<string> VolumeArgument(string name, string description) => new(name)
    {
        Description = description,
        Validators =
        {
            result =>
            {
                if (result.Tokens.Count > 0 && VolumeNames.Validate(result.Tokens[0].Value) is { } reason)
                    result.AddError($"invalid volume name '{result.Tokens[0].Value}': {reason}");
            },
        },
    };

    private static Option<string> FormatOption(string[] formats, string defaultValue, string description)
    {
        var option = new Option<string>("--format", "-f")
        {
            Description = description,
            HelpName = string.Join('|', formats),
            DefaultValueFactory = _ => defaultValue,
        };
        option.AcceptOnlyFromAmong(formats);
        return option;
    }

    private static string QemuImg()
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin").Split(':'))
        {
            var candidate = Path.Combine(dir, "qemu-img");
            if (File.Exists(candidate)) return candidate;
        }
        throw new CliException("qemu-img not found: install it (Debian: apt-get install qemu-utils)");
    }

    private static async Task<string> NbdUriAsync(PlatterApiClient client, string name, CancellationToken ct)
    {
        var health = await client.GetHealthAsync(ct);
        if (health.TlsRequired)
            throw new CliException("the server requires TLS on NBD; import and export connect without it (serve a plain unix socket too)");
        if (health.NbdSocket is not null) return AttachText.Build(name, new NbdTarget.Unix(health.NbdSocket), new AttachOptions()).Uri;
        // The server reports its TCP address as HOST:PORT ([V6]:PORT for IPv6), which is already a URI authority.
        if (health.NbdTcp is not null) return $"nbd://{health.NbdTcp}/{Uri.EscapeDataString(name)}";
        throw new CliException("the server has no NBD listener (it runs with --listen none --socket none)");
    }

    private sealed record ImageInfo(string Format, long VirtualSize);

    private static async Task<ImageInfo> ImageInfoAsync(string qemuImg, string path, string? format, CancellationToken ct)
    {
        List<string> args = ["info", "--output=json"];
        if (format is not null) args.AddRange(["-f", format]);
        args.Add(path);
        var (exit, stdout, stderr) = await RunAsync(qemuImg, args, ct);
        if (exit != 0) throw new CliException($"qemu-img info: {PlatterCli.OneLine(stderr)}");
        using var doc = JsonDocument.Parse(stdout);
        return new ImageInfo(doc.RootElement.GetProperty("format").GetString()!, doc.RootElement.GetProperty("virtual-size").GetInt64());
    }

    private static async Task<(int Exit, string Stdout, string Stderr)> RunAsync(string file, IEnumerable<string> args, CancellationToken ct)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var process = Process.Start(psi)!;
        var stdout = process.StandardOutput.ReadToEndAsync(ct);
        var stderr = process.StandardError.ReadToEndAsync(ct);
        await process.WaitForExitAsync(ct);
        return (process.ExitCode, await stdout, await stderr);
    }

    /// <summary>
    /// Runs qemu-img with -p and turns its "(NN.NN/100%)" lines into the progress meter (with rate and ETA, which
    /// qemu-img does not show); its stderr becomes the one-line error when it fails.
    /// </summary>
    private static async Task RunQemuImgAsync(CliContext context, string qemuImg, string label, long totalBytes, bool json, IReadOnlyList<string> args, CancellationToken ct)
    {
        var meter = ProgressMeter.OnStdout(context, label, enabled: !json);
        meter.TotalBytes = totalBytes;
        var psi = new ProcessStartInfo(qemuImg) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var process = Process.Start(psi)!;
        var stderr = process.StandardError.ReadToEndAsync(ct);
        var buffer = new char[256];
        var token = new StringBuilder();
        try
        {
            int n;
            while ((n = await process.StandardOutput.ReadAsync(buffer, ct)) > 0)
            {
                for (int i = 0; i < n; i++)
                {
                    char c = buffer[i];
                    if (c == '(') token.Clear();
                    else if (c == '/' && double.TryParse(token.ToString(), NumberStyles.Float, CultureInfo.InvariantCulture, out var percent))
                        meter.Report((long)(percent / 100 * totalBytes));
                    else token.Append(c);
                }
            }
            await process.WaitForExitAsync(ct);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            meter.Clear();
            throw;
        }
        if (process.ExitCode != 0)
        {
            meter.Clear();
            throw new CliException($"qemu-img convert failed: {PlatterCli.OneLine(await stderr)}");
        }
        meter.Finish(totalBytes);
    }

    /// <summary>Bytes the file takes on disk (st_blocks x 512, via stat(1): .NET does not expose st_blocks); -1 if unknown.</summary>
    private static long AllocatedBytes(string path)
    {
        var psi = new ProcessStartInfo("stat") { RedirectStandardOutput = true, UseShellExecute = false };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add("%b %B");
        psi.ArgumentList.Add(path);
        using var process = Process.Start(psi)!;
        var parts = process.StandardOutput.ReadToEnd().Trim().Split(' ');
        process.WaitForExit();
        return parts.Length == 2 && long.TryParse(parts[0], out var blocks) && long.TryParse(parts[1], out var unit) ? blocks * unit : -1;
    }

    private static void Print(CliContext context, bool json, ImageTransferSummary summary, string text)
    {
        if (json) PlatterCli.WriteJson(context, summary, CliJsonContext.Default.ImageTransferSummary);
        else context.Out.WriteLine(text);
    }
}

/// <summary>What an import or export did (the --json summary).</summary>
/// <param name="Operation">import or export.</param>
/// <param name="File">The image file.</param>
/// <param name="Format">Its format.</param>
/// <param name="Volume">The volume or VOLUME@SNAPSHOT.</param>
/// <param name="SizeBytes">Virtual size.</param>
/// <param name="AllocatedBytes">Space the data takes afterwards: the volume's allocated bytes (import) or the file's blocks on disk (export).</param>
/// <param name="Seconds">Time the copy took.</param>
public sealed record ImageTransferSummary(string Operation, string File, string Format, string Volume, long SizeBytes, long AllocatedBytes, double Seconds);
