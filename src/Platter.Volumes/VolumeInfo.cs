namespace Platter.Volumes;

/// <summary>What the catalog knows about a volume.</summary>
/// <param name="Id">Internal id, never reused.</param>
/// <param name="Name">Current name (the NBD export name).</param>
/// <param name="SizeBytes">Virtual size.</param>
/// <param name="AllocatedBytes">Bytes of data blocks mapped by this volume (thin: at most SizeBytes); null when the
/// backend did not count them for this answer. The embedded engine always knows them (a counter); on RBD they take a
/// walk of the image's object map (<c>rbd_diff_iterate2</c>, one step per 4 MiB object, and one object map per
/// snapshot), so a list or a plain lookup leaves them null and only
/// <see cref="IVolumeBackend.GetVolumeInfo(string, bool)"/> with <c>withAllocation</c> and the space report count them.</param>
/// <param name="CreatedUtc">Creation time.</param>
public sealed record VolumeInfo(long Id, string Name, long SizeBytes, long? AllocatedBytes, DateTimeOffset CreatedUtc)
{
    /// <summary>For a clone, the snapshot it was cloned from as <c>volume@snapshot</c>; null otherwise.</summary>
    public string? Origin { get; init; }

    /// <summary>Number of snapshots the volume has.</summary>
    public int SnapshotCount { get; init; }
}

/// <summary>Space accounting for the whole store.</summary>
/// <param name="DataFileBytes">Size of the data files (sparse: free blocks inside them take no disk space).</param>
/// <param name="UsedBytes">Bytes of data blocks referenced by volumes.</param>
/// <param name="FreeBytes">Free blocks inside the data files (excluding space awaiting commit); writes to them still need
/// disk space from the file system.</param>
/// <param name="VolumeCount">Number of volumes.</param>
/// <param name="ProvisionedBytes">Sum of volume virtual sizes.</param>
/// <param name="FileSystemBytes">Size of the host file system holding the store (0 when unknown, or no local store).</param>
/// <param name="FileSystemAvailableBytes">Bytes free on that file system.</param>
/// <param name="MetadataReserveBytes">Bytes of it kept for metadata: data writes fail with ENOSPC before they take them.</param>
public sealed record StoreUsage(long DataFileBytes, long UsedBytes, long FreeBytes, int VolumeCount, long ProvisionedBytes,
    long FileSystemBytes = 0, long FileSystemAvailableBytes = 0, long MetadataReserveBytes = 0)
{
    /// <summary>
    /// Warn when the volumes' sizes add up to more than the data they could ever hold: LVM's thin pools warn at the
    /// same point ("sum of all thin volume sizes exceeds the size of the thin pool"), since past it a guest that fills
    /// its disk can fill the host's.
    /// </summary>
    public const double OvercommitWarningRatio = 1.0;

    /// <summary>Warn when the file system has less than this share of its size left for data.</summary>
    public const double LowSpaceWarningFraction = 0.10;

    /// <summary>Bytes volumes can hold in all: what they hold plus what the file system can still give to data (0 when unknown).</summary>
    public long CapacityBytes => FileSystemBytes <= 0 ? 0 : UsedBytes + Math.Max(0, FileSystemAvailableBytes - MetadataReserveBytes);

    /// <summary>Provisioned bytes per byte of capacity (0 when the capacity is unknown).</summary>
    public double Overcommit => CapacityBytes <= 0 ? 0 : (double)ProvisionedBytes / CapacityBytes;

    /// <summary>One line per condition an operator should act on (overcommitted, file system nearly full); empty when none.</summary>
    public IReadOnlyList<string> Warnings
    {
        get
        {
            var warnings = new List<string>();
            if (FileSystemBytes <= 0) return warnings;
            long forData = Math.Max(0, FileSystemAvailableBytes - MetadataReserveBytes);
            if (Overcommit > OvercommitWarningRatio)
                warnings.Add($"overcommitted {Overcommit:0.0}x: the volumes' sizes add up to {Size(ProvisionedBytes)} but they can hold {Size(CapacityBytes)} " +
                             "(writes fail with ENOSPC once the file system is full)");
            if (forData < FileSystemBytes * LowSpaceWarningFraction)
                warnings.Add($"the file system holding the store has {Size(forData)} left for data, less than {LowSpaceWarningFraction:P0} of its size");
            return warnings;
        }
    }

    private static string Size(long bytes) => bytes >= 1L << 30
        ? string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{bytes / (double)(1L << 30):0.#} GiB")
        : string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{bytes / (double)(1L << 20):0.#} MiB");
}

/// <summary>A run of a volume with the same allocation state.</summary>
public readonly record struct VolumeExtent(long Offset, long Length, bool Allocated);

/// <summary>A snapshot: a read-only, point-in-time image of a volume, exported as <c>volume@snapshot</c>.</summary>
/// <param name="Id">Internal id, never reused.</param>
/// <param name="Volume">The volume it was taken of.</param>
/// <param name="Name">The snapshot's own name (unique within its volume).</param>
/// <param name="SizeBytes">The volume's size when the snapshot was taken.</param>
/// <param name="AllocatedBytes">Bytes of data blocks the snapshot maps (shared or not); null when the backend did not
/// compute them for this answer. The embedded engine always knows them (a counter); on RBD they take a walk of the
/// snapshot's object map, one step per 4 MiB object of the image, so only <see cref="IVolumeBackend.GetSnapshotInfo"/>
/// and the space report compute them, never a create or a list (see <see cref="IVolumeBackend.CreateSnapshot"/>).</param>
/// <param name="CreatedUtc">Creation time.</param>
/// <param name="Clones">Names of the volumes cloned from this snapshot (they keep it from being deleted).</param>
public sealed record SnapshotInfo(long Id, string Volume, string Name, long SizeBytes, long? AllocatedBytes, DateTimeOffset CreatedUtc, IReadOnlyList<string> Clones)
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

/// <summary>What a flatten did.</summary>
/// <param name="Volume">The flattened volume.</param>
/// <param name="Origin">The snapshot it no longer depends on, as <c>volume@snapshot</c>.</param>
/// <param name="CopiedBytes">Data copied from the origin into the volume; null when the backend does not report it (RBD).</param>
public sealed record FlattenResult(string Volume, string Origin, long? CopiedBytes);
