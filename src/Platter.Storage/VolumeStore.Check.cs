using Platter.Storage.Internal;

namespace Platter.Storage;

/// <summary>What <see cref="VolumeStore.Check"/> found: one line per inconsistency in Problems (empty when consistent) and counts.</summary>
public sealed record CheckReport(
    IReadOnlyList<string> Problems, int Volumes, long ExtentRecords, long MappedBlocks, long FreeBlocks, long TotalBlocks, long BlocksVerified)
{
    public bool Ok => Problems.Count == 0;
}

public sealed partial class VolumeStore
{
    private const int ProblemsMax = 100;

    /// <summary>
    /// Checks the store's consistency: every durable extent belongs to a volume and lies inside it and inside the
    /// data file; no physical block is mapped twice; the durable map equals the in-memory one; free + used = total.
    /// With <paramref name="verifyChecksums"/> every mapped block is read and its CRC compared. Commits and
    /// checkpoints first; run it on an idle store (the CLI runs it offline).
    /// </summary>
    public CheckReport Check(bool verifyChecksums)
    {
        ThrowIfDisposed();
        Checkpoint();
        var problems = new List<string>();
        void Problem(string text)
        {
            if (problems.Count < ProblemsMax) problems.Add(text);
            else if (problems.Count == ProblemsMax) problems.Add("... more problems not listed");
        }

        List<VolumeState> volumes;
        lock (_catalogLock) volumes = [.. _byId.Values];
        var byId = volumes.ToDictionary(v => v.Id);
        long totalBlocks = _allocator.TotalBlocks;
        var physical = new List<(long Pba, int Count, long VolumeId, long Block)>();
        var durableMapped = new Dictionary<long, long>();
        long records = 0, verified = 0;
        var buffer = new byte[Layout.BlockBytes];

        _metadata.VisitExtents((volumeId, block, count, pba, _, crcs) =>
        {
            records++;
            if (!byId.TryGetValue(volumeId, out var state))
            {
                Problem($"extent at block {block} belongs to volume {volumeId}, which does not exist");
                return;
            }
            if (block + count > state.SizeBlocks)
                Problem($"volume '{state.Name}': extent [{block}, {block + count}) lies past the end ({state.SizeBlocks} blocks)");
            if (pba < 0 || pba + count > totalBlocks)
                Problem($"volume '{state.Name}': extent at block {block} points at physical [{pba}, {pba + count}), outside the data file ({totalBlocks} blocks)");
            physical.Add((pba, count, volumeId, block));
            durableMapped[volumeId] = durableMapped.GetValueOrDefault(volumeId) + count;
            lock (state.Lock)
            {
                for (int i = 0; i < count; i++)
                {
                    var entry = state.Map.Get(block + i);
                    uint crc = System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(crcs[(4 * i)..]);
                    if (!entry.IsMapped || entry.Pba != pba + i || entry.Crc != crc)
                    {
                        Problem($"volume '{state.Name}': block {block + i} differs between the durable map and memory");
                        break;
                    }
                }
            }
            if (verifyChecksums && pba >= 0 && pba + count <= totalBlocks)
            {
                for (int i = 0; i < count; i++)
                {
                    _data.Read((pba + i) << Layout.BlockShift, buffer);
                    verified++;
                    uint crc = System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(crcs[(4 * i)..]);
                    if (Crc32C.Compute(buffer) != crc)
                        Problem($"volume '{state.Name}': checksum mismatch at offset {(block + i) << Layout.BlockShift} (physical block {pba + i})");
                }
            }
        });

        long mapped = 0;
        foreach (var v in volumes)
        {
            long inMemory;
            lock (v.Lock) inMemory = v.Map.MappedBlocks;
            mapped += inMemory;
            if (durableMapped.GetValueOrDefault(v.Id) != inMemory)
                Problem($"volume '{v.Name}': {durableMapped.GetValueOrDefault(v.Id)} blocks mapped durably but {inMemory} in memory");
        }

        // No physical block mapped twice, and none of them free.
        physical.Sort((a, b) => a.Pba.CompareTo(b.Pba));
        for (int i = 1; i < physical.Count; i++)
        {
            var (p, c, vol, blk) = physical[i - 1];
            if (p + c > physical[i].Pba)
                Problem($"physical block {physical[i].Pba} is mapped twice (volume {vol} block {blk} and volume {physical[i].VolumeId} block {physical[i].Block})");
        }
        List<(long Start, long Length)> free;
        long quarantined;
        lock (_spaceAccountingLock)
        {
            free = _allocator.Snapshot();
            quarantined = _quarantinedBlocks;
        }
        long freeBlocks = 0;
        int u = 0;
        foreach (var (start, length) in free)
        {
            freeBlocks += length;
            while (u < physical.Count && physical[u].Pba + physical[u].Count <= start) u++;
            if (u < physical.Count && physical[u].Pba < start + length)
                Problem($"physical blocks [{start}, {start + length}) are free but volume {physical[u].VolumeId} maps block {physical[u].Pba}");
        }

        // Space between "used" and "free": volumes' reserved regions and blocks waiting in quarantine.
        long reserved = 0;
        foreach (var v in volumes)
            lock (v.RegionLock) reserved += v.RegionEnd - v.RegionNext;
        if (mapped + freeBlocks + reserved + quarantined != totalBlocks)
            Problem($"space does not add up: {mapped} mapped + {freeBlocks} free + {reserved} reserved + {quarantined} awaiting reuse != {totalBlocks} total blocks");

        return new CheckReport(problems, volumes.Count, records, mapped, freeBlocks, totalBlocks, verified);
    }
}
