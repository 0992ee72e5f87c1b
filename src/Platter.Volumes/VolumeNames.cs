namespace Platter.Volumes;

/// <summary>Naming rules for volumes (and later snapshots): what an NBD export name and a CLI argument can carry safely.</summary>
public static class VolumeNames
{
    /// <summary>Longest name in UTF-8 bytes. NBD allows 4096; 200 leaves room for "@snapshot" and keeps keys short.</summary>
    public const int NameBytesMax = 200;

    /// <summary>Returns null when <paramref name="name"/> is valid for a new volume or snapshot, otherwise the reason.</summary>
    public static string? Validate(string? name) => ValidateExisting(name);

    /// <summary>
    /// What a name that already exists in a store may look like. Used where a name refers to an existing volume or
    /// snapshot (rename from, delete, info, open), so that when <see cref="Validate"/> grows stricter a store
    /// holding an older name (or an RBD image made with <c>rbd create</c>) can still be served, renamed or deleted.
    /// Null when acceptable.
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

    /// <summary>Throws <see cref="StorageException"/> InvalidName when the name is not valid.</summary>
    public static void ThrowIfInvalid(string? name)
    {
        var reason = Validate(name);
        if (reason is not null) throw new StorageException(StorageError.InvalidName, $"invalid volume name '{name}': {reason}");
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
