using Microsoft.Extensions.Logging;
using Platter.Storage.Devices;

namespace Platter.Storage.Internal;

/// <summary>
/// Rebuilds memory at open: the catalog from the KV store plus the journal's records newer than its applied sequence
/// (dropping a last record whose data the crash cut short), and the set of referenced blocks from which free space
/// is derived.
/// </summary>
internal static class Recovery
{
    public sealed record Result(
        Catalog Catalog,
        long NextId,
        long LastSequence,
        List<(long Sequence, byte[] Payload, int Length)> Replayed,
        List<(long Start, long Length)> UsedRuns,
        long ReferencedBlocks);

    public static Result Run(MetadataStore metadata, Journal journal, IDataDevice data, ILogger logger)
    {
        Catalog catalog;
        using (var view = metadata.OpenView())
            catalog = Catalog.Load(view);
        long nextId = metadata.NextId;
        var records = journal.ReadRecords(metadata.AppliedSequence);
        if (records.Count > 0 && !LastRecordDataIsDurable(records[^1].Payload, data))
        {
            logger.LogWarning("Dropped journal record {Sequence}: the crash interrupted its sync (it was never acknowledged)", records[^1].Sequence);
            records.RemoveAt(records.Count - 1);
        }
        long last = metadata.AppliedSequence;
        var replayed = new List<(long Sequence, byte[] Payload, int Length)>();
        foreach (var (sequence, payload) in records)
        {
            var reader = new OpReader(payload);
            while (reader.TryRead(out var op))
                catalog.Replay(op, ref nextId);
            replayed.Add((sequence, payload, payload.Length));
            last = sequence;
        }
        if (replayed.Count > 0)
            logger.LogInformation("Replayed {Batches} journaled batches (sequences {First}..{Last})", replayed.Count, replayed[0].Sequence, last);

        // Free space is everything no version of any volume references.
        long dataBlocks = data.Length / EngineLimits.BlockBytes;
        var used = Versions.ReferencedBlocks(catalog.Volumes.Values);
        used.Sort();
        var runs = new List<(long Start, long Length)>();
        for (int i = 0; i < used.Count; i++)
        {
            if (i > 0 && used[i] == used[i - 1])
                throw new StorageException(StorageError.BadStore, $"physical block {used[i]} is mapped twice; run `platter check`");
            if (used[i] >= dataBlocks)
                throw new StorageException(StorageError.BadStore, $"physical block {used[i]} is past the end of the data file ({dataBlocks} blocks); run `platter check`");
            if (runs.Count > 0 && runs[^1].Start + runs[^1].Length == used[i]) runs[^1] = (runs[^1].Start, runs[^1].Length + 1);
            else runs.Add((used[i], 1));
        }
        return new Result(catalog, nextId, last, replayed, runs, used.Count);
    }

    // The record and its data were synced together: if the crash came during that sync, some blocks the record maps
    // may not be on disk. Every block the record leaves mapped must match its checksum, or the record never completed.
    private static bool LastRecordDataIsDurable(byte[] payload, IDataDevice data)
    {
        var final = new Dictionary<(long Layer, long Block), (long Pba, uint Crc)>();
        var reader = new OpReader(payload);
        while (reader.TryRead(out var op))
        {
            switch (op.Kind)
            {
                case OpKind.MapExtent:
                    for (int i = 0; i < op.Count; i++) final[(op.LayerId, op.Block + i)] = (op.Pba + i, op.Crc(i));
                    break;
                case OpKind.Unmap:
                case OpKind.Tombstone:
                {
                    // Blocks unmapped later in the same record need not have reached the disk. (Other operations only
                    // make the check stricter by leaving blocks in it.)
                    long start = op.Block;
                    long end = op.Count < long.MaxValue - op.Block ? op.Block + op.Count : long.MaxValue;
                    long layer = op.LayerId;
                    foreach (var key in final.Keys.Where(k => k.Layer == layer && k.Block >= start && k.Block < end).ToList())
                        final.Remove(key);
                    break;
                }
            }
        }
        var buffer = new byte[EngineLimits.BlockBytes];
        foreach (var (pba, crc) in final.Values)
        {
            if (((pba + 1) << EngineLimits.BlockShift) > data.Length) return false;
            data.Read(pba << EngineLimits.BlockShift, buffer);
            if (Crc32C.Compute(buffer) != crc) return false;
        }
        return true;
    }
}
