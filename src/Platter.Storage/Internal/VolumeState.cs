namespace Platter.Storage.Internal;

/// <summary>
/// Everything the engine keeps in memory for one volume: its catalog entry, its block map, the operations not yet
/// journaled and the physical blocks those operations unmapped. <see cref="Lock"/> guards the map, the pending
/// operations and the freed list together, so the order of map updates is the order of the journal.
/// </summary>
internal sealed class VolumeState(long id, string name, long sizeBytes, DateTimeOffset created)
{
    public readonly long Id = id;
    public string Name = name;
    public long SizeBytes = sizeBytes;
    public readonly DateTimeOffset Created = created;

    public readonly object Lock = new();
    public readonly BlockMap Map = new();
    public readonly OpLog PendingOps = new(1024);
    public readonly List<long> PendingFrees = new();

    /// <summary>Set once the volume is deleted: every later I/O fails with Closed.</summary>
    public volatile bool Deleted;

    /// <summary>Guards the allocation region: space reserved for this volume's next writes, kept contiguous.</summary>
    public readonly object RegionLock = new();
    public long RegionNext;
    public long RegionEnd;

    /// <summary>Serialises read-modify-write of partial blocks that hash to the same stripe.</summary>
    public readonly object[] RmwLocks = CreateStripes();

    public long SizeBlocks => (SizeBytes + Layout.BlockBytes - 1) >> Layout.BlockShift;

    private static object[] CreateStripes()
    {
        var stripes = new object[Layout.RmwLockStripes];
        for (int i = 0; i < stripes.Length; i++) stripes[i] = new object();
        return stripes;
    }

    public VolumeInfo ToInfo()
    {
        lock (Lock) return new VolumeInfo(Id, Name, SizeBytes, Map.MappedBlocks * Layout.BlockBytes, Created);
    }
}
