using Platter.Storage.Devices;

namespace Platter.Storage.Internal;

/// <summary>The consistency check of a whole store (see <see cref="VolumeStore.Check"/>).</summary>
internal static class StoreCheck
{
    private const int ProblemsMax = 100;

    /// <summary>
    /// Checks the store's consistency: the durable catalog and layers rebuild exactly the versions (volumes and
    /// snapshots) in memory; every record lies inside the data file; no physical block is referenced by two unrelated
    /// versions; free + referenced (+ reserved, + awaiting reuse) = total. With <paramref name="verifyChecksums"/>
    /// every referenced block is read and its CRC compared. Waits for background reclaims, commits and checkpoints
    /// first; run it on an idle store (the CLI runs it offline).
    /// </summary>
    public static CheckReport Run(MetadataStore metadata, List<VolumeState> volumes, Space space, IDataDevice data, bool verifyChecksums)
    {
        var problems = new List<string>();
        void Problem(string text)
        {
            if (problems.Count < ProblemsMax) problems.Add(text);
            else if (problems.Count == ProblemsMax) problems.Add("... more problems not listed");
        }

        long totalBlocks = space.TotalBlocks;
        long records = 0;

        // 1. The durable form rebuilds the same versions.
        using (var view = metadata.OpenView())
        {
            var layers = new HashSet<long>();
            try
            {
                var durable = Catalog.Load(view);
                foreach (var v in volumes)
                {
                    if (!durable.Volumes.TryGetValue(v.Id, out var d))
                    {
                        Problem($"volume '{v.Name}' is not in the durable catalog");
                        continue;
                    }
                    if (d.Name != v.Name || d.SizeBytes != v.SizeBytes || d.LayerId != v.LayerId)
                        Problem($"volume '{v.Name}': durable catalog says name '{d.Name}', size {d.SizeBytes}, layer {d.LayerId}; memory says {v.SizeBytes}, layer {v.LayerId}");
                    CompareMaps(v.Name, d.Map, v, Problem);
                    List<SnapshotState> snaps;
                    lock (v.Lock) snaps = [.. v.Snapshots];
                    if (!snaps.Select(s => (s.Id, s.Name, s.LayerId)).SequenceEqual(d.Snapshots.Select(s => (s.Id, s.Name, s.LayerId))))
                        Problem($"volume '{v.Name}': durable snapshots [{string.Join(", ", d.Snapshots.Select(s => s.Name))}] differ from memory [{string.Join(", ", snaps.Select(s => s.Name))}]");
                    else
                        for (int i = 0; i < snaps.Count; i++) CompareMaps(snaps[i].DisplayName, d.Snapshots[i].Map, snaps[i], Problem);
                }
                foreach (var d in durable.Volumes.Values)
                {
                    if (!volumes.Any(v => v.Id == d.Id)) Problem($"the durable catalog holds volume '{d.Name}' ({d.Id}), which memory does not");
                    layers.Add(d.LayerId);
                    foreach (var s in d.Snapshots) layers.Add(s.LayerId);
                }
            }
            catch (StorageException e)
            {
                Problem($"the durable catalog cannot be loaded: {e.Message}");
            }
            view.VisitAll((layer, block, count, pba, _, _) =>
            {
                records++;
                if (!layers.Contains(layer)) Problem($"extent record at block {block} belongs to layer {layer}, which no volume or snapshot owns");
                if (pba != MetadataStore.TombstonePba && (pba < 0 || pba + count > totalBlocks))
                    Problem($"layer {layer}: extent at block {block} points at physical [{pba}, {pba + count}), outside the data file ({totalBlocks} blocks)");
            });
        }

        // 2. Physical space: each referenced block once, none of them free, and everything adds up.
        var used = Versions.ReferencedEntries(volumes);
        used.Sort((a, b) => a.Pba.CompareTo(b.Pba));
        for (int i = 1; i < used.Count; i++)
        {
            if (used[i].Pba == used[i - 1].Pba)
                Problem($"physical block {used[i].Pba} is mapped by '{used[i - 1].Owner}' block {used[i - 1].Block} and by '{used[i].Owner}' block {used[i].Block}");
        }
        var (free, quarantined, reserved) = space.AccountingSnapshot();
        long freeBlocks = 0;
        int u = 0;
        foreach (var (start, length) in free)
        {
            freeBlocks += length;
            while (u < used.Count && used[u].Pba < start) u++;
            if (u < used.Count && used[u].Pba < start + length)
                Problem($"physical block {used[u].Pba} is free but '{used[u].Owner}' maps it at block {used[u].Block}");
        }
        if (used.Count + freeBlocks + reserved + quarantined != totalBlocks)
            Problem($"space does not add up: {used.Count} referenced + {freeBlocks} free + {reserved} reserved + {quarantined} awaiting reuse != {totalBlocks} total blocks");
        if (space.ReferencedBlocks != used.Count)
            Problem($"the store counts {space.ReferencedBlocks} referenced blocks but the maps reference {used.Count}");

        long verified = 0;
        if (verifyChecksums)
        {
            var buffer = new byte[EngineLimits.BlockBytes];
            foreach (var (pba, crc, owner, block) in used)
            {
                if (pba >= totalBlocks) continue;
                data.Read(pba << EngineLimits.BlockShift, buffer);
                verified++;
                if (Crc32C.Compute(buffer) != crc)
                    Problem($"'{owner}': checksum mismatch at offset {block << EngineLimits.BlockShift} (physical block {pba})");
            }
        }
        return new CheckReport(problems, volumes.Count, records, used.Count, freeBlocks, totalBlocks, verified);
    }

    private static void CompareMaps(string name, MapTree durable, MapOwner live, Action<string> problem)
    {
        MapTree liveMap;
        lock (live.Lock) liveMap = live is VolumeState v ? v.Map.Snapshot() : live.Map;
        long differing = 0, first = -1;
        MapTree.Diff(durable, liveMap, 0, long.MaxValue, (block, _, _) =>
        {
            if (differing++ == 0) first = block;
        });
        if (differing > 0) problem($"'{name}': {differing} blocks differ between the durable map and memory (first at block {first})");
        long sizeBlocks = live.SizeBlocks;
        if (liveMap.NextMapped(sizeBlocks, long.MaxValue) is var past and >= 0)
            problem($"'{name}': block {past} is mapped past the end ({sizeBlocks} blocks)");
    }
}
