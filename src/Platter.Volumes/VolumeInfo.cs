namespace Platter.Volumes;

/// <summary>What the catalog knows about a volume.</summary>
/// <param name="Id">Internal id, never reused.</param>
/// <param name="Name">Current name (the NBD export name).</param>
/// <param name="SizeBytes">Virtual size.</param>
/// <param name="AllocatedBytes">Bytes of data blocks mapped by this volume (thin: at most SizeBytes).</param>
/// <param name="CreatedUtc">Creation time.</param>
public sealed record VolumeInfo(long Id, string Name, long SizeBytes, long AllocatedBytes, DateTimeOffset CreatedUtc)
{
    /// <summary>For a clone, the snapshot it was cloned from as <c>volume@snapshot</c>; null otherwise.</summary>
    public string? Origin { get; init; }

    /// <summary>Number of snapshots the volume has.</summary>
    public int SnapshotCount { get; init; }
}

/// <summary>Space accounting for the whole store.</summary>
/// <param name="DataFileBytes">Bytes the data files occupy (allocated with fallocate).</param>
/// <param name="UsedBytes">Bytes of data blocks referenced by volumes.</param>
/// <param name="FreeBytes">Bytes inside the data files available for new writes (excluding space awaiting commit).</param>
/// <param name="VolumeCount">Number of volumes.</param>
/// <param name="ProvisionedBytes">Sum of volume virtual sizes.</param>
public sealed record StoreUsage(long DataFileBytes, long UsedBytes, long FreeBytes, int VolumeCount, long ProvisionedBytes);

/// <summary>A run of a volume with the same allocation state.</summary>
public readonly record struct VolumeExtent(long Offset, long Length, bool Allocated);

/// <summary>A snapshot: a read-only, point-in-time image of a volume, exported as <c>volume@snapshot</c>.</summary>
/// <param name="Id">Internal id, never reused.</param>
/// <param name="Volume">The volume it was taken of.</param>
/// <param name="Name">The snapshot's own name (unique within its volume).</param>
/// <param name="SizeBytes">The volume's size when the snapshot was taken.</param>
/// <param name="AllocatedBytes">Bytes of data blocks the snapshot maps (shared or not).</param>
/// <param name="CreatedUtc">Creation time.</param>
/// <param name="Clones">Names of the volumes cloned from this snapshot (they keep it from being deleted).</param>
public sealed record SnapshotInfo(long Id, string Volume, string Name, long SizeBytes, long AllocatedBytes, DateTimeOffset CreatedUtc, IReadOnlyList<string> Clones)
{
    /// <summary><c>volume@snapshot</c>: the NBD export name and the CLI's way to name it.</summary>
    public string FullName => $"{Volume}@{Name}";
}

/// <summary>Space one volume or snapshot holds: what deleting it alone would free, and what it shares.</summary>
/// <param name="Name"><c>volume</c> or <c>volume@snapshot</c>.</param>
/// <param name="IsSnapshot">True for a snapshot.</param>
/// <param name="AllocatedBytes">Bytes of data blocks it maps.</param>
/// <param name="UniqueBytes">Bytes no other volume or snapshot maps.</param>
/// <param name="SharedBytes">Bytes it maps that another volume or snapshot maps too (AllocatedBytes - UniqueBytes).</param>
public sealed record SpaceUsage(string Name, bool IsSnapshot, long AllocatedBytes, long UniqueBytes, long SharedBytes);

/// <summary>A range whose content differs between two points in time.</summary>
/// <param name="Offset">Byte offset.</param>
/// <param name="Length">Byte length.</param>
/// <param name="Allocated">True when the newer point has data there; false when it now reads as zeros (trimmed).</param>
public readonly record struct ChangedExtent(long Offset, long Length, bool Allocated);

/// <summary>
/// A run of a volume with the same allocation depth, in the sense of qemu's <c>qemu:allocation-depth</c>:
/// 0 = unallocated (reads as zeros), 1 = written by this volume itself, 2 = inherited from the snapshot it was
/// cloned from, 3 = from that snapshot's own origin, and so on.
/// </summary>
public readonly record struct DepthExtent(long Offset, long Length, int Depth);
