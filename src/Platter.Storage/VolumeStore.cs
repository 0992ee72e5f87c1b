using Microsoft.Extensions.Logging;
using Platter.Storage.Devices;
using Platter.Storage.Internal;

namespace Platter.Storage;

/// <summary>
/// A Platter store: a directory holding the metadata (LMDB), the metadata journal and the data file.
/// Thread-safe. One process opens a store at a time (a lock file enforces it).
///
/// How a write becomes durable: the data goes to newly allocated blocks of the data file (copy-on-write), the
/// block map in memory points at them and the change is appended, encoded, to the volume's pending operations;
/// the write is acknowledged. A flush (or the commit timer) gathers every pending operation of every volume into one
/// batch, syncs the data file, appends the batch to the journal and syncs it: from then on the writes survive any
/// crash. Batches reach the KV store later, many at a time, in one checkpoint transaction.
/// </summary>
public sealed partial class VolumeStore : IDisposable
{
    internal const string MetadataFileName = "data.mdb";
    internal const string DataFileName = "data";
    internal const string LockFileName = "store.lock";

    private readonly StoreOptions _options;
    private readonly ILogger _logger;
    private readonly FileStream _lockFile;
    private readonly MetadataStore _metadata;
    private readonly IDataDevice _file;
    private readonly IDataDevice _data;
    private readonly Journal _journal;
    private readonly Allocator _allocator = new();
    private readonly EpochGate _epochs = new();
    private readonly object _growLock = new();
    private readonly SpaceReserve _reserve;

    // Catalog: guarded by _catalogLock. Catalog changes are serialised by _adminLock (they are rare and wait for commits).
    private readonly object _catalogLock = new();
    private readonly SemaphoreSlim _adminLock = new(1, 1);
    private readonly Dictionary<string, VolumeState> _byName = new(StringComparer.Ordinal);
    private readonly Dictionary<long, VolumeState> _byId = new();
    private OpLog _catalogOps = new(256);
    private readonly List<long> _catalogFrees = new();
    private long _nextId;
    // Distinct physical blocks referenced by any version of any volume (mapped, not yet freed).
    private long _referencedBlocks;

    private long _pendingOpBytes;
    private volatile bool _disposed;

    private VolumeStore(string directory, StoreOptions options, FileStream lockFile, MetadataStore metadata, IDataDevice file, IDataDevice data, Journal journal)
    {
        _file = file;
        Directory = directory;
        _options = options;
        _logger = options.LoggerFactory.CreateLogger("Platter.Storage");
        _lockFile = lockFile;
        _metadata = metadata;
        _data = data;
        _journal = journal;
        _reserve = new SpaceReserve(directory,
            options.MetadataReserveBytes ?? Layout.MetadataReserveBytes(FileSystemSpace.Query(directory)?.TotalBytes ?? 0), _logger);
    }

    /// <summary>
    /// Opens the store in <paramref name="directory"/>, creating it when allowed; replays the journal after a crash.
    /// What it loads is verified first (see <see cref="MetadataVerifier"/>): damaged metadata is refused with
    /// BadStore naming the damage (or, with <see cref="StoreOptions.Salvage"/>, set aside), never served with holes.
    /// </summary>
    public static VolumeStore Open(string directory, StoreOptions? options = null)
    {
        options ??= new StoreOptions();
        directory = Path.GetFullPath(directory);
        string metadataPath = Path.Combine(directory, MetadataFileName), dataPath = Path.Combine(directory, DataFileName);
        bool hasMetadata = File.Exists(metadataPath), hasData = File.Exists(dataPath);
        // A data file without its metadata is somebody's volumes: never initialise a new store over it.
        if (hasData && !hasMetadata)
            throw new StorageException(StorageError.BadStore,
                $"{directory} holds a data file but its metadata ({MetadataFileName}) is missing: refusing to create a new store over the data; " +
                $"restore {MetadataFileName} from a backup, or move the data file away to start a new store");
        bool exists = hasMetadata;
        if (!exists)
        {
            if (!options.CreateIfMissing || options.Salvage) throw new StorageException(StorageError.NotFound, $"no Platter store in {directory}");
            if (System.IO.Directory.Exists(directory) && System.IO.Directory.EnumerateFileSystemEntries(directory)
                    .Any(p => Path.GetFileName(p) is not (LockFileName or "lock.mdb" or MetadataFileName or DataFileName or SpaceReserve.FileName) && !p.EndsWith(".sock", StringComparison.Ordinal)))
                throw new StorageException(StorageError.BadStore, $"{directory} is not empty and holds no Platter store; choose an empty directory");
            System.IO.Directory.CreateDirectory(directory);
        }

        FileStream lockFile;
        try
        {
            // FileShare.None takes an exclusive flock on Linux: a second process (or a second open here) is refused.
            lockFile = new FileStream(Path.Combine(directory, LockFileName), FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
        }
        catch (IOException e)
        {
            throw new StorageException(StorageError.InUse, $"the store in {directory} is in use by another process (is `platter serve` running?)", e);
        }

        MetadataStore? metadata = null;
        IDataDevice? file = null;
        try
        {
            if (options.JournalRegionBytes < Layout.JournalRegionBytesMin) throw new ArgumentException("journal region too small", nameof(options));
            // LMDB maps the file and trusts its header: a truncated file would be a SIGBUS on first touch, not an error.
            if (exists && Lmdb.LmdbFile.Inspect(metadataPath) is { } damaged)
                throw new StorageException(StorageError.BadStore, $"the store's metadata is damaged: {damaged}. Nothing was changed");
            long journalRegion = exists ? options.JournalRegionBytes : Layout.JournalRegionBytesFor(directory, options.JournalRegionBytes);
            metadata = new MetadataStore(directory, create: !exists, journalRegion);
            long journalBytes = metadata.JournalRegionBytes;
            // Metadata whose data file is missing or shorter than its journal: only a store whose creation was cut
            // short (nothing ever committed) may be formatted again; anything else holds volumes whose data is gone.
            bool unformatted = !hasData || new FileInfo(dataPath).Length < journalBytes;
            if (exists && unformatted && !metadata.IsEmpty())
                throw new StorageException(StorageError.BadStore, hasData
                    ? $"the data file {dataPath} is truncated: {new FileInfo(dataPath).Length} bytes, shorter than its {journalBytes}-byte journal region. Nothing was changed"
                    : $"{directory} holds metadata for volumes but its data file ({DataFileName}) is missing. Nothing was changed");
            if (options.Salvage && unformatted)
                throw new StorageException(StorageError.BadStore, $"{directory} holds no data to salvage");
            file = (options.DataDeviceFactory ?? (p => new FileDataDevice(p)))(dataPath);
            // Layout of the data file: the journal region, then data blocks (physical block 0 starts after the journal).
            var journal = new Journal(new DeviceWindow(file, 0, journalBytes));
            if (!exists || unformatted) journal.Format();
            var store = new VolumeStore(directory, options, lockFile, metadata, file, new DeviceWindow(file, journalBytes), journal);
            store.Recover();
            if (!options.Salvage) store._reserve.TryHold();
            store.StartCommitter();
            return store;
        }
        catch (Exception e)
        {
            file?.Dispose();
            metadata?.Dispose();
            lockFile.Dispose();
            if (e is StorageException) throw;
            throw new StorageException(StorageError.BadStore, $"cannot open the store in {directory}: {e.Message}", e);
        }
    }

    /// <summary>True when <paramref name="directory"/> holds a Platter store.</summary>
    public static bool Exists(string directory) =>
        File.Exists(Path.Combine(directory, MetadataFileName)) && File.Exists(Path.Combine(directory, DataFileName));

    public string Directory { get; }

    /// <summary>
    /// Opened with <see cref="StoreOptions.Salvage"/>: every volume is read-only, the catalog cannot change, nothing
    /// is written to the store.
    /// </summary>
    public bool IsSalvage => _options.Salvage;

    /// <summary>What the verification at open found damaged (only a salvage open gets this far with damage): one line each.</summary>
    public IReadOnlyList<string> Damage => _damage;

    private IReadOnlyList<string> _damage = [];

    /// <summary>Counters for metrics.</summary>
    public StorageCounters Counters { get; } = new();

    public IReadOnlyList<VolumeInfo> ListVolumes()
    {
        ThrowIfDisposed();
        List<VolumeState> states;
        lock (_catalogLock) states = [.. _byName.Values];
        return [.. states.Select(s => s.ToInfo()).OrderBy(i => i.Name, StringComparer.Ordinal)];
    }

    /// <summary>Returns the volume's info or throws <see cref="StorageException"/> NotFound.</summary>
    public VolumeInfo GetVolumeInfo(string name)
    {
        ThrowIfDisposed();
        return Find(name).ToInfo();
    }

    public bool TryGetVolumeInfo(string name, out VolumeInfo? info)
    {
        ThrowIfDisposed();
        VolumeState? state;
        lock (_catalogLock) _byName.TryGetValue(name, out state);
        info = state?.ToInfo();
        return info is not null;
    }

    /// <summary>Opens a handle for I/O. Handles are cheap; all handles of a volume share its state.</summary>
    public Volume OpenVolume(string name)
    {
        ThrowIfDisposed();
        return new Volume(this, Find(name));
    }

    /// <summary>Space accounting for the whole store.</summary>
    public StoreUsage GetUsage()
    {
        ThrowIfDisposed();
        List<VolumeState> states;
        lock (_catalogLock) states = [.. _byName.Values];
        long provisioned = 0;
        foreach (var s in states) provisioned += Volatile.Read(ref s.SizeBytes);
        long used = Interlocked.Read(ref _referencedBlocks);
        long free = _allocator.FreeBlocks + ReservedRegionBlocks();
        var fs = _reserve.FileSystem;
        return new StoreUsage(_data.Length, used * Layout.BlockBytes, free * Layout.BlockBytes, states.Count, provisioned,
            fs?.TotalBytes ?? 0, fs?.AvailableBytes ?? 0, _reserve.Bytes);
    }

    internal ILogger Logger => _logger;
    internal IDataDevice DataDevice => _data;
    internal EpochGate Epochs => _epochs;

    private VolumeState Find(string name)
    {
        lock (_catalogLock)
        {
            if (_byName.TryGetValue(name, out var state)) return state;
        }
        throw new StorageException(StorageError.NotFound, $"no volume named '{name}'");
    }

    internal void ThrowIfDisposed()
    {
        if (_disposed) throw new StorageException(StorageError.Closed, "the store is closed");
    }

    /// <summary>Flushes and closes. Safe to call twice.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        WaitForReclaims();
        StopCommitter();
        _journal.Dispose();
        _file.Dispose();
        _metadata.Dispose();
        _lockFile.Dispose();
        _adminLock.Dispose();
    }
}

/// <summary>Monotonic counters since the store was opened.</summary>
public sealed class StorageCounters
{
    public long ReadOps;
    public long ReadBytes;
    public long WriteOps;
    public long WriteBytes;
    public long Commits;
    public long Checkpoints;
    /// <summary>Time spent in commit syncs (data + journal), microseconds.</summary>
    public long SyncMicros;
    /// <summary>Time spent applying journaled batches to the KV store, microseconds.</summary>
    public long CheckpointMicros;
    /// <summary>Time spent in commit rounds (gathering, journal, sync), microseconds.</summary>
    public long RoundMicros;
    public long ChecksumErrors;
    public long IoErrors;
}
