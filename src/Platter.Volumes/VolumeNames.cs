namespace Platter.Volumes;

/// <summary>Naming rules for volumes (and later snapshots): what an NBD export name and a CLI argument can carry safely.</summary>
public static class VolumeNames
{
    /// <summary>Longest name in UTF-8 bytes. NBD allows 4096; 200 leaves room for "@snapshot" and keeps keys short.</summary>
    public const int NameBytesMax = 200;

    /// <summary>
    /// Returns null when <paramref name="name"/> is valid for a new volume or snapshot, otherwise the reason. Beyond
    /// <see cref="ValidateExisting"/> it refuses what cannot be managed safely afterwards: <c>.</c> and <c>..</c>
    /// (HTTP clients and servers normalise them out of URL paths), a leading <c>-</c> (every command line reads it
    /// as an option), and control or bidirectional-formatting characters (they make a name print as another one).
    /// </summary>
    public static string? Validate(string? name)
    {
        var reason = ValidateExisting(name);
        if (reason is not null) return reason;
        if (name is "." or "..") return "a name cannot be '.' or '..'";
        if (name![0] == '-') return "a name cannot start with '-' (command lines would read it as an option)";
        foreach (char c in name)
        {
            if (IsBidiControl(c)) return $"a name cannot contain bidirectional formatting characters (U+{(int)c:X4})";
        }
        return null;
    }

    /// <summary>
    /// The looser rules names were created under before <see cref="Validate"/> tightened them: what a name that
    /// already exists in a store may look like. Used where a name refers to an existing volume or snapshot (rename
    /// from, delete, info, open), so a store holding such a name can still rename or delete it. Null when acceptable.
    /// </summary>
    public static string? ValidateExisting(string? name)
    {
        if (string.IsNullOrEmpty(name)) return "a name cannot be empty";
        if (System.Text.Encoding.UTF8.GetByteCount(name) > NameBytesMax) return $"a name is at most {NameBytesMax} bytes";
        foreach (char c in name)
        {
            if (char.IsControl(c)) return "a name cannot contain control characters";
            if (c == '/') return "a name cannot contain '/'";
            if (c == '@') return "a name cannot contain '@' (it separates volume and snapshot)";
        }
        if (char.IsWhiteSpace(name[0]) || char.IsWhiteSpace(name[^1])) return "a name cannot start or end with white space";
        return null;
    }

    // U+061C arabic letter mark, U+200E/U+200F LRM/RLM, U+202A..U+202E embeddings and overrides, U+2066..U+2069
    // isolates: the characters "Trojan Source" (CVE-2021-42574) uses to make text display in another order.
    private static bool IsBidiControl(char c) =>
        c is '\u061C' or '\u200E' or '\u200F' or (>= '\u202A' and <= '\u202E') or (>= '\u2066' and <= '\u2069');

    /// <summary>Throws <see cref="StorageException"/> InvalidName when the name is not valid.</summary>
    public static void ThrowIfInvalid(string? name)
    {
        var reason = Validate(name);
        if (reason is not null) throw new StorageException(StorageError.InvalidName, $"invalid volume name '{name}': {reason}");
    }

    /// <summary>
    /// Throws <see cref="StorageException"/> InvalidName when a name that refers to an existing volume or snapshot is
    /// not acceptable even by the looser <see cref="ValidateExisting"/> rules (open, info, delete, rename from, release,
    /// takeover): a store holding a name today's rules refuse for new volumes can still be served, renamed and deleted.
    /// </summary>
    public static void ThrowIfInvalidExisting(string? name)
    {
        var reason = ValidateExisting(name);
        if (reason is not null) throw new StorageException(StorageError.InvalidName, $"invalid name '{name}': {reason}");
    }

    /// <summary>Splits <c>volume@snapshot</c>; false when <paramref name="fullName"/> has no '@'.</summary>
    public static bool TrySplitSnapshotName(string fullName, out string volume, out string snapshot)
    {
        int at = fullName.IndexOf('@');
        if (at < 0)
        {
            volume = fullName;
            snapshot = "";
            return false;
        }
        volume = fullName[..at];
        snapshot = fullName[(at + 1)..];
        return true;
    }
}
