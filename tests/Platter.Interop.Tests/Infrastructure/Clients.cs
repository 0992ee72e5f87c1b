using System.Text.Json;
using Xunit.Sdk;

namespace Platter.Interop.Tests.Infrastructure;

/// <summary>One run of allocation state from <c>nbdinfo --map</c> (type bit 0 = hole, bit 1 = zero).</summary>
public readonly record struct MapEntry(long Offset, long Length, int Type)
{
    public bool IsHole => (Type & 1) != 0;
    public bool IsZero => (Type & 2) != 0;
    public long End => Offset + Length;
}

/// <summary>Thin wrappers over the real tools; each returns parsed output or fails with the tool's own words.</summary>
public static class Clients
{
    public static async Task<JsonElement> NbdInfoJsonAsync(string uri)
    {
        // --no-content: nbdinfo would otherwise pipe the disk through file(1), which proves nothing here.
        var result = (await ProcessRunner.RunAsync(Tools.NbdInfo, ["--json", "--no-content", uri])).EnsureSuccess("nbdinfo --json failed");
        return ParseJson(result, result.Stdout);
    }

    public static async Task<JsonElement> NbdInfoListJsonAsync(string socketPath)
    {
        var result = (await ProcessRunner.RunAsync(Tools.NbdInfo, ["--list", "--json", NbdExport.NbdUri("", socketPath)])).EnsureSuccess("nbdinfo --list --json failed");
        return ParseJson(result, result.Stdout);
    }

    /// <summary>
    /// <c>nbdinfo --map</c> of <paramref name="metaContext"/> (default base:allocation); Type is the context's raw
    /// status value (a dirty flag for qemu:dirty-bitmap:*, the depth for qemu:allocation-depth).
    /// </summary>
    public static async Task<List<MapEntry>> NbdInfoMapAsync(string uri, string? metaContext = null)
    {
        string option = metaContext is null ? "--map" : "--map=" + metaContext;
        var result = (await ProcessRunner.RunAsync(Tools.NbdInfo, [option, "--json", uri])).EnsureSuccess($"nbdinfo {option} failed");
        var map = new List<MapEntry>();
        foreach (var e in ParseJson(result, result.Stdout).EnumerateArray())
            map.Add(new MapEntry(e.GetProperty("offset").GetInt64(), e.GetProperty("length").GetInt64(), e.GetProperty("type").GetInt32()));
        return map;
    }

    /// <summary>
    /// <c>nbdinfo</c> on <paramref name="uri"/>, which must be refused because the server has no export named
    /// <paramref name="name"/>: the server answers NBD_OPT_GO with NBD_REP_ERR_UNKNOWN, which libnbd reports as ENOENT
    /// for that export. Any other failure (a crash, a timeout, a refused connection) fails the test.
    /// </summary>
    public static async Task AssertNoSuchExportAsync(string uri, string name, string because)
    {
        var result = await ProcessRunner.RunAsync(Tools.NbdInfo, ["--no-content", uri]);
        result.EnsureRefused(1, $"server replied with error to opt_go request: No such file or directory for export: {name}", because);
    }

    /// <summary>Runs qemu-io on the export with the raw format driver, one -c per command; fails if any command fails.</summary>
    public static Task<ProcessResult> QemuIoAsync(string uri, params string[] commands) => QemuIoAsync(uri, readOnly: false, commands);

    /// <summary>Like <see cref="QemuIoAsync(string, string[])"/>; <paramref name="readOnly"/> opens with -r, as a read-only export needs.</summary>
    public static async Task<ProcessResult> QemuIoAsync(string uri, bool readOnly, params string[] commands)
    {
        var args = new List<string> { "-f", "raw" };
        if (readOnly) args.Add("-r");
        foreach (var c in commands) { args.Add("-c"); args.Add(c); }
        args.Add(uri);
        var result = await ProcessRunner.RunAsync(Tools.QemuIo, args);
        // qemu-io exits 1 when a command fails, but says so only in its output for some commands: check both.
        if (result.ExitCode != 0 || result.Stdout.Contains("failed", StringComparison.OrdinalIgnoreCase) || result.Stderr.Length > 0)
            throw new XunitException($"qemu-io reported a failure\n{result.Describe()}");
        return result;
    }

    public static async Task<ProcessResult> QemuImgAsync(params string[] args) =>
        (await ProcessRunner.RunAsync(Tools.QemuImg, args)).EnsureSuccess("qemu-img failed");

    /// <summary>Merges adjacent map entries that agree on their key, so tests compare ranges, not chunking.</summary>
    public static List<(long Offset, long Length, T Key)> Coalesce<T>(IEnumerable<(long Offset, long Length, T Key)> runs) where T : IEquatable<T>
    {
        var merged = new List<(long Offset, long Length, T Key)>();
        foreach (var run in runs.OrderBy(r => r.Offset))
        {
            if (merged.Count > 0 && merged[^1].Key.Equals(run.Key) && merged[^1].Offset + merged[^1].Length == run.Offset)
                merged[^1] = (merged[^1].Offset, merged[^1].Length + run.Length, run.Key);
            else
                merged.Add(run);
        }
        return merged;
    }

    public static JsonElement ParseJson(ProcessResult result, string text)
    {
        // Some tools (fio's nbd engine) print progress lines before the JSON document.
        int start = text.IndexOfAny(['{', '[']);
        try
        {
            if (start < 0) throw new JsonException("no JSON in output");
            using var doc = JsonDocument.Parse(text[start..]);
            return doc.RootElement.Clone();
        }
        catch (JsonException e)
        {
            throw new XunitException($"output is not JSON: {e.Message}\n{result.Describe()}");
        }
    }
}
