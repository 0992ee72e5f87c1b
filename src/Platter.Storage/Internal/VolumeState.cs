namespace Platter.Storage.Internal;

/// <summary>What reads need from a volume or a snapshot: its map, a lock guarding it, a size and a name.</summary>
internal abstract class MapOwner
{
    /// <summary>Guards <see cref="Map"/> (for a volume also its pending operations); a frozen map needs it only to read the reference.</summary>
    public readonly object Lock = new();
    public MapTree Map;
    public long SizeBytes;
    public readonly DateTimeOffset Created;

    /// <summary>Set once deleted: every later I/O fails with Closed.</summary>
    public volatile bool Deleted;

    protected MapOwner(MapTree map, long sizeBytes, DateTimeOffset created)
    {
        Map = map;
        SizeBytes = sizeBytes;
        Created = created;
    }

    public long SizeBlocks => (Volatile.Read(ref SizeBytes) + EngineLimits.BlockBytes - 1) >> EngineLimits.BlockShift;

    /// <summary>The name users see: <c>volume</c> or <c>volume@snapshot</c>.</summary>
    public abstract string DisplayName { get; }

    /// <summary>The version this one was derived from (its content at creation): a snapshot, or null for a new volume.</summary>
    public abstract SnapshotState? Parent { get; }

}

/// <summary>
/// Everything the engine keeps in memory for one volume: its catalog entry, its (mutable) block map, the operations
/// not yet journaled and the physical blocks those operations freed, and its snapshots. <see cref="MapOwner.Lock"/>
/// guards the map, the pending operations, the freed list and the snapshot chain together, so the order of map
/// updates is the order of the journal.
/// </summary>
internal sealed class VolumeState(long id, string name, long sizeBytes, DateTimeOffset created, long layerId, SnapshotState? origin)
    : MapOwner(new MapTree(), sizeBytes, created)
{
    public readonly long Id = id;
    public string Name = name;

    /// <summary>The durable layer the volume's writes go to (extent records keyed by it); changes on snapshot, rollback, merge.</summary>
    public long LayerId = layerId;

    /// <summary>
    /// The snapshot this volume was cloned from, or null (a snapshot's origin is its volume's). Set to null only by
    /// flatten, under the catalog's lock and this volume's <see cref="MapOwner.Lock"/>.
    /// </summary>
    public SnapshotState? Origin = origin;

    /// <summary>A flatten is copying this volume's inherited blocks (guarded by the catalog's lock): a second is refused.</summary>
    public bool Flattening;

    /// <summary>The volume's snapshots, oldest first: each one's parent is the one before (the first's is the origin).</summary>
    public readonly List<SnapshotState> Snapshots = new();

    public readonly OpLog PendingOps = new(1024);
    public readonly List<long> PendingFrees = new();

    /// <summary>
    /// Blocks of new space the pending operations mapped (writes, flatten's copies, relocations; guarded by
    /// <see cref="Lock"/>), gathered with them: the commit round that frees what they replaced knows exactly how much
    /// it wrote, which decides whether its frees stay warm (<see cref="EngineLimits.WarmFreeBlocksMax"/>).
    /// </summary>
    public long PendingMappedBlocks;

    /// <summary>Appends to <see cref="PendingOps"/> copied to the pending-operation ring so far in this process (<see cref="PendingRing"/>).</summary>
    public long RingNumber;

    /// <summary>An append did not fit the ring: nothing more is copied until the pending operations are gathered.</summary>
    public bool RingBroken;

    /// <summary>Space reserved for this volume's next writes, kept contiguous (used by <see cref="Space"/> only).</summary>
    public readonly Region Region = new();

    /// <summary>Serialises read-modify-write of partial blocks that hash to the same stripe.</summary>
    public readonly object[] RmwLocks = CreateStripes();

    public override string DisplayName => Name;
    public override SnapshotState? Parent => Snapshots.Count > 0 ? Snapshots[^1] : Origin;

    private static object[] CreateStripes()
    {
        var stripes = new object[EngineLimits.RmwLockStripes];
        for (int i = 0; i < stripes.Length; i++) stripes[i] = new object();
        return stripes;
    }

    public VolumeInfo ToInfo()
    {
        lock (Lock)
        {
            return new VolumeInfo(Id, Name, SizeBytes, Map.MappedBlocks * EngineLimits.BlockBytes, Created)
            {
                Origin = Origin?.DisplayName,
                SnapshotCount = Snapshots.Count,
            };
        }
    }
}

/// <summary>A snapshot: a frozen map of a volume, its durable identity and the clones that depend on it.</summary>
internal sealed class SnapshotState(long id, string name, VolumeState volume, MapTree frozenMap, long sizeBytes, DateTimeOffset created, long layerId)
    : MapOwner(frozenMap, sizeBytes, created)
{
    public readonly long Id = id;
    public readonly string Name = name;
    public readonly VolumeState Volume = volume;

    /// <summary>The durable layer holding what this snapshot changed relative to its parent.</summary>
    public long LayerId = layerId;

    /// <summary>Volumes cloned from this snapshot (guarded by the store's catalog lock).</summary>
    public readonly List<VolumeState> Clones = new();

    public override string DisplayName => $"{Volume.Name}@{Name}";

    public override SnapshotState? Parent
    {
        get
        {
            int i = Volume.Snapshots.IndexOf(this);
            return i > 0 ? Volume.Snapshots[i - 1] : Volume.Origin;
        }
    }


    /// <summary>The version derived from this one in its own volume: the next snapshot, or the volume itself.</summary>
    public MapOwner Child
    {
        get
        {
            int i = Volume.Snapshots.IndexOf(this);
            return i >= 0 && i + 1 < Volume.Snapshots.Count ? Volume.Snapshots[i + 1] : Volume;
        }
    }
}
