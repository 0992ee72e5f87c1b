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
///
/// This class is a thin facade over parts that own their state (each with private fields and its own locks):
/// <see cref="VolumeCatalog"/> (names, ids, catalog operations, reclaim), <see cref="Committer"/> (group commit,
/// journal halves, checkpointer, the failed-store latch), <see cref="Space"/> (allocator, regions, growth, block
/// counts, quarantine) and the data path in <see cref="Volume"/>. docs/ARCHITECTURE.md ("Concurrency") lists their locks.
/// </summary>
public sealed partial class VolumeStore : IDisposable
{
    internal const string MetadataFileName = "data.mdb";
    internal const string DataFileName = "data";
    internal const string LockFileName = "store.lock";

    private readonly FileStream _lockFile;
    private readonly MetadataStore _metadata;
    // The whole data file (journal region + data area); the parts use the data area only (a window past the journal).
    private readonly IDataDevice _dataFile;
    private readonly Journal _journal;
    private readonly EngineParts _parts;
    private readonly VolumeCatalog _catalog;
    private readonly Scrubber _scrubber;
    private readonly Relocator _relocator;
    private readonly MapCrcPager _mapCache;
    private volatile bool _disposed;

    private VolumeStore(string directory, StoreOptions options, FileStream lockFile, MetadataStore metadata, IDataDevice dataFile, IDataDevice dataArea, Journal journal,
        PendingRing ring)
    {
        Directory = directory;
        _lockFile = lockFile;
        _metadata = metadata;
        _dataFile = dataFile;
        _journal = journal;
        var logger = options.LoggerFactory.CreateLogger("Platter.Storage");
        var counters = Counters;
        // The parts refer to one another only through these narrow callbacks (space asks for a commit and for the
        // list of volumes; the committer asks the catalog for pending operations).
        VolumeCatalog? catalog = null;
        Committer? committer = null;
        var reserve = new SpaceReserve(directory,
            options.MetadataReserveBytes ?? EngineLimits.MetadataReserveBytes(FileSystemSpace.Query(directory)?.TotalBytes ?? 0), logger);
        var space = new Space(dataArea, options.DataBytesMax, options.DataGrowthBytes, () => catalog!.AllVolumes(),
            commitForSpace: () =>
            {
                if (committer!.Failed) return false;
                committer.Commit();
                return true;
            },
            (e, what) => EngineParts.DeviceError(e, what, counters, logger), reserve, logger,
            failStop: e => committer!.FailStop(e, "the release of freed blocks"));
        var epochs = new EpochGate();
        committer = new Committer(options, logger, metadata, journal, dataArea, space, epochs, counters, ring,
            (batch, frees, ringMarks) => catalog!.Gather(batch, frees, ringMarks));
        ring.CommitAndWait = committer.Commit;
        ring.Nudge = committer.Nudge;
        _parts = new EngineParts(dataArea, space, committer, ring, epochs, counters, logger, options.Salvage);
        catalog = new VolumeCatalog(_parts, logger, options.BackgroundReclaimForTests);
        _catalog = catalog;

        // Verification at open happens here: damaged metadata throws BadStore (or, salvaging, is set aside).
        // What the last process acknowledged but had not committed when it stopped comes back from the ring.
        _mapCache = new MapCrcPager(metadata, options.MapCacheBytes);
        var recovered = Recovery.Run(metadata, journal, dataArea, options.Salvage, logger, options.Salvage ? null : ring.Read(), _mapCache);
        Damage = recovered.Damage;
        _catalog.Load(recovered.Volumes, recovered.NextId);
        space.Initialize(dataArea.Length / EngineLimits.BlockBytes, recovered.UsedRuns, recovered.ReferencedBlocks);
        if (!options.Salvage) space.HoldReserve();
        committer.Start(recovered.LastSequence, recovered.Replayed, options.Salvage);
        _scrubber = CreateScrubber(directory, options.Salvage, logger);
        committer.BlocksFreed = _scrubber.NoteFreed;
        _scrubber.Load();
        _relocator = new Relocator(_parts, () => catalog.AllVolumes(), options.Salvage ? 0 : options.RelocateRateBytesPerSecond, logger);
        _relocator.Start();
    }

    /// <summary>Test hook: one relocation pass over every volume, unpaced (the store's own thread is off when the budget is 0).</summary>
    internal (long Moved, bool Complete) RelocateForTests() => _relocator.RunPass();

    /// <summary>Test hook: one relocation pass that stops as soon as a client writes, as the store's thread does.</summary>
    internal (long Moved, bool Complete) RelocateQuietPassForTests() => _relocator.RunQuietPassForTests();

    /// <summary>Test hook: the pause the consistency check takes.</summary>
    internal IDisposable PauseRelocationForTests() => _relocator.Pause();

    /// <summary>Test hook: called by the relocator after a chunk's copy is written, before it is remapped.</summary>
    internal Action<string, long>? BeforeRelocationRemapForTests
    {
        set => _relocator.BeforeRemapForTests = value is null ? null : (state, block) => value(state.Name, block);
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
                    .Any(p => Path.GetFileName(p) is not (LockFileName or "lock.mdb" or MetadataFileName or DataFileName or SpaceReserve.FileName or PendingRing.FileName)
                        && !p.EndsWith(".sock", StringComparison.Ordinal)))
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
        PendingRing? ring = null;
        try
        {
            if (options.JournalRegionBytes < EngineLimits.JournalRegionBytesMin) throw new ArgumentException("journal region too small", nameof(options));
            // LMDB maps the file and trusts its header: a truncated file would be a SIGBUS on first touch, not an error.
            if (exists && Lmdb.LmdbFile.Inspect(metadataPath) is { } damaged)
                throw new StorageException(StorageError.BadStore, $"the store's metadata is damaged: {damaged}. Nothing was changed");
            long journalRegion = exists ? options.JournalRegionBytes : EngineLimits.JournalRegionBytesFor(directory, options.JournalRegionBytes);
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
            file = (options.DataDeviceFactory ?? (p => new FileDataDevice(p, options.DirectWrites)))(dataPath);
            // Layout of the data file: the journal region, then data blocks (physical block 0 starts after the journal).
            var journal = new Journal(new DeviceWindow(file, 0, journalBytes));
            if (!exists || unformatted) journal.Format();
            var ringLogger = options.LoggerFactory.CreateLogger("Platter.Storage");
            ring = options.Salvage
                ? PendingRing.Disabled(ringLogger) // a salvage open writes nothing to the store
                : PendingRing.Open(directory, EngineLimits.PendingRingBytes(journalBytes), options.BootIdForTests, ringLogger);
            var store = new VolumeStore(directory, options, lockFile, metadata, file, new DeviceWindow(file, journalBytes), journal, ring);
            OpenedForTests?.Invoke(store);
            return store;
        }
        catch (Exception e)
        {
            ring?.Dispose();
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
    public bool IsSalvage => _parts.Salvage;

    /// <summary>What the verification at open found damaged (only a salvage open gets this far with damage): one line each.</summary>
    public IReadOnlyList<string> Damage { get; }

    /// <summary>Counters for metrics.</summary>
    public StorageCounters Counters { get; } = new();

    /// <summary>
    /// For metrics: bytes used in the journal half that commits go to now, and the size of one half. When the used
    /// part passes the switch threshold (or 5 s pass) the committer moves to the other half and the checkpointer
    /// applies this one; a half that keeps filling up means checkpoints are not keeping up.
    /// </summary>
    public (long UsedBytes, long HalfBytes) JournalUse => (_journal.Position, _journal.HalfBytes);

    public IReadOnlyList<VolumeInfo> ListVolumes()
    {
        ThrowIfDisposed();
        return [.. _catalog.NamedVolumes().Select(s => s.ToInfo()).OrderBy(i => i.Name, StringComparer.Ordinal)];
    }

    /// <summary>Returns the volume's info or throws <see cref="StorageException"/> NotFound.</summary>
    public VolumeInfo GetVolumeInfo(string name)
    {
        ThrowIfDisposed();
        return _catalog.Find(name).ToInfo();
    }

    /// <summary>The same as <see cref="GetVolumeInfo(string)"/>: the engine keeps allocated bytes as a counter.</summary>
    public VolumeInfo GetVolumeInfo(string name, bool withAllocation) => GetVolumeInfo(name);

    public bool TryGetVolumeInfo(string name, out VolumeInfo? info)
    {
        ThrowIfDisposed();
        info = _catalog.TryFind(name)?.ToInfo();
        return info is not null;
    }

    /// <summary>Opens a handle for I/O. Handles are cheap; all handles of a volume share its state.</summary>
    public Volume OpenVolume(string name)
    {
        ThrowIfDisposed();
        return new Volume(_parts, _catalog.Find(name));
    }

    /// <summary>Opens a read-only handle on a snapshot (Volume.Name is <c>volume@snapshot</c>).</summary>
    public Volume OpenSnapshot(string volume, string snapshot)
    {
        ThrowIfDisposed();
        return new Volume(_parts, _catalog.FindSnapshot(volume, snapshot));
    }

    /// <summary>Space accounting for the whole store.</summary>
    public StoreUsage GetUsage()
    {
        ThrowIfDisposed();
        var states = _catalog.NamedVolumes();
        long provisioned = 0;
        foreach (var s in states) provisioned += Volatile.Read(ref s.SizeBytes);
        var fs = _parts.Space.FileSystem;
        return new StoreUsage(_parts.Data.Length, _parts.Space.ReferencedBlocks * EngineLimits.BlockBytes, _parts.Space.FreeBlocks() * EngineLimits.BlockBytes,
            states.Count, provisioned, fs?.TotalBytes ?? 0, fs?.AvailableBytes ?? 0, _parts.Space.MetadataReserveBytes);
    }

    /// <summary>Makes every acknowledged write of every volume durable (group commit).</summary>
    public ValueTask FlushAsync(CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        return _parts.Committer.FlushAsync(cancellationToken);
    }

    /// <summary>Creates a thin volume; durable on return.</summary>
    public VolumeInfo CreateVolume(string name, long sizeBytes)
    {
        VolumeNames.ThrowIfInvalid(name);
        return CreateVolumeUnchecked(name, sizeBytes);
    }

    /// <summary>
    /// <see cref="CreateVolume"/> under the older naming rules (<see cref="VolumeNames.ValidateExisting"/>): for tests
    /// that need a store as an older version left it, holding a name today's rules refuse.
    /// </summary>
    internal VolumeInfo CreateVolumeUnchecked(string name, long sizeBytes)
    {
        if (VolumeNames.ValidateExisting(name) is { } reason) throw new StorageException(StorageError.InvalidName, reason);
        ValidateSize(sizeBytes);
        return _catalog.CreateVolume(name, sizeBytes);
    }

    public void RenameVolume(string name, string newName)
    {
        VolumeNames.ThrowIfInvalid(newName);
        _catalog.RenameVolume(name, newName);
    }

    /// <summary>
    /// Grows, or with <paramref name="allowShrink"/> shrinks, a volume; shrinking drops the data past the new end,
    /// so without the flag it is refused (InvalidArgument), like <c>rbd resize --allow-shrink</c>. Durable on return.
    /// </summary>
    public void ResizeVolume(string name, long newSizeBytes, bool allowShrink = false)
    {
        ValidateSize(newSizeBytes);
        _catalog.ResizeVolume(name, newSizeBytes, allowShrink);
    }

    /// <summary>Deletes a volume without snapshots and reclaims its space. Open handles start failing with Closed.</summary>
    public void DeleteVolume(string name) => DeleteVolume(name, recursive: false);

    /// <summary>
    /// Deletes a volume. With snapshots it is refused with HasDependents unless <paramref name="recursive"/>, which
    /// deletes them too (refused still if any of them has clones).
    /// </summary>
    public void DeleteVolume(string name, bool recursive) => _catalog.DeleteVolume(name, recursive);

    /// <summary>Takes a snapshot of the volume's current content in O(1); durable on return.</summary>
    public SnapshotInfo CreateSnapshot(string volume, string snapshot)
    {
        ThrowIfInvalidSnapshotName(snapshot);
        return _catalog.CreateSnapshot(volume, snapshot);
    }

    /// <summary>The volume's snapshots, oldest first. NotFound when there is no such volume.</summary>
    public IReadOnlyList<SnapshotInfo> ListSnapshots(string volume)
    {
        ThrowIfDisposed();
        var state = _catalog.Find(volume);
        List<SnapshotState> snaps;
        lock (state.Lock) snaps = [.. state.Snapshots];
        return [.. snaps.Select(_catalog.ToInfo)];
    }

    /// <summary>Every snapshot of every volume, by volume name then age.</summary>
    public IReadOnlyList<SnapshotInfo> ListSnapshots()
    {
        ThrowIfDisposed();
        var list = new List<SnapshotInfo>();
        foreach (var v in _catalog.NamedVolumes().OrderBy(v => v.Name, StringComparer.Ordinal))
        {
            List<SnapshotState> snaps;
            lock (v.Lock) snaps = [.. v.Snapshots];
            list.AddRange(snaps.Select(_catalog.ToInfo));
        }
        return list;
    }

    /// <summary>One snapshot's info, or NotFound.</summary>
    public SnapshotInfo GetSnapshotInfo(string volume, string snapshot)
    {
        ThrowIfDisposed();
        return _catalog.ToInfo(_catalog.FindSnapshot(volume, snapshot));
    }

    /// <summary>
    /// Deletes a snapshot; space only it held is reclaimed in the background. Refused with HasDependents (the
    /// message names them) while clones of it exist.
    /// </summary>
    public void DeleteSnapshot(string volume, string snapshot) => _catalog.DeleteSnapshot(volume, snapshot);

    /// <summary>Creates a writable volume sharing all data with the snapshot, in O(1); durable on return.</summary>
    public VolumeInfo CloneSnapshot(string volume, string snapshot, string newVolume)
    {
        VolumeNames.ThrowIfInvalid(newVolume);
        return _catalog.CloneSnapshot(volume, snapshot, newVolume);
    }

    /// <summary>
    /// Makes a clone independent of its origin snapshot (decision 0008): every block it still shares with the origin
    /// is copied into space of its own, then one journaled operation drops the origin link. I/O on every volume goes
    /// on during the copy. InvalidArgument when it is not a clone; HasDependents when it has snapshots of its own;
    /// InUse while another flatten of it runs; NoSpace when the copy does not fit (the clone is unchanged in content,
    /// still a clone; flattening again continues where it stopped).
    /// </summary>
    public FlattenResult FlattenVolume(string name) => _catalog.FlattenVolume(name);

    /// <summary>
    /// Returns the volume to the snapshot's content (and size) in O(1); what was written since is reclaimed in the
    /// background. When newer snapshots exist it is refused with HasDependents unless <paramref name="recursive"/>,
    /// which deletes them (refused still if any of them has clones).
    /// </summary>
    public void RollbackVolume(string volume, string snapshot, bool recursive = false) => _catalog.RollbackVolume(volume, snapshot, recursive);

    /// <summary>
    /// Ranges whose content differs between <paramref name="fromSnapshot"/> and <paramref name="toSnapshot"/> (null:
    /// the volume's current content), in offset order, coalesced. Time is proportional to the change, not the size.
    /// </summary>
    public IReadOnlyList<ChangedExtent> Diff(string volume, string fromSnapshot, string? toSnapshot)
    {
        ThrowIfDisposed();
        var from = _catalog.FindSnapshot(volume, fromSnapshot);
        MapTree toMap;
        long toSize;
        if (toSnapshot is null)
        {
            var state = _catalog.Find(volume);
            lock (state.Lock)
            {
                toMap = state.Map.Snapshot();
                toSize = state.SizeBytes;
            }
        }
        else
        {
            var to = _catalog.FindSnapshot(volume, toSnapshot);
            if (to.Id < from.Id)
                throw new StorageException(StorageError.InvalidArgument, $"'{to.DisplayName}' is older than '{from.DisplayName}'; name the older snapshot first");
            toMap = to.Map;
            toSize = to.SizeBytes;
        }
        long endBlock = (Math.Max(from.SizeBytes, toSize) + EngineLimits.BlockBytes - 1) >> EngineLimits.BlockShift;
        return Versions.Diff(from.Map, toMap, endBlock);
    }

    /// <summary>Per volume and snapshot: bytes held alone and bytes shared.</summary>
    public IReadOnlyList<SpaceUsage> GetSpaceUsage()
    {
        ThrowIfDisposed();
        return Versions.SpaceUsage(_catalog.NamedVolumes());
    }

    /// <summary>
    /// Checks the store's consistency: the durable catalog and layers rebuild exactly the versions (volumes and
    /// snapshots) in memory; every record lies inside the data file; no physical block is referenced by two unrelated
    /// versions; free + referenced (+ reserved, + awaiting reuse) = total. With <paramref name="verifyChecksums"/>
    /// every referenced block is read and its CRC compared. Waits for background reclaims, commits and checkpoints
    /// first, and keeps the relocator still meanwhile; run it on an idle store (the CLI runs it offline).
    /// </summary>
    public CheckReport Check(bool verifyChecksums)
    {
        ThrowIfDisposed();
        // The relocator works when clients are quiet, as during a check: it holds still until the check is done.
        using var paused = _relocator.Pause();
        _catalog.WaitForReclaims();
        _parts.Committer.Checkpoint();
        return StoreCheck.Run(_metadata, _catalog.AllVolumes(), _parts.Space, _parts.Data, verifyChecksums);
    }

    /// <summary>Commits and checkpoints everything into the KV store (tests).</summary>
    internal void Checkpoint() => _parts.Committer.Checkpoint();

    /// <summary>
    /// Called with every store this process opens, for tests that break a store served by a real <c>platter serve</c>
    /// (tests/Platter.FaultHook, loaded into the server as a .NET startup hook, sets it). Internal: only assemblies
    /// named in this project's InternalsVisibleTo can set it, so a production server never has one.
    /// </summary>
    internal static Action<VolumeStore>? OpenedForTests;

    /// <summary>
    /// Why the store failed, or null while it works. A failed store (a failed sync or metadata commit, or fail-stop on
    /// a broken engine invariant) refuses every write, flush and catalog change with StoreFailed until it is reopened;
    /// reads of what was durable still work. The server's health endpoint reports it.
    /// </summary>
    public string? Failure => _parts.Committer.Failure?.Message;

    /// <summary>The parts, for tests that inject broken state (fail-stop tests).</summary>
    internal EngineParts Parts => _parts;

    /// <summary>The map checksum cache (decision 0013): tests and the map benchmark observe its paging.</summary>
    internal MapCrcPager MapCache => _mapCache;

    /// <summary>Test hook: the process "dies" here as far as the pending-operation ring is concerned (what a SIGKILL leaves).</summary>
    internal void DetachRingForTests() => _parts.Ring.DetachForTests();

    /// <summary>A volume's in-memory state, for tests that inject broken state.</summary>
    internal VolumeState VolumeStateForTests(string name) => _catalog.Find(name);

    /// <summary>Waits until every background reclaim has handed its blocks over (tests).</summary>
    internal void WaitForReclaims() => _catalog.WaitForReclaims();

    private static void ValidateSize(long sizeBytes)
    {
        if (sizeBytes <= 0) throw new StorageException(StorageError.InvalidArgument, "a volume size must be greater than zero");
        if (sizeBytes > EngineLimits.VolumeBytesMax) throw new StorageException(StorageError.InvalidArgument, $"a volume size is at most {EngineLimits.VolumeBytesMax >> 50} PiB");
        if (sizeBytes % EngineLimits.SizeAlignmentBytes != 0)
            throw new StorageException(StorageError.InvalidArgument, $"a volume size must be a multiple of {EngineLimits.SizeAlignmentBytes} bytes (got {sizeBytes})");
    }

    private static void ThrowIfInvalidSnapshotName(string? name)
    {
        var reason = VolumeNames.Validate(name);
        if (reason is not null) throw new StorageException(StorageError.InvalidName, $"invalid snapshot name '{name}': {reason}");
    }

    private void ThrowIfDisposed()
    {
        if (_disposed) throw new StorageException(StorageError.Closed, "the store is closed");
    }

    /// <summary>Flushes and closes. Safe to call twice.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _relocator.Dispose();
        _scrubber.Dispose();
        _parts.Close();
        _catalog.WaitForReclaims();
        _parts.Committer.Dispose();
        _parts.Ring.Dispose();
        _parts.Space.Dispose(); // the last round's frees are punched before the data file closes
        _journal.Dispose();
        _dataFile.Dispose();
        _metadata.Dispose();
        _lockFile.Dispose();
        _catalog.Dispose();
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
    /// <summary>Blocks the online scrub read and verified.</summary>
    public long ScrubBlocksChecked;
    /// <summary>Bad blocks the online scrub found (confirmed: still referenced and still wrong on a second read).</summary>
    public long ScrubBadBlocks;
    /// <summary>Blocks the relocator moved to put scattered data back together (decision 0011).</summary>
    public long RelocatedBlocks;
}
