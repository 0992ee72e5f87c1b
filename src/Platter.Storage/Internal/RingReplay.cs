using Microsoft.Extensions.Logging;
using Platter.Storage.Devices;

namespace Platter.Storage.Internal;

/// <summary>
/// Applies, at open, the operations the pending-operation ring (<see cref="PendingRing"/>) holds that no durable
/// journal record covers: the writes a crashed process had acknowledged but not yet committed.
///
/// Per volume, its records after the newest mark whose journal record is durable, in their order, with no gap; the
/// first record that does not hold up stops that volume's replay (what came after it is dropped, as it was before the
/// ring existed, and logged), so a volume never gets a later write without an earlier one. A record holds up when
/// every operation in it names the volume's own layer or the volume, stays inside the volume and the data area, and
/// every block it maps reads back with its CRC (the ring is only trusted within one boot, where the page cache holds
/// the data it points to; the check guards against everything else). A record applies whole or not at all.
/// </summary>
internal static class RingReplay
{
    /// <summary>What was applied, as one journal batch's payload (empty when nothing was), and a line for the log.</summary>
    public sealed record Result(OpLog Applied, int Records, int Volumes, int Dropped);

    public static Result Apply(Catalog catalog, PendingRing.Contents contents, long durableSequence, IDataDevice data, ref long nextId, ILogger logger)
    {
        var applied = new OpLog(4096);
        var covered = new Dictionary<long, long>();
        foreach (var mark in contents.Marks)
            if (mark.Sequence <= durableSequence && mark.Number > covered.GetValueOrDefault(mark.VolumeId))
                covered[mark.VolumeId] = mark.Number;
        int records = 0, volumes = 0, dropped = 0;
        long dataBlocks = data.Length >> EngineLimits.BlockShift;
        var buffer = new byte[EngineLimits.ExtentBlocksMax * EngineLimits.BlockBytes];
        foreach (var group in contents.Records.GroupBy(r => r.VolumeId).OrderBy(g => g.Key))
        {
            long after = covered.GetValueOrDefault(group.Key);
            var pending = group.Where(r => r.Number > after).OrderBy(r => r.Number).ToList();
            if (pending.Count == 0) continue;
            if (!catalog.Volumes.TryGetValue(group.Key, out var volume))
            {
                logger.LogWarning("The pending-operation ring holds {Records} records of volume id {Volume}, which the store no longer holds: not replayed",
                    pending.Count, group.Key);
                dropped += pending.Count;
                continue;
            }
            // With a mark the next record is known; without one every earlier record was reclaimed, so committed.
            long expected = covered.ContainsKey(group.Key) ? after + 1 : pending[0].Number;
            int done = 0;
            string? stop = null;
            foreach (var record in pending)
            {
                if (record.Number != expected)
                {
                    stop = $"record {expected} is missing (the crash interrupted its copy)";
                    break;
                }
                stop = Check(catalog, volume, record.Ops, data, dataBlocks, buffer);
                if (stop is not null) break;
                try
                {
                    var reader = new OpReader(record.Ops);
                    while (reader.TryRead(out var op)) catalog.Replay(op, ref nextId);
                }
                catch (Exception e) when (e is StorageException or InvalidDataException or ArgumentException)
                {
                    // Check() accepted it, so this is a bug, and the volume may be half changed: open refuses it after
                    // verification and opens again without the ring (see Recovery).
                    stop = $"record {record.Number} did not apply ({e.Message})";
                    break;
                }
                applied.Append(record.Ops);
                expected++;
                done++;
            }
            if (done > 0) volumes++;
            records += done;
            if (stop is not null)
            {
                dropped += pending.Count - done;
                logger.LogWarning("Volume '{Volume}': replayed {Done} of the {Records} acknowledged operations the crash left uncommitted; " +
                    "the rest were dropped because {Reason}", volume.Name, done, pending.Count, stop);
            }
        }
        return new Result(applied, records, volumes, dropped);
    }

    // Null when the record may be applied, else why not.
    private static string? Check(Catalog catalog, VolumeState volume, byte[] ops, IDataDevice data, long dataBlocks, byte[] buffer)
    {
        try
        {
            var reader = new OpReader(ops);
            while (reader.TryRead(out var op))
            {
                switch (op.Kind)
                {
                    case OpKind.MapExtent:
                    {
                        if (op.LayerId != volume.LayerId) return $"it writes to layer {op.LayerId}, not the volume's {volume.LayerId}";
                        if (op.Block < 0 || op.Block + op.Count > volume.SizeBlocks) return $"it maps blocks {op.Block}+{op.Count} outside the volume";
                        if (op.Pba < 0 || op.Pba + op.Count > dataBlocks) return $"it maps physical blocks {op.Pba}+{op.Count} outside the data area";
                        var span = buffer.AsSpan(0, (int)op.Count << EngineLimits.BlockShift);
                        data.Read(op.Pba << EngineLimits.BlockShift, span);
                        for (int i = 0; i < op.Count; i++)
                            if (Crc32C.Compute(span.Slice(i << EngineLimits.BlockShift, EngineLimits.BlockBytes)) != op.Crc(i))
                                return $"the data of block {op.Block + i} (physical {op.Pba + i}) does not match its CRC";
                        break;
                    }
                    case OpKind.Unmap:
                    case OpKind.Tombstone:
                        if (op.LayerId != volume.LayerId) return $"it unmaps in layer {op.LayerId}, not the volume's {volume.LayerId}";
                        if (op.Block < 0 || op.Count <= 0) return $"it unmaps a bad range {op.Block}+{op.Count}";
                        break;
                    case OpKind.CreateSnapshot:
                    case OpKind.DeleteSnapshot:
                    case OpKind.Rollback:
                    case OpKind.Flatten:
                        if (op.VolumeId != volume.Id) return $"a {op.Kind} of volume {op.VolumeId} is in volume {volume.Id}'s records";
                        if (op.Kind is OpKind.DeleteSnapshot or OpKind.Rollback && !catalog.Snapshots.ContainsKey(op.SnapshotId))
                            return $"its {op.Kind} names snapshot {op.SnapshotId}, which the store does not hold";
                        if (op.Kind is OpKind.CreateSnapshot && catalog.Snapshots.ContainsKey(op.SnapshotId))
                            return $"it creates snapshot {op.SnapshotId}, which the store already holds";
                        break;
                    default:
                        return $"a volume's records cannot hold a {op.Kind}";
                }
            }
            return null;
        }
        catch (InvalidDataException e)
        {
            return $"it does not decode ({e.Message})";
        }
        catch (IOException e)
        {
            return $"its data could not be read ({e.Message})";
        }
    }
}
