using Microsoft.Extensions.Logging;
using Platter.Storage.Devices;

namespace Platter.Storage.Internal;

/// <summary>
/// Rebuilds memory at open: the catalog from the KV store plus the journal's records newer than its applied sequence
/// (dropping a last record whose data the crash cut short), verifies it (<see cref="MetadataVerifier"/>: damaged
/// metadata is refused, or in salvage mode the damaged volumes are set aside), and derives the set of referenced
/// blocks from which free space is derived.
/// </summary>
internal static class Recovery
{
    /// <summary>
    /// What open rebuilt. <paramref name="Volumes"/> are the volumes to serve (without the damaged ones when
    /// salvaging); <paramref name="Damage"/> is what verification found (empty unless salvaging).
    /// </summary>
    public sealed record Result(
        List<VolumeState> Volumes,
        long NextId,
        long LastSequence,
        List<(long Sequence, byte[] Payload, int Length)> Replayed,
        List<(long Start, long Length)> UsedRuns,
        long ReferencedBlocks,
        IReadOnlyList<string> Damage);

    /// <summary>
    /// Rebuilds memory; with <paramref name="ring"/> (not when salvaging) also the acknowledged operations a crash
    /// left uncommitted (<see cref="RingReplay"/>). Should what the ring added fail verification — it never should —
    /// open says so and rebuilds again without it, rather than refuse a store whose durable state is intact.
    /// </summary>
    public static Result Run(MetadataStore metadata, Journal journal, IDataDevice data, bool salvage, ILogger logger, PendingRing.Contents? ring = null,
        MapCrcPager? pager = null)
    {
        try
        {
            return RunWithRing(metadata, journal, data, salvage, logger, ring, pager, interruptedSequence: null);
        }
        catch (InterruptedRecord e)
        {
            // The newest journal record's sync did not complete: rebuild without it (it was never acknowledged).
            return RunWithRing(metadata, journal, data, salvage, logger, ring, pager, e.Sequence);
        }
    }

    private static Result RunWithRing(MetadataStore metadata, Journal journal, IDataDevice data, bool salvage, ILogger logger, PendingRing.Contents? ring,
        MapCrcPager? pager, long? interruptedSequence)
    {
        try
        {
            return RunOnce(metadata, journal, data, salvage, logger, ring, pager, interruptedSequence);
        }
        catch (StorageException e) when (e.Error == StorageError.BadStore && !salvage && ring is { Records.Count: > 0 })
        {
            var without = RunOnce(metadata, journal, data, salvage, logger, null, pager, interruptedSequence);
            logger.LogError(e, "The operations replayed from the pending-operation ring left the metadata inconsistent; they were dropped and the store opened " +
                "with what was committed (acknowledged but unflushed writes of the last second before the crash are lost)");
            return without;
        }
    }

    /// <summary>Thrown by a first rebuild that finds the newest journal record's data incomplete; the second leaves that record out.</summary>
    private sealed class InterruptedRecord(long sequence) : Exception
    {
        public long Sequence { get; } = sequence;
    }

    private static Result RunOnce(MetadataStore metadata, Journal journal, IDataDevice data, bool salvage, ILogger logger, PendingRing.Contents? ring,
        MapCrcPager? pager, long? interruptedSequence)
    {
        Catalog? catalog;
        var damage = new MetadataDamage();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        double loadMs, verifyMs;
        string walks = "one walk";
        long dataBlocks = data.Length / EngineLimits.BlockBytes;
        using (metadata.ReadAheadForWalk())
        using (var view = metadata.OpenView())
        {
            // One walk loads and verifies every record (in slices over the cores, decision 0020; salvage, which expects
            // damage, on one thread); a catalog it cannot build in one walk (damaged) takes two.
            catalog = Catalog.LoadInOneWalk(view, dataBlocks, damage, pager, salvage ? 0 : Catalog.WalkersAtOpen);
            loadMs = clock.Elapsed.TotalMilliseconds;
            if (catalog is { Walkers: > 0 }) walks = $"one walk in slices by {catalog.Walkers} threads";
            if (catalog is null)
            {
                walks = "a load by layer, then a verification walk";
                catalog = Catalog.Load(view, damage, pager);
                loadMs = clock.Elapsed.TotalMilliseconds;
                MetadataVerifier.Verify(view, catalog, dataBlocks, damage);
            }
            verifyMs = clock.Elapsed.TotalMilliseconds - loadMs;
        }
        long nextId = metadata.NextId;
        var layerNames = new Dictionary<long, string>();
        foreach (var v in catalog.Volumes.Values)
        {
            layerNames[v.LayerId] = v.DisplayName;
            foreach (var s in v.Snapshots) layerNames[s.LayerId] = s.DisplayName;
        }
        var records = journal.ReadRecords(metadata.AppliedSequence, logger, layerNames.GetValueOrDefault);
        if (records.Count > 0 && records[^1].Sequence == interruptedSequence)
        {
            logger.LogWarning("Dropped journal record {Sequence}: the crash interrupted its sync (it was never acknowledged); it held {Contents}",
                records[^1].Sequence, Journal.Describe(records[^1].Payload, layerNames.GetValueOrDefault));
            records.RemoveAt(records.Count - 1);
        }
        long last = metadata.AppliedSequence;
        var replayed = new List<(long Sequence, byte[] Payload, int Length)>();
        foreach (var (sequence, payload) in records)
        {
            try
            {
                var reader = new OpReader(payload);
                while (reader.TryRead(out var op))
                    catalog.Replay(op, ref nextId);
            }
            catch (StorageException e) when (salvage)
            {
                // Salvage serves the metadata as it was before the record that does not fit it.
                damage.AddUnattributed($"journal record {sequence} does not apply to the catalog ({e.Message}); it and later records were not replayed");
                break;
            }
            replayed.Add((sequence, payload, payload.Length));
            last = sequence;
        }
        // Whether the newest record's sync completed is judged on the catalog it leaves (see LastRecordDataIsDurable).
        if (interruptedSequence is null && records.Count > 0 && replayed.Count > 0 && replayed[^1].Sequence == records[^1].Sequence
            && !LastRecordDataIsDurable(records[^1].Payload, catalog, data))
            throw new InterruptedRecord(records[^1].Sequence);
        if (replayed.Count > 0)
            logger.LogInformation("Replayed {Batches} journaled batches (sequences {First}..{Last})", replayed.Count, replayed[0].Sequence, last);

        if (ring is not null && !salvage)
        {
            if (ring.Ignored is not null && ring.Records.Count == 0)
                logger.LogInformation("The pending-operation ring was not replayed: {Reason}", ring.Ignored);
            else if (ring.Ignored is not null)
                logger.LogWarning("The pending-operation ring was read only in part: {Reason}", ring.Ignored);
            var fromRing = RingReplay.Apply(catalog, ring, last, data, ref nextId, logger);
            if (fromRing.Records > 0)
            {
                // The data those operations map is in the page cache: durable before the metadata that points at it.
                data.Sync();
                var payload = fromRing.Applied.Span.ToArray();
                replayed.Add((last + 1, payload, payload.Length));
                last++;
                logger.LogWarning("Recovered {Records} acknowledged but uncommitted operations of {Volumes} volumes from the pending-operation ring " +
                    "(the process had stopped without a final commit)", fromRing.Records, fromRing.Volumes);
            }
            fromRing.Applied.Dispose();
        }

        double replayMs = clock.Elapsed.TotalMilliseconds - loadMs - verifyMs;
        var used = MetadataVerifier.VerifyVersions(catalog.Volumes.Values, dataBlocks, damage, Versions.ReferencedBlocks);
        // Open time grows with the records (issue 15): say where it went, so a slow restart can be explained from the log.
        logger.LogInformation("Rebuilt the maps of {Volumes} volumes from {Records} extent records in {Walks}: loaded in {LoadMs:F0} ms, verified in {VerifyMs:F0} ms more, " +
            "journal replayed in {ReplayMs:F0} ms, {Blocks} referenced blocks ({Runs} runs) derived in {UsedMs:F0} ms",
            catalog.Volumes.Count, damage.RecordsLoaded.Values.Sum(), walks, loadMs, verifyMs, replayMs, used.Blocks, used.Runs.Count,
            clock.Elapsed.TotalMilliseconds - loadMs - verifyMs - replayMs);
        var volumes = catalog.Volumes.Values.ToList();
        IReadOnlyList<string> problems = [];
        if (damage.Any)
        {
            if (!salvage)
                throw new StorageException(StorageError.BadStore,
                    $"the store's metadata is damaged: {damage.Summary()}. Nothing was changed; `platter check` lists the damage, " +
                    "`platter serve --salvage` serves the intact volumes read-only");
            var damaged = MetadataVerifier.DamagedVolumes(volumes, damage);
            foreach (var problem in damage.Problems) logger.LogError("Damaged metadata: {Problem}", problem);
            foreach (var v in damaged) logger.LogError("Salvage: volume '{Volume}' is not served (its metadata is damaged)", v.Name);
            if (damage.Unattributed)
                logger.LogError("Salvage: some damage belongs to no known volume; served volumes may read zeros where records were lost (every block read is still checksummed)");
            volumes.RemoveAll(damaged.Contains);
            problems = [.. damage.Problems, .. damaged.Select(v => $"volume '{v.Name}' is not served: its metadata is damaged")];
        }

        // Free space is everything no version of any volume references (the used runs are sorted and disjoint).
        return new Result(volumes, nextId, last, replayed, used.Runs, used.Blocks, problems);
    }

    // The record and its data were synced together: if the crash came during that sync, some blocks the record maps
    // may not be on disk. Every block the record leaves referenced must match its checksum, or the record never
    // completed. Only those: a block the record maps and then lets go of within itself — a write to a volume the same
    // record deletes, or rolls back, or a block a deleted snapshot held that its child replaced — was freed once the
    // record was durable, and the space may since hold newer data (its CRC then no longer matches, which says nothing
    // about this record). Judging those blocks dropped acknowledged records, a delete among them, after a SIGKILL.
    private static bool LastRecordDataIsDurable(byte[] payload, Catalog catalog, IDataDevice data)
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
                    long start = op.Block;
                    long end = op.Count < long.MaxValue - op.Block ? op.Block + op.Count : long.MaxValue;
                    long layer = op.LayerId;
                    foreach (var key in final.Keys.Where(k => k.Layer == layer && k.Block >= start && k.Block < end).ToList())
                        final.Remove(key);
                    break;
                }
            }
        }
        if (final.Count == 0) return true;
        var versions = new Dictionary<long, MapTree>();
        foreach (var v in catalog.Volumes.Values)
        {
            versions[v.LayerId] = v.Map;
            foreach (var s in v.Snapshots) versions[s.LayerId] = s.Map;
        }
        bool StillReferenced(long layer, long block, long pba) =>
            (versions.TryGetValue(layer, out var own) && own.Get(block).PbaPlusOne == pba + 1)
            || versions.Values.Any(map => map.Get(block).PbaPlusOne == pba + 1);
        var buffer = new byte[EngineLimits.BlockBytes];
        foreach (var ((layer, block), (pba, crc)) in final)
        {
            if (!StillReferenced(layer, block, pba)) continue;
            if (((pba + 1) << EngineLimits.BlockShift) > data.Length) return false;
            data.Read(pba << EngineLimits.BlockShift, buffer);
            if (Crc32C.Compute(buffer) != crc) return false;
        }
        return true;
    }
}
