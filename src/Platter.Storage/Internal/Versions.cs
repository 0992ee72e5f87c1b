namespace Platter.Storage.Internal;

/// <summary>
/// Walks over versions (volumes and snapshots). Every version of a volume is a MapTree sharing unchanged nodes with
/// the others (decision 0005), so these compare neighbouring versions rather than whole maps. Stateless: callers
/// hand in the maps (frozen when writes may go on).
/// </summary>
internal static class Versions
{
    /// <summary>
    /// Along a chain of versions, each derived from the one before (the first may be null: empty), reports each
    /// version's additions over the one before: the blocks it maps that its predecessor does not map there, with the
    /// index of the version in the chain. Versions share blocks only along their lineage, so no version before it in
    /// the chain references such a block: this is how reclaim finds what a dropped chain held alone, and how
    /// recovery and the check list every referenced block exactly once.
    /// </summary>
    public static void VisitAdditions(IReadOnlyList<MapTree?> chain, Action<int, long, BlockEntry> visit)
    {
        for (int i = 1; i < chain.Count; i++)
        {
            int version = i;
            MapTree.Diff(chain[i - 1], chain[i], 0, long.MaxValue, (block, _, newer) =>
            {
                if (newer.IsMapped) visit(version, block, newer);
            });
        }
    }

    /// <summary>
    /// A volume's lineage as maps: its origin snapshot's (or null), its snapshots' oldest first, then its own; and the
    /// versions they belong to (Versions[i] owns Maps[i + 1]). With <paramref name="freezeVolume"/> the volume's map
    /// is a frozen view, for callers that walk it while writes may go on.
    /// </summary>
    public static (List<MapTree?> Maps, List<MapOwner> Versions) Lineage(VolumeState volume, bool freezeVolume)
    {
        lock (volume.Lock)
        {
            var maps = new List<MapTree?> { volume.Origin?.Map };
            maps.AddRange(volume.Snapshots.Select(s => s.Map));
            maps.Add(freezeVolume ? volume.Map.Snapshot() : volume.Map);
            return (maps, [.. volume.Snapshots, volume]);
        }
    }

    /// <summary>
    /// Adds every physical block the volume's versions reference, each once, with the layer that first maps it
    /// (verification at open), as runs: consecutive blocks of one layer at consecutive physical blocks are one entry.
    /// </summary>
    public static void ReferencedBlocks(VolumeState volume, List<PbaRun> used)
    {
        var (maps, versions) = Lineage(volume, freezeVolume: false);
        for (int i = 1; i < maps.Count; i++)
        {
            long layer = versions[i - 1] switch
            {
                VolumeState v => v.LayerId,
                SnapshotState s => s.LayerId,
                _ => 0,
            };
            MapTree.AddedRuns(maps[i - 1], maps[i], (_, pba, count) =>
            {
                if (used.Count > 0 && used[^1] is var last && last.Layer == layer && last.Pba + last.Length == pba)
                    used[^1] = last with { Length = last.Length + count };
                else
                    used.Add(new PbaRun(pba, count, layer));
            });
        }
    }

    /// <summary>Like <see cref="ReferencedBlocks"/> but per block, with each block's CRC and the version and block that first map it.</summary>
    public static List<(long Pba, uint Crc, string Owner, long Block)> ReferencedEntries(IEnumerable<VolumeState> volumes)
    {
        var used = new List<(long, uint, string, long)>();
        foreach (var v in volumes)
        {
            var (maps, versions) = Lineage(v, freezeVolume: true);
            VisitAdditions(maps, (i, block, entry) => used.Add((entry.Pba, entry.Crc, versions[i - 1].DisplayName, block)));
        }
        return used;
    }

    /// <summary>Ranges whose content differs between two maps of one lineage, in offset order, coalesced.</summary>
    public static List<ChangedExtent> Diff(MapTree from, MapTree to, long endBlock)
    {
        var runs = new List<ChangedExtent>();
        MapTree.Diff(from, to, 0, endBlock, (block, _, newer) =>
        {
            long offset = block << EngineLimits.BlockShift;
            if (runs.Count > 0 && runs[^1].Offset + runs[^1].Length == offset && runs[^1].Allocated == newer.IsMapped)
                runs[^1] = runs[^1] with { Length = runs[^1].Length + EngineLimits.BlockBytes };
            else
                runs.Add(new ChangedExtent(offset, EngineLimits.BlockBytes, newer.IsMapped));
        });
        return runs;
    }

    /// <summary>Per volume and snapshot of <paramref name="volumes"/>: bytes held alone and bytes shared.</summary>
    public static List<SpaceUsage> SpaceUsage(IReadOnlyList<VolumeState> volumes)
    {
        // Frozen views of every version, so the comparisons see a stable picture while writes go on.
        var versions = new Dictionary<MapOwner, MapTree>();
        var chains = new Dictionary<VolumeState, List<MapOwner>>();
        foreach (var v in volumes)
        {
            lock (v.Lock)
            {
                var chain = new List<MapOwner>(v.Snapshots) { v };
                foreach (var s in v.Snapshots) versions[s] = s.Map;
                versions[v] = v.Map.Snapshot();
                chains[v] = chain;
            }
        }
        var children = new Dictionary<MapOwner, List<MapOwner>>();
        var parents = new Dictionary<MapOwner, MapOwner?>();
        foreach (var (v, chain) in chains)
        {
            for (int i = 0; i < chain.Count; i++)
            {
                MapOwner? parent = i > 0 ? chain[i - 1] : v.Origin;
                parents[chain[i]] = parent;
                if (parent is not null)
                {
                    if (!children.TryGetValue(parent, out var list)) children[parent] = list = new();
                    list.Add(chain[i]);
                }
            }
        }
        var result = new List<SpaceUsage>();
        foreach (var v in volumes.OrderBy(v => v.Name, StringComparer.Ordinal))
        {
            foreach (var version in chains[v])
            {
                var map = versions[version];
                var parent = parents[version];
                var parentMap = parent is not null && versions.TryGetValue(parent, out var pm) ? pm : null;
                var childMaps = children.GetValueOrDefault(version)?.Where(versions.ContainsKey).Select(c => versions[c]).ToList() ?? [];
                long unique = 0;
                MapTree.Diff(parentMap, map, 0, long.MaxValue, (block, _, newer) =>
                {
                    if (!newer.IsMapped) return;
                    foreach (var c in childMaps)
                        if (c.Get(block).PbaPlusOne == newer.PbaPlusOne) return;
                    unique++;
                });
                long allocated = map.MappedBlocks;
                result.Add(new SpaceUsage(version.DisplayName, version is SnapshotState, allocated * EngineLimits.BlockBytes,
                    unique * EngineLimits.BlockBytes, (allocated - unique) * EngineLimits.BlockBytes));
            }
        }
        return result;
    }
}

/// <summary>Physical blocks [<see cref="Pba"/>, +<see cref="Length"/>) first referenced by <see cref="Layer"/>.</summary>
internal readonly record struct PbaRun(long Pba, long Length, long Layer);
