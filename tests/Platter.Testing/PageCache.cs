using System.Globalization;

namespace Platter.Testing;

/// <summary>What the page cache holds of one file, and dropping it, for tests of I/O that bypasses the cache.</summary>
public static class PageCache
{
    /// <summary>posix_fadvise(DONTNEED) of this file only (dd iflag=nocache), never the machine's caches.</summary>
    public static async Task DropAsync(string path) =>
        (await ProcessRunner.RunAsync("dd", [$"if={path}", "iflag=nocache", "count=0", "status=none"])).EnsureSuccess("dd iflag=nocache");

    /// <summary>Bytes of the file in the page cache (`fincore`, util-linux).</summary>
    public static async Task<long> CachedBytesAsync(string path)
    {
        var result = (await ProcessRunner.RunAsync("fincore", ["--bytes", "--noheadings", "--output", "RES", path])).EnsureSuccess("fincore");
        return long.Parse(result.Stdout.Trim(), CultureInfo.InvariantCulture);
    }
}
