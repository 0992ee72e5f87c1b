namespace Platter.Cache;

/// <summary>How a volume uses the node's local cache.</summary>
public enum CacheMode
{
    /// <summary>No cache: every request goes to the backend.</summary>
    None,

    /// <summary>
    /// Reads are cached on the local disk; a write goes to the backend and the read cache and is acknowledged when the
    /// backend acknowledges it. Losing the cache loses nothing.
    /// </summary>
    WriteThrough,

    /// <summary>
    /// Writes go to an ordered, checksummed log on the local disk and are acknowledged from there; FLUSH and FUA
    /// complete when the log is durable locally; the log is written back to the backend in order, in the background.
    /// Losing the cache leaves the backend's image an ordered prefix of the writes.
    /// </summary>
    WriteBack,
}

/// <summary>Names of <see cref="CacheMode"/> as users type them (<c>none</c>, <c>writethrough</c>, <c>writeback</c>).</summary>
public static class CacheModes
{
    /// <summary>The user-facing name.</summary>
    public static string ToName(CacheMode mode) => mode switch
    {
        CacheMode.None => "none",
        CacheMode.WriteThrough => "writethrough",
        CacheMode.WriteBack => "writeback",
        _ => throw new ArgumentOutOfRangeException(nameof(mode)),
    };

    /// <summary>Parses a user-facing name (case-insensitive); false for anything else.</summary>
    public static bool TryParse(string? text, out CacheMode mode)
    {
        switch (text?.Trim().ToLowerInvariant())
        {
            case "none": mode = CacheMode.None; return true;
            case "writethrough": mode = CacheMode.WriteThrough; return true;
            case "writeback": mode = CacheMode.WriteBack; return true;
            default: mode = CacheMode.None; return false;
        }
    }
}
