namespace Platter.Storage;

/// <summary>
/// A Platter store: a directory holding the metadata (LMDB), the metadata journal and the data file.
/// Thread-safe. Open one instance per directory per process.
/// </summary>
public sealed partial class VolumeStore : IDisposable
{
    /// <summary>Opens the store in <paramref name="directory"/>, creating it when allowed; replays the journal after a crash.</summary>
    public static VolumeStore Open(string directory, StoreOptions? options = null) => throw new NotImplementedException("engine landing");

    /// <summary>True when <paramref name="directory"/> holds a Platter store.</summary>
    public static bool Exists(string directory) => throw new NotImplementedException("engine landing");

    public string Directory => throw new NotImplementedException("engine landing");

    public IReadOnlyList<VolumeInfo> ListVolumes() => throw new NotImplementedException("engine landing");

    /// <summary>Returns the volume's info or throws <see cref="StorageException"/> NotFound.</summary>
    public VolumeInfo GetVolumeInfo(string name) => throw new NotImplementedException("engine landing");

    public bool TryGetVolumeInfo(string name, out VolumeInfo? info) => throw new NotImplementedException("engine landing");

    /// <summary>Creates a thin volume; durable on return.</summary>
    public VolumeInfo CreateVolume(string name, long sizeBytes) => throw new NotImplementedException("engine landing");

    public void RenameVolume(string name, string newName) => throw new NotImplementedException("engine landing");

    /// <summary>Grows or shrinks; shrinking drops the data past the new end. Durable on return.</summary>
    public void ResizeVolume(string name, long newSizeBytes) => throw new NotImplementedException("engine landing");

    /// <summary>Deletes the volume and reclaims its space. Open handles start failing with Closed.</summary>
    public void DeleteVolume(string name) => throw new NotImplementedException("engine landing");

    /// <summary>Opens a handle for I/O. Handles are cheap; all handles of a volume share its state.</summary>
    public Volume OpenVolume(string name) => throw new NotImplementedException("engine landing");

    public StoreUsage GetUsage() => throw new NotImplementedException("engine landing");

    /// <summary>Makes every acknowledged write of every volume durable (group commit).</summary>
    public ValueTask FlushAsync(CancellationToken cancellationToken = default) => throw new NotImplementedException("engine landing");

    /// <summary>Counters for metrics.</summary>
    public StorageCounters Counters => throw new NotImplementedException("engine landing");

    /// <summary>Flushes and closes. Safe to call twice.</summary>
    public void Dispose() => throw new NotImplementedException("engine landing");
}

/// <summary>Monotonic counters since the store was opened.</summary>
public sealed class StorageCounters
{
    public long ReadOps;
    public long ReadBytes;
    public long WriteOps;
    public long WriteBytes;
    public long Commits;
    public long ChecksumErrors;
    public long IoErrors;
}
