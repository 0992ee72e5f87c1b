using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Platter.Ceph;
using Platter.Volumes;

namespace Platter.Rbd;

/// <summary>
/// Volumes as RBD images in one Ceph pool, through librbd. A volume is a plain format-2 image, a snapshot an RBD
/// snapshot, a clone an RBD clone (format 2: no protect step), so the <c>rbd</c> CLI, libvirt's rbd disks and
/// <c>qemu-img rbd:POOL/IMAGE</c> see and use the same images; images made with <c>rbd create</c> are volumes too.
/// </summary>
/// <remarks>
/// <para>Connections: one for catalog calls and snapshot reads, and one per volume served read-write (see
/// <see cref="RbdVolume"/>), because fencing works per client address.</para>
/// <para>librbd's cache is off on every connection (<c>rbd_cache = false</c>): a write completes when every replica
/// has it on stable storage, so FUA is free, a flush has nothing to write back, and a server that is fenced holds no
/// acknowledged data in memory that could be lost or written late. The NBD client (the guest's page cache) is the
/// write-back cache.</para>
/// </remarks>
public sealed class RbdBackend : IVolumeBackend, IVolumeTakeover, IVolumeMetadata
{
    /// <summary>Image metadata key naming the server that holds a volume's lock (host, pid, client address).</summary>
    public const string HolderKey = "platter.holder";

    // Features of images Platter creates: librbd's defaults. exclusive-lock is what makes one writer at a time
    // enforceable; object-map + fast-diff make diffs, block status and du read one small object per image instead of
    // probing every data object.
    internal const RbdFeatures CreateFeatures = RbdFeatures.Layering | RbdFeatures.ExclusiveLock | RbdFeatures.ObjectMap |
        RbdFeatures.FastDiff | RbdFeatures.DeepFlatten;

    private readonly RbdBackendOptions _options;
    private readonly ILogger _log;
    private readonly RadosCluster _catalogConnection;
    private readonly RadosIoContext _catalog;
    private readonly Dictionary<string, RbdVolume> _open = new(StringComparer.Ordinal);
    private readonly Lock _openLock = new(); // guards _open only; never held across a librbd call that waits on the cluster
    private readonly Lock _catalogLock = new(); // one catalog change at a time (check-then-act sequences stay whole)
    private bool _disposed;

    private RbdBackend(RbdBackendOptions options, RadosCluster connection, RadosIoContext catalog)
    {
        _options = options;
        _log = (options.LoggerFactory ?? NullLoggerFactory.Instance).CreateLogger("Platter.Rbd");
        _catalogConnection = connection;
        _catalog = catalog;
    }

    /// <summary>
    /// Connects to the cluster and opens the pool. A clear <see cref="StorageException"/> when the monitors do not
    /// answer within <see cref="RbdBackendOptions.ConnectTimeout"/> (BadStore), or the pool does not exist (NotFound).
    /// </summary>
    public static RbdBackend Open(RbdBackendOptions options)
    {
        RadosCluster connection;
        try
        {
            connection = RadosCluster.Connect(options.ConfFile, options.Id, Settings(options));
        }
        catch (CephException e)
        {
            throw new StorageException(StorageError.BadStore, e.Errno == CephException.ETIMEDOUT
                ? $"Ceph cluster unreachable: no monitor answered within {options.ConnectTimeout.TotalSeconds:0} s ({e.Message}); check mon_host in {options.ConfFile ?? "the Ceph configuration"}"
                : $"cannot connect to the Ceph cluster as client.{options.Id.Replace("client.", "")}: {e.Message}", e);
        }
        try
        {
            var catalog = connection.OpenPool(options.Pool);
            return new RbdBackend(options, connection, catalog);
        }
        catch (CephException e)
        {
            connection.Dispose();
            throw new StorageException(e.Errno == CephException.ENOENT ? StorageError.NotFound : StorageError.BadStore,
                $"cannot open Ceph pool '{options.Pool}': {e.Message}", e);
        }
    }

    /// <summary>The Ceph options every connection of this backend uses (each one says why).</summary>
    internal static List<KeyValuePair<string, string>> Settings(RbdBackendOptions options)
    {
        var settings = new List<KeyValuePair<string, string>>
        {
            // See the class remarks: acknowledged means replicated and durable.
            new("rbd_cache", "false"),
            // A trimmed range must read as zeros (the seam's promise, and qemu relies on it with discard-zeroes):
            // librbd then zeroes the partial objects of a discard instead of skipping them.
            new("rbd_skip_partial_discard", "false"),
            // Breaking a lock fences its holder: without this a takeover could let a hung server write later.
            new("rbd_blocklist_on_break_lock", "true"),
            // See RbdBackendOptions.ZeroCopyWrites. librbd 16.2 holds a write's completion back until it has dropped
            // its last reference to the caller's buffer (its UserBufferDeleter), and a request's buffer stays pinned
            // until that completion, so only a caller changing the buffer mid-write could hurt, and those keep the copy.
            new("rbd_disable_zero_copy_writes", options.ZeroCopyWrites ? "false" : "true"),
            new("client_mount_timeout", ((int)Math.Ceiling(options.ConnectTimeout.TotalSeconds)).ToString()),
            new("rados_mon_op_timeout", ((int)Math.Ceiling(options.ConnectTimeout.TotalSeconds)).ToString()),
            new("rados_osd_op_timeout", ((int)Math.Ceiling(options.OperationTimeout.TotalSeconds)).ToString()),
        };
        foreach (var (k, v) in options.CephOptions ?? new Dictionary<string, string>()) settings.Add(new(k, v));
        return settings;
    }

    internal RadosCluster Connect()
    {
        try
        {
            return RadosCluster.Connect(_options.ConfFile, _options.Id, Settings(_options));
        }
        catch (CephException e)
        {
            throw RbdErrors.Map(e, "connecting to the Ceph cluster");
        }
    }

    internal string Pool => _options.Pool;

    public string Kind => "rbd";

    public string Location => "rbd:" + _options.Pool;

    // ---- volumes ----

    public IReadOnlyList<VolumeInfo> ListVolumes()
    {
        var names = Catalog(() => RbdImages.List(_catalog), "listing volumes");
        names.Sort(StringComparer.Ordinal);
        var volumes = new List<VolumeInfo>(names.Count);
        foreach (var name in names)
        {
            if (VolumeNames.ValidateExisting(name) is not null) continue; // not nameable as an NBD export: skip, do not fail the list
            try
            {
                using var image = RbdImage.Open(_catalog, name, readOnly: true);
                volumes.Add(Describe(image, allocated: null)); // not counted: see VolumeInfo.AllocatedBytes
            }
            catch (CephException e) when (e.Errno == CephException.ENOENT)
            {
                // removed between the listing and the open
            }
            catch (CephException e)
            {
                throw RbdErrors.Map(e, $"reading volume '{name}'");
            }
        }
        return volumes;
    }

    // Names that refer to an existing image or snapshot are checked by the looser rules, as the embedded engine does:
    // an image made with 'rbd create' under a name today's rules refuse for new volumes can still be served,
    // renamed and deleted. New names (create, rename to, snapshot, clone) meet VolumeNames.Validate.
    private static void ThrowIfInvalidExisting(string name) => VolumeNames.ThrowIfInvalidExisting(name);

    public VolumeInfo GetVolumeInfo(string name) => GetVolumeInfo(name, withAllocation: false);

    /// <summary>One volume; its allocated bytes only <paramref name="withAllocation"/> (a walk of its object map, as <c>rbd du</c>).</summary>
    public VolumeInfo GetVolumeInfo(string name, bool withAllocation)
    {
        ThrowIfInvalidExisting(name);
        return WithImage(name, image => Describe(image, withAllocation ? AllocatedBytes(image, includeParent: false) : null), $"reading volume '{name}'");
    }

    /// <summary>Whether the volume exists, and its description without allocated bytes (the catalog's checks never need them).</summary>
    public bool TryGetVolumeInfo(string name, out VolumeInfo? info)
    {
        ThrowIfInvalidExisting(name);
        try
        {
            using var image = RbdImage.Open(_catalog, name, readOnly: true);
            info = Describe(image, allocated: null);
            return true;
        }
        catch (CephException e) when (e.Errno == CephException.ENOENT)
        {
            info = null;
            return false;
        }
        catch (CephException e)
        {
            throw RbdErrors.Map(e, $"reading volume '{name}'");
        }
    }

    /// <summary>
    /// A volume's description from its header alone (a few RADOS reads, whatever its size). <paramref name="allocated"/>:
    /// the count when the caller has one (a new image: 0; asked for: a walk), else null, "not counted", never 0.
    /// </summary>
    private static VolumeInfo Describe(RbdImage image, long? allocated)
    {
        var parent = image.GetParent();
        return new VolumeInfo(ImageId(image.Id), image.Name, (long)image.Size, allocated, image.CreatedAt)
        {
            Origin = parent is { } p ? (p.Pool == image.IoContext.Pool ? "" : p.Pool + "/") + $"{p.Image}@{p.Snapshot}" : null,
            SnapshotCount = image.ListSnapshots().Count,
        };
    }

    /// <summary>An image id (hex, e.g. "10f26b8b4567") as the seam's number; ids longer than 15 digits are hashed.</summary>
    internal static long ImageId(string id) =>
        id.Length <= 15 && long.TryParse(id, System.Globalization.NumberStyles.HexNumber, null, out long value)
            ? value
            : Fnv1a(id);

    private static long Fnv1a(string text)
    {
        ulong hash = 14695981039346656037;
        foreach (char c in text) hash = (hash ^ c) * 1099511628211;
        return (long)(hash >> 1);
    }

    /// <summary>
    /// Bytes of the objects that hold data, as <c>rbd du</c> counts them: object granularity (with fast-diff librbd
    /// answers from the object map without touching the data objects).
    /// </summary>
    private static long AllocatedBytes(RbdImage image, bool includeParent)
    {
        long total = 0;
        image.DiffIterate(null, 0, image.Size, includeParent, wholeObject: true, (_, length, exists) =>
        {
            if (exists) total += (long)length;
            return true;
        });
        return total;
    }

    public VolumeInfo CreateVolume(string name, long sizeBytes)
    {
        VolumeNames.ThrowIfInvalid(name);
        CheckSize(sizeBytes);
        lock (_catalogLock)
        {
            Catalog(() => RbdImages.Create(_catalog, name, (ulong)sizeBytes, CreateFeatures), $"creating volume '{name}'",
                (CephException.EEXIST, StorageError.AlreadyExists, $"a volume named '{name}' already exists"));
            _log.LogInformation("volume {Name} created in {Location}: {Size} bytes", name, Location, sizeBytes);
            return WithImage(name, image => Describe(image, allocated: 0), $"reading volume '{name}'"); // new: no object written yet
        }
    }

    private static void CheckSize(long sizeBytes)
    {
        if (sizeBytes <= 0) throw new StorageException(StorageError.InvalidArgument, "a volume size must be greater than zero");
        if (sizeBytes % 512 != 0) throw new StorageException(StorageError.InvalidArgument, $"a volume size must be a multiple of 512 bytes (got {sizeBytes})");
    }

    public void RenameVolume(string name, string newName)
    {
        ThrowIfInvalidExisting(name);
        VolumeNames.ThrowIfInvalid(newName);
        lock (_catalogLock)
        {
            if (IsOpenHere(name))
                throw new StorageException(StorageError.InUse, $"volume '{name}' is being served: disconnect its clients before renaming it");
            if (TryGetVolumeInfo(newName, out _)) throw new StorageException(StorageError.AlreadyExists, $"a volume named '{newName}' already exists");
            Catalog(() => RbdImages.Rename(_catalog, name, newName), $"renaming volume '{name}'",
                (CephException.ENOENT, StorageError.NotFound, $"no volume named '{name}'"),
                (CephException.EEXIST, StorageError.AlreadyExists, $"a volume named '{newName}' already exists"));
        }
    }

    public void ResizeVolume(string name, long newSizeBytes, bool allowShrink = false)
    {
        ThrowIfInvalidExisting(name);
        CheckSize(newSizeBytes);
        lock (_catalogLock)
        {
            // The same refusal as the embedded engine (and rbd resize without --allow-shrink): a shrink drops data.
            long oldSize = WithImage(name, image => (long)image.Size, $"reading volume '{name}'");
            if (newSizeBytes < oldSize && !allowShrink)
                throw new StorageException(StorageError.InvalidArgument,
                    $"shrinking volume '{name}' from {oldSize} to {newSizeBytes} bytes discards the data past the new end; it needs allow-shrink (platter volume resize --allow-shrink)");
            WithWritableImage(name, image => image.Resize((ulong)newSizeBytes, allowShrink: true), $"resizing volume '{name}'");
        }
    }

    public void DeleteVolume(string name, bool recursive)
    {
        ThrowIfInvalidExisting(name);
        lock (_catalogLock)
        {
            var snapshots = ListSnapshots(name);
            if (snapshots.Count > 0 && !recursive)
                throw new StorageException(StorageError.HasDependents,
                    $"volume '{name}' has {snapshots.Count} snapshot(s); delete them first, or delete recursively");
            foreach (var snapshot in snapshots)
            {
                if (snapshot.Clones.Count > 0)
                    throw new StorageException(StorageError.HasDependents,
                        $"snapshot '{snapshot.FullName}' has clones ({string.Join(", ", snapshot.Clones)}); delete them first");
            }
            // Handles opened here fail with Closed from now on; the image's watch goes with them so rbd_remove may proceed.
            CloseOpen(name);
            foreach (var snapshot in snapshots)
            {
                WithWritableImage(name, image => image.RemoveSnapshot(snapshot.Name), $"deleting snapshot '{snapshot.FullName}'");
            }
            Catalog(() => RemoveImage(name), $"deleting volume '{name}'",
                (CephException.ENOENT, StorageError.NotFound, $"no volume named '{name}'"),
                (CephException.EBUSY, StorageError.InUse, $"volume '{name}' is open on another server (its image has watchers)"));
            _log.LogInformation("volume {Name} deleted", name);
        }
    }

    // ---- snapshots ----

    public SnapshotInfo CreateSnapshot(string volume, string snapshot)
    {
        ThrowIfInvalidExisting(volume);
        VolumeNames.ThrowIfInvalid(snapshot);
        lock (_catalogLock)
        {
            SnapshotInfo? created = null;
            WithWritableImage(volume, image =>
            {
                if (image.ListSnapshots().Any(s => s.Name == snapshot))
                    throw new StorageException(StorageError.AlreadyExists, $"volume '{volume}' already has a snapshot named '{snapshot}'");
                image.CreateSnapshot(snapshot);
                // Described from the head image, without opening the snapshot: a new snapshot has no clones yet, and its
                // allocated bytes are left unknown, since counting them walks the object map object by object (3.6 s
                // of a 5.5 s create at 1 TiB under load, docs/PERFORMANCE.md); GetSnapshotInfo and du count them.
                var taken = image.ListSnapshots().First(s => s.Name == snapshot);
                created = new SnapshotInfo((long)taken.Id, image.Name, taken.Name, (long)taken.SizeBytes, AllocatedBytes: null,
                    image.GetSnapshotTimestamp(taken.Id), []);
            }, $"creating snapshot '{volume}@{snapshot}'");
            return created!;
        }
    }

    public IReadOnlyList<SnapshotInfo> ListSnapshots(string volume)
    {
        ThrowIfInvalidExisting(volume);
        return WithImage(volume, image => image.ListSnapshots().Select(s => DescribeSnapshot(image, s, withAllocation: false)).ToList(),
            $"listing snapshots of '{volume}'");
    }

    public IReadOnlyList<SnapshotInfo> ListSnapshots()
    {
        // By image name, not through ListVolumes: describing the volumes would count each one's allocated bytes.
        var names = Catalog(() => RbdImages.List(_catalog), "listing volumes");
        names.Sort(StringComparer.Ordinal);
        var all = new List<SnapshotInfo>();
        foreach (var name in names)
        {
            if (VolumeNames.ValidateExisting(name) is not null) continue; // not served, as in ListVolumes
            try
            {
                all.AddRange(ListSnapshots(name));
            }
            catch (StorageException e) when (e.Error == StorageError.NotFound)
            {
                // deleted meanwhile
            }
        }
        return all;
    }

    public SnapshotInfo GetSnapshotInfo(string volume, string snapshot) => FindSnapshot(volume, snapshot, withAllocation: true);

    /// <summary>
    /// One snapshot, NotFound when there is none; the allocated bytes only <paramref name="withAllocation"/> (a walk of
    /// its object map): the catalog's own checks (exists? clones?) never need them.
    /// </summary>
    private SnapshotInfo FindSnapshot(string volume, string snapshot, bool withAllocation)
    {
        ThrowIfInvalidExisting(volume);
        ThrowIfInvalidExisting(snapshot);
        return WithImage(volume, image =>
        {
            var found = image.ListSnapshots().FirstOrDefault(s => s.Name == snapshot);
            if (found.Name is null) throw new StorageException(StorageError.NotFound, $"volume '{volume}' has no snapshot '{snapshot}'");
            return DescribeSnapshot(image, found, withAllocation);
        }, $"reading snapshot '{volume}@{snapshot}'");
    }

    private SnapshotInfo DescribeSnapshot(RbdImage image, RbdSnapshot snapshot, bool withAllocation)
    {
        using var at = RbdImage.Open(_catalog, image.Name, snapshot.Name);
        var clones = at.ListChildren().Where(c => !c.InTrash)
            .Select(c => c.Pool == _options.Pool ? c.Image : $"{c.Pool}/{c.Image}").OrderBy(n => n, StringComparer.Ordinal).ToArray();
        return new SnapshotInfo((long)snapshot.Id, image.Name, snapshot.Name, (long)snapshot.SizeBytes,
            withAllocation ? AllocatedBytes(at, includeParent: false) : null, image.GetSnapshotTimestamp(snapshot.Id), clones);
    }

    public void DeleteSnapshot(string volume, string snapshot)
    {
        lock (_catalogLock)
        {
            var info = FindSnapshot(volume, snapshot, withAllocation: false);
            if (info.Clones.Count > 0)
                throw new StorageException(StorageError.HasDependents,
                    $"snapshot '{info.FullName}' has clones ({string.Join(", ", info.Clones)}); delete them first");
            WithWritableImage(volume, image => image.RemoveSnapshot(snapshot), $"deleting snapshot '{volume}@{snapshot}'");
        }
    }

    public VolumeInfo CloneSnapshot(string volume, string snapshot, string newVolume)
    {
        VolumeNames.ThrowIfInvalid(newVolume);
        lock (_catalogLock)
        {
            FindSnapshot(volume, snapshot, withAllocation: false);
            if (TryGetVolumeInfo(newVolume, out _)) throw new StorageException(StorageError.AlreadyExists, $"a volume named '{newVolume}' already exists");
            Catalog(() => RbdImages.Clone(_catalog, volume, snapshot, newVolume, CreateFeatures), $"cloning '{volume}@{snapshot}' as '{newVolume}'",
                (CephException.EEXIST, StorageError.AlreadyExists, $"a volume named '{newVolume}' already exists"));
            // A new clone has no object of its own yet (it reads through to its origin): 0 without walking it.
            return WithImage(newVolume, image => Describe(image, allocated: 0), $"reading volume '{newVolume}'");
        }
    }

    /// <summary>
    /// <c>rbd_flatten</c>: librbd copies every object the clone still reads from its parent and drops the parent link
    /// (of its snapshots too: images are created with deep-flatten). Not under the catalog lock: the copy takes as
    /// long as the parent's data, and librbd keeps the clone consistent on its own (through its exclusive lock).
    /// </summary>
    public FlattenResult FlattenVolume(string name)
    {
        ThrowIfInvalidExisting(name);
        var parent = WithImage(name, image => image.GetParent(), $"reading the origin of '{name}'")
            ?? throw new StorageException(StorageError.InvalidArgument, $"volume '{name}' is not a clone: it depends on no snapshot, nothing to flatten");
        string origin = parent.Pool == _options.Pool ? $"{parent.Image}@{parent.Snapshot}" : $"{parent.Pool}/{parent.Image}@{parent.Snapshot}";
        WithWritableImage(name, image => image.Flatten(), $"flattening '{name}'");
        _log.LogInformation("volume {Name} flattened (no longer depends on {Origin})", name, origin);
        return new FlattenResult(name, origin, CopiedBytes: null);
    }

    public void RollbackVolume(string volume, string snapshot, bool recursive)
    {
        lock (_catalogLock)
        {
            var snapshots = ListSnapshots(volume);
            int index = snapshots.ToList().FindIndex(s => s.Name == snapshot);
            if (index < 0) throw new StorageException(StorageError.NotFound, $"volume '{volume}' has no snapshot '{snapshot}'");
            var newer = snapshots.Skip(index + 1).ToList();
            // The embedded store's rule, kept so both backends answer alike: rolling back past newer snapshots
            // deletes them, and only when asked to. (RBD itself could keep them.)
            if (newer.Count > 0 && !recursive)
                throw new StorageException(StorageError.HasDependents,
                    $"volume '{volume}' has snapshots newer than '{snapshot}' ({string.Join(", ", newer.Select(s => s.Name))}); roll back recursively to delete them");
            foreach (var s in newer)
            {
                if (s.Clones.Count > 0)
                    throw new StorageException(StorageError.HasDependents, $"snapshot '{s.FullName}' has clones ({string.Join(", ", s.Clones)}); delete them first");
            }
            WithWritableImage(volume, image =>
            {
                foreach (var s in newer) image.RemoveSnapshot(s.Name);
                image.RollbackSnapshot(snapshot);
            }, $"rolling '{volume}' back to '{snapshot}'");
        }
    }

    public IReadOnlyList<ChangedExtent> Diff(string volume, string fromSnapshot, string? toSnapshot)
    {
        ThrowIfInvalidExisting(volume);
        var from = FindSnapshot(volume, fromSnapshot, withAllocation: false);
        if (toSnapshot != null)
        {
            var to = FindSnapshot(volume, toSnapshot, withAllocation: false);
            if (to.Id < from.Id)
                throw new StorageException(StorageError.InvalidArgument, $"snapshot '{toSnapshot}' is older than '{fromSnapshot}'");
        }
        try
        {
            using var image = RbdImage.Open(_catalog, volume, toSnapshot, readOnly: true);
            var extents = new List<ChangedExtent>();
            image.DiffIterate(fromSnapshot, 0, image.Size, includeParent: true, wholeObject: false, (o, l, exists) =>
            {
                extents.Add(new ChangedExtent((long)o, (long)l, exists));
                return true;
            });
            return extents;
        }
        catch (CephException e)
        {
            throw RbdErrors.Map(e, $"diff of '{volume}' since '{fromSnapshot}'");
        }
    }

    // ---- space ----

    /// <summary>
    /// Per volume and snapshot, as <c>rbd du</c> reports it: Allocated = the objects it maps; Unique = what was
    /// written in it since the previous snapshot (the snapshot's own share; for a volume, since its newest snapshot).
    /// </summary>
    public IReadOnlyList<SpaceUsage> GetSpaceUsage()
    {
        var usage = new List<SpaceUsage>();
        foreach (var volume in ListVolumes())
        {
            try
            {
                using var head = RbdImage.Open(_catalog, volume.Name, readOnly: true);
                string? previous = null;
                foreach (var snapshot in head.ListSnapshots())
                {
                    using var at = RbdImage.Open(_catalog, volume.Name, snapshot.Name);
                    usage.Add(Space($"{volume.Name}@{snapshot.Name}", true, at, previous));
                    previous = snapshot.Name;
                }
                usage.Add(Space(volume.Name, false, head, previous));
            }
            catch (CephException e) when (e.Errno == CephException.ENOENT)
            {
                // deleted meanwhile
            }
            catch (CephException e)
            {
                throw RbdErrors.Map(e, $"space of '{volume.Name}'");
            }
        }
        return usage;
    }

    private static SpaceUsage Space(string name, bool isSnapshot, RbdImage image, string? since)
    {
        long allocated = AllocatedBytes(image, includeParent: false);
        long unique = 0;
        image.DiffIterate(since, 0, image.Size, includeParent: false, wholeObject: true, (_, length, exists) =>
        {
            if (exists) unique += (long)length;
            return true;
        });
        unique = Math.Min(unique, allocated);
        return new SpaceUsage(name, isSnapshot, allocated, unique, allocated - unique);
    }

    /// <summary>
    /// DataFileBytes: the cluster's raw capacity; FreeBytes: its raw free space; UsedBytes: what the pool stores
    /// (before replication). Raw and stored differ by the pool's replication factor.
    /// </summary>
    public StoreUsage GetUsage()
    {
        try
        {
            var cluster = _catalogConnection.GetUsage();
            var pool = _catalog.GetUsage();
            var volumes = ListVolumes();
            return new StoreUsage((long)cluster.TotalBytes, (long)pool.StoredBytes, (long)cluster.AvailableBytes, volumes.Count,
                volumes.Sum(v => v.SizeBytes));
        }
        catch (CephException e)
        {
            throw RbdErrors.Map(e, "usage of the Ceph pool");
        }
    }

    /// <summary>
    /// Opens every image and its snapshots, checks each clone's parent is there; with <paramref name="verifyChecksums"/>
    /// reads every allocated range (BlueStore verifies its checksums on each read and fails the read on a mismatch).
    /// </summary>
    public CheckReport Check(bool verifyChecksums)
    {
        var problems = new List<string>();
        int volumes = 0;
        long extents = 0, verifiedBlocks = 0;
        var buffer = GC.AllocateArray<byte>(4 << 20, pinned: true);
        foreach (var name in Catalog(() => RbdImages.List(_catalog), "listing volumes"))
        {
            volumes++;
            try
            {
                using var image = RbdImage.Open(_catalog, name, readOnly: true);
                if (image.GetParent() is { } parent)
                {
                    try
                    {
                        using var origin = RbdImage.Open(_catalog, parent.Image, parent.Snapshot);
                    }
                    catch (CephException e)
                    {
                        problems.Add($"volume '{name}': its origin '{parent.Image}@{parent.Snapshot}' cannot be opened: {e.Message}");
                    }
                }
                var ranges = new List<(ulong, ulong)>();
                image.DiffIterate(null, 0, image.Size, includeParent: false, wholeObject: false, (o, l, exists) =>
                {
                    if (exists) ranges.Add((o, l));
                    return true;
                });
                extents += ranges.Count;
                if (!verifyChecksums) continue;
                foreach (var (offset, length) in ranges)
                {
                    for (ulong done = 0; done < length;)
                    {
                        int chunk = (int)Math.Min((ulong)buffer.Length, length - done);
                        long result = ReadSync(image, offset + done, buffer.AsMemory(0, chunk));
                        if (result < 0)
                        {
                            problems.Add($"volume '{name}': reading {offset + done}+{chunk} failed: {CephException.Describe((int)-result)}");
                            break;
                        }
                        done += (ulong)chunk;
                        verifiedBlocks += chunk / 4096;
                    }
                }
            }
            catch (CephException e)
            {
                problems.Add($"volume '{name}': {e.Message}");
            }
        }
        return new CheckReport(problems, volumes, extents, 0, 0, 0, verifiedBlocks);
    }

    private static unsafe long ReadSync(RbdImage image, ulong offset, Memory<byte> buffer)
    {
        var request = RbdRequest.Rent();
        var pin = buffer.Pin();
        var completion = request.Start(pin);
        try
        {
            image.BeginRead(offset, (byte*)pin.Pointer, (nuint)buffer.Length, completion, RbdOpFlags.FadviseSequential | RbdOpFlags.FadviseDontNeed);
        }
        catch
        {
            request.Abandon(completion);
            throw;
        }
        return request.Task.AsTask().GetAwaiter().GetResult();
    }

    // ---- handles ----

    public IVolumeHandle OpenVolumeHandle(string name)
    {
        ThrowIfInvalidExisting(name);
        ObjectDisposedException.ThrowIf(_disposed, this);
        lock (_openLock)
        {
            if (_open.TryGetValue(name, out var shared) && shared.TryAddReference()) return new RbdVolumeHandle(this, shared);
        }
        // Open outside the lock (it talks to the cluster); a second opener racing here gets InUse from the lock
        // acquisition of the first, so serialize the opening itself per backend.
        lock (_catalogLock)
        {
            lock (_openLock)
            {
                if (_open.TryGetValue(name, out var shared) && shared.TryAddReference()) return new RbdVolumeHandle(this, shared);
            }
            var volume = RbdVolume.OpenWritable(this, name);
            _log.LogInformation("volume {Name} open for writing; holding its exclusive lock as {Address}", name, volume.Address);
            lock (_openLock) _open[name] = volume;
            return new RbdVolumeHandle(this, volume);
        }
    }

    public IVolumeHandle OpenSnapshotHandle(string volume, string snapshot)
    {
        ThrowIfInvalidExisting(volume);
        ThrowIfInvalidExisting(snapshot);
        FindSnapshot(volume, snapshot, withAllocation: false);
        return new RbdVolumeHandle(this, RbdVolume.OpenSnapshot(_catalog, volume, snapshot));
    }

    internal void Release(RbdVolume volume)
    {
        if (!volume.Release()) return;
        lock (_openLock)
        {
            if (_open.TryGetValue(volume.Name, out var current) && current == volume) _open.Remove(volume.Name);
        }
        CloseVolume(volume);
    }

    /// <summary>Disposes a served volume whose last handle is gone, logging what its close could not do.</summary>
    private void CloseVolume(RbdVolume volume)
    {
        try
        {
            volume.Dispose();
            if (volume.ReleaseFailure is { } failure)
                _log.LogWarning("volume {Name} closed without its final flush and unlock (fenced?): {Error}", volume.Name, failure.Message);
        }
        catch (Exception e)
        {
            _log.LogWarning("closing volume {Name}: {Error}", volume.Name, e.Message);
        }
    }

    /// <summary>
    /// Removes an image. A volume served here a moment ago keeps its header watch until its deferred close
    /// (DeferredImageClose), which rbd_remove refuses with EBUSY: after waiting for those closes it tries once more,
    /// and EBUSY then means a watcher elsewhere.
    /// </summary>
    private void RemoveImage(string name)
    {
        try
        {
            RbdImages.Remove(_catalog, name);
        }
        catch (CephException e) when (e.Errno == CephException.EBUSY)
        {
            RbdImage.WaitForDeferredCloses();
            RbdImages.Remove(_catalog, name);
        }
    }

    private bool IsOpenHere(string name)
    {
        lock (_openLock) return _open.ContainsKey(name);
    }

    private void CloseOpen(string name)
    {
        RbdVolume? volume;
        lock (_openLock)
        {
            if (!_open.Remove(name, out volume)) return;
        }
        volume.MarkClosed();
        // The image stays open until its last handle goes (Release disposes it); a request in flight finishes.
        if (volume.Release()) CloseVolume(volume);
    }

    /// <summary>The image and its ancestors (each parent opened at the snapshot the child was cloned from).</summary>
    internal List<RbdImage> Lineage(RbdImage image)
    {
        var layers = new List<RbdImage> { image };
        var current = image;
        try
        {
            // Bounded: RBD limits clone chains (rbd_max_clone_depth? no: deep chains are legal); 64 is far beyond use.
            for (int depth = 0; depth < 64 && current.GetParent() is { } parent; depth++)
            {
                current = RbdImage.Open(_catalog, parent.Image, parent.Snapshot);
                layers.Add(current);
            }
        }
        catch
        {
            foreach (var layer in layers.Skip(1)) layer.Dispose();
            throw;
        }
        return layers;
    }

    public async ValueTask FlushAsync(CancellationToken cancellationToken = default)
    {
        RbdVolume[] volumes;
        lock (_openLock) volumes = [.. _open.Values];
        foreach (var volume in volumes)
        {
            if (volume.IsClosed) continue;
            await volume.StartFlush(inline: false).Checked(volume.Name, "flush").ConfigureAwait(false);
        }
    }

    // ---- metadata ----

    /// <summary>An image-metadata value (<c>rbd image-meta get</c>), or null when unset.</summary>
    public string? GetVolumeMetadata(string name, string key)
    {
        VolumeNames.ThrowIfInvalid(name);
        return WithImage(name, image => image.GetMetadata(key), $"reading metadata '{key}' of volume '{name}'");
    }

    /// <summary>
    /// Sets (or with null removes) an image-metadata value. Through this server's open image when it serves the
    /// volume; else librbd forwards the change to the lock holder, or takes the lock for it when nobody holds it.
    /// </summary>
    public void SetVolumeMetadata(string name, string key, string? value)
    {
        VolumeNames.ThrowIfInvalid(name);
        WithWritableImage(name, image =>
        {
            if (value is not null) image.SetMetadata(key, value);
            else image.RemoveMetadata(key); // absent already: fine
        }, $"setting metadata '{key}' of volume '{name}'");
    }

    // ---- takeover ----

    /// <summary>
    /// Breaks the exclusive lock on <paramref name="name"/> held by another client and blocklists that client, so a
    /// hung holder that wakes up can never write to the image again. Returns the fenced holder's description, or null
    /// when nobody held the lock.
    /// </summary>
    public string? TakeOverVolume(string name)
    {
        ThrowIfInvalidExisting(name);
        lock (_catalogLock)
        {
            if (IsOpenHere(name)) throw new StorageException(StorageError.InvalidArgument, $"volume '{name}' is already served by this server");
            try
            {
                using var image = RbdImage.Open(_catalog, name);
                var owners = image.GetLockOwners();
                if (owners.Count == 0) return null;
                string holder = DescribeHolder(image);
                foreach (var owner in owners)
                {
                    image.BreakExclusiveLock(owner); // blocklists the owner first (rbd_blocklist_on_break_lock)
                    _log.LogWarning("volume {Name} taken over: broke the lock of {Holder} and blocklisted it", name, holder);
                }
                return holder;
            }
            catch (CephException e)
            {
                throw RbdErrors.Map(e, $"taking volume '{name}' over");
            }
        }
    }

    /// <summary>Who holds an image's lock, for messages: the Platter server's own note when it matches, else the address.</summary>
    internal string DescribeHolder(RbdImage image)
    {
        try
        {
            var owners = image.GetLockOwners();
            if (owners.Count == 0) return "no holder (the lock was just released)";
            string address = owners[0];
            string? note = image.GetMetadata(HolderKey);
            return note != null && note.EndsWith(address, StringComparison.Ordinal)
                ? $"held by {note.Replace(" pid ", " (pid ").Replace(" " + address, $", client {address})")}"
                : $"held by client {address}";
        }
        catch (CephException e)
        {
            return $"holder unknown ({e.Message})";
        }
    }

    // ---- helpers ----

    /// <summary>Runs an action on the volume's image: the one open here when it is served, else a read-only open.</summary>
    private T WithImage<T>(string name, Func<RbdImage, T> action, string what)
    {
        try
        {
            using var image = RbdImage.Open(_catalog, name, readOnly: true);
            return action(image);
        }
        catch (CephException e) when (e.Errno == CephException.ENOENT)
        {
            throw new StorageException(StorageError.NotFound, $"no volume named '{name}'", e);
        }
        catch (CephException e)
        {
            throw RbdErrors.Map(e, what);
        }
    }

    /// <summary>
    /// Runs a change that needs the exclusive lock. When this server serves the volume it holds the lock, so the
    /// change goes through its open image; otherwise through a fresh open on the catalog connection (librbd takes the
    /// lock for the change, or forwards it to the holder; a holder with the standard policy refuses: InUse).
    /// </summary>
    private void WithWritableImage(string name, Action<RbdImage> action, string what)
    {
        RbdVolume? served = null;
        lock (_openLock)
        {
            if (_open.TryGetValue(name, out var v) && v.TryAddReference()) served = v;
        }
        try
        {
            if (served != null)
            {
                action(served.Image);
                return;
            }
            using var image = RbdImage.Open(_catalog, name);
            action(image);
        }
        catch (CephException e) when (e.Errno == CephException.ENOENT)
        {
            throw new StorageException(StorageError.NotFound, $"{what}: not found", e);
        }
        catch (CephException e) when (e.Errno is CephException.EROFS)
        {
            throw new StorageException(StorageError.InUse, $"{what}: the volume is served by another server that holds its exclusive lock", e);
        }
        catch (CephException e)
        {
            throw RbdErrors.Map(e, what);
        }
        finally
        {
            if (served != null) Release(served);
        }
    }

    private static T Catalog<T>(Func<T> action, string what)
    {
        try
        {
            return action();
        }
        catch (CephException e)
        {
            throw RbdErrors.Map(e, what);
        }
    }

    private static void Catalog(Action action, string what, params (int Errno, StorageError Error, string Message)[] known)
    {
        try
        {
            action();
        }
        catch (CephException e)
        {
            foreach (var (errno, error, message) in known)
            {
                if (e.Errno == errno) throw new StorageException(error, message, e);
            }
            throw RbdErrors.Map(e, what);
        }
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        RbdVolume[] volumes;
        lock (_openLock)
        {
            volumes = [.. _open.Values];
            _open.Clear();
        }
        foreach (var volume in volumes)
        {
            volume.MarkClosed();
            CloseVolume(volume);
        }
        // Read-only images are closed late (DeferredImageClose); close them before their pool and connection go.
        RbdImage.WaitForDeferredCloses();
        _catalog.Dispose();
        _catalogConnection.Dispose();
    }
}
