using System.Diagnostics;
using Microsoft.Extensions.Logging;
using Platter.Storage.Internal;

namespace Platter.Storage;

// Group commit, journal, checkpoints and recovery. One dedicated thread (the committer) does every sync and every
// journal write; a second one (the checkpointer) applies full journal halves to the KV store; other threads only
// append to in-memory overlays and wait for the committer.
public sealed partial class VolumeStore
{
    private readonly object _commitLock = new();
    private readonly AutoResetEvent _commitSignal = new(false);
    private List<TaskCompletionSource> _flushWaiters = new();
    private List<TaskCompletionSource> _checkpointWaiters = new();
    private Thread? _committer;
    private volatile bool _stopping;
    private Exception? _failure;

    // Committer-thread state.
    private long _nextSequence;
    private List<(long Sequence, byte[] Payload, int Length)> _activeBatches = new();
    private readonly Stopwatch _sinceSwitch = Stopwatch.StartNew();

    // Checkpointer: takes the batches of the half just left; the committer may switch again only when it is idle.
    private Thread? _checkpointer;
    private readonly AutoResetEvent _checkpointSignal = new(false);
    private readonly ManualResetEventSlim _checkpointIdle = new(true);
    private List<(long Sequence, byte[] Payload, int Length)> _handedOff = new();
    private volatile bool _stoppingCheckpointer;
    private readonly List<(long Epoch, List<long> Blocks)> _quarantine = new();
    private List<long> _roundFrees = new();
    private long _quarantinedBlocks;
    private long _pendingDataBytes;
    // Held while blocks move from quarantine to the allocator, so the check sees each block in exactly one place.
    private readonly object _spaceAccountingLock = new();
    private OpLog _batch = new(64 << 10);

    /// <summary>Makes every acknowledged write of every volume durable (group commit).</summary>
    public ValueTask FlushAsync(CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        ThrowIfFailed();
        var waiter = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_commitLock) _flushWaiters.Add(waiter);
        _commitSignal.Set();
        return new ValueTask(cancellationToken.CanBeCanceled ? waiter.Task.WaitAsync(cancellationToken) : waiter.Task);
    }

    /// <summary>Commits and checkpoints everything into the KV store (used by the check and by tests).</summary>
    internal void Checkpoint()
    {
        ThrowIfFailed();
        var waiter = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_commitLock) _checkpointWaiters.Add(waiter);
        _commitSignal.Set();
        waiter.Task.GetAwaiter().GetResult();
    }

    /// <summary>Synchronous flush for catalog changes, which must be durable when they return.</summary>
    private void CommitNow() => FlushAsync().AsTask().GetAwaiter().GetResult();

    internal void ThrowIfFailed()
    {
        var failure = Volatile.Read(ref _failure);
        if (failure is not null)
            throw new StorageException(StorageError.StoreFailed,
                $"the store refuses writes after a failed sync or metadata commit ({failure.Message}); reopen it (restart the server) to recover", failure);
    }

    /// <summary>Called by writers after appending operations: bounds the overlay's memory.</summary>
    internal void NotePendingBytes(int opBytes, long dataBytes)
    {
        long pending = Interlocked.Add(ref _pendingOpBytes, opBytes);
        long data = Interlocked.Add(ref _pendingDataBytes, dataBytes);
        if (pending > Layout.PendingOpBytesSoftMax || data > Layout.PendingDataBytesSoftMax) _commitSignal.Set();
        if (pending > Layout.PendingOpBytesHardMax(_metadata.JournalRegionBytes)) CommitNow();
    }

    private void StartCommitter()
    {
        _checkpointer = new Thread(CheckpointerLoop) { Name = "platter-checkpoint", IsBackground = true };
        _checkpointer.Start();
        _committer = new Thread(CommitterLoop) { Name = "platter-commit", IsBackground = true };
        _committer.Start();
    }

    private void StopCommitter()
    {
        _stopping = true;
        _commitSignal.Set();
        _committer?.Join();
        _stoppingCheckpointer = true;
        _checkpointSignal.Set();
        _checkpointer?.Join();
        _commitSignal.Dispose();
        _checkpointSignal.Dispose();
        _checkpointIdle.Dispose();
        _batch.Dispose();
    }

    private void CommitterLoop()
    {
        var idle = _options.CommitIntervalMax / 2;
        while (true)
        {
            _commitSignal.WaitOne(idle);
            bool stopping = _stopping;
            List<TaskCompletionSource> flushes, checkpoints;
            lock (_commitLock)
            {
                flushes = _flushWaiters;
                checkpoints = _checkpointWaiters;
                _flushWaiters = new();
                _checkpointWaiters = new();
            }
            Exception? error = Volatile.Read(ref _failure);
            if (error is null)
            {
                try
                {
                    long roundStart = Stopwatch.GetTimestamp();
                    CommitRound();
                    Interlocked.Add(ref Counters.RoundMicros, (long)Stopwatch.GetElapsedTime(roundStart).TotalMicroseconds);
                    if (stopping || checkpoints.Count > 0)
                    {
                        // Everything journaled goes to the KV store before a close or a check.
                        if (_activeBatches.Count > 0) SwitchHalves();
                        _checkpointIdle.Wait();
                        ThrowIfFailed();
                    }
                    else if (_activeBatches.Count > 0 && _checkpointIdle.IsSet
                        && (_journal.Position > Layout.JournalSwitchBytes(_metadata.JournalRegionBytes) || _sinceSwitch.Elapsed > Layout.CheckpointIntervalMax))
                    {
                        SwitchHalves();
                    }
                }
                catch (Exception e)
                {
                    error = e;
                    Volatile.Write(ref _failure, e);
                    _logger.LogCritical(e, "Commit failed; the store now refuses writes until it is reopened");
                }
            }
            ReleaseQuarantine();
            foreach (var w in flushes.Concat(checkpoints))
            {
                if (error is null) w.TrySetResult();
                else w.TrySetException(new StorageException(StorageError.StoreFailed, $"commit failed: {error.Message}", error));
            }
            if (stopping) return;
        }
    }

    // Gathers every pending operation into one batch, makes data then journal durable, and quarantines freed blocks.
    private void CommitRound()
    {
        var batch = _batch;
        batch.Clear();
        var frees = _roundFrees;
        frees.Clear();
        // Catalog first, then volumes: a volume deleted in this round has all its writes in this round too.
        OpLog catalogOps;
        List<VolumeState> volumes;
        lock (_catalogLock)
        {
            catalogOps = _catalogOps;
            _catalogOps = new OpLog(256);
            frees.AddRange(_catalogFrees);
            _catalogFrees.Clear();
            volumes = [.. _byId.Values];
        }
        foreach (var v in volumes)
        {
            lock (v.Lock)
            {
                if (v.PendingOps.Length == 0 && v.PendingFrees.Count == 0) continue;
                batch.Append(v.PendingOps.Span);
                v.PendingOps.Clear();
                frees.AddRange(v.PendingFrees);
                v.PendingFrees.Clear();
            }
        }
        batch.Append(catalogOps.Span);
        catalogOps.Dispose();
        Interlocked.Exchange(ref _pendingOpBytes, 0);
        Interlocked.Exchange(ref _pendingDataBytes, 0);
        if (batch.Length == 0)
        {
            if (frees.Count > 0) Quarantine(frees);
            return;
        }

        if (!_journal.Fits(batch.Length)) SwitchHalves();
        long sequence = _nextSequence++;
        _journal.Append(sequence, batch.Span);
        // One sync covers the batch's data blocks and its journal record (they share the data file).
        long syncStart = Stopwatch.GetTimestamp();
        _data.Sync();
        Interlocked.Add(ref Counters.SyncMicros, (long)Stopwatch.GetElapsedTime(syncStart).TotalMicroseconds);
        Interlocked.Increment(ref Counters.Commits);

        // The batch's bytes wait with the active half until it is checkpointed.
        _activeBatches.Add((sequence, batch.Span.ToArray(), batch.Length));
        if (_activeBatches.Count == 1) _sinceSwitch.Restart();
        Quarantine(frees);
    }

    private void Quarantine(List<long> frees)
    {
        if (frees.Count == 0) return;
        _quarantine.Add((_epochs.Current, frees));
        lock (_spaceAccountingLock) _quarantinedBlocks += frees.Count;
        _roundFrees = new List<long>();
    }

    // Hands freed blocks back to the allocator once no reader that might have looked them up is still running, and
    // their disk space back to the file system first (punched while still in quarantine, so no new write can be in
    // them yet): deleting a volume makes the host's free space grow.
    private void ReleaseQuarantine()
    {
        if (_quarantine.Count == 0) return;
        long drained = _epochs.TryAdvance();
        int ready = 0;
        while (ready < _quarantine.Count && _quarantine[ready].Epoch <= drained) ready++;
        for (int i = 0; i < ready; i++) PunchHoles(_quarantine[i].Blocks);
        lock (_spaceAccountingLock)
        {
            for (int i = 0; i < ready; i++)
            {
                _allocator.FreeBlocksBulk(_quarantine[i].Blocks);
                _quarantinedBlocks -= _quarantine[i].Blocks.Count;
            }
        }
        _quarantine.RemoveRange(0, ready);
    }

    // One fallocate(PUNCH_HOLE) per run of adjacent blocks at least PunchRunBlocksMin long (deleted volumes and
    // snapshots, large trims); shorter runs stay allocated as free blocks. A failure costs only the space.
    private void PunchHoles(List<long> blocks)
    {
        blocks.Sort();
        try
        {
            for (int i = 0; i < blocks.Count; )
            {
                int j = i + 1;
                while (j < blocks.Count && blocks[j] == blocks[j - 1] + 1) j++;
                if (j - i >= Layout.PunchRunBlocksMin) _data.PunchHole(blocks[i] << Layout.BlockShift, (long)(j - i) << Layout.BlockShift);
                i = j;
            }
        }
        catch (IOException e)
        {
            _logger.LogWarning("Cannot return freed space to the file system: {Error}", e.Message);
        }
    }

    // Hands the active half's batches to the checkpointer and continues in the other half, once the checkpointer has
    // finished with it (its records are then all in the KV store, so overwriting them loses nothing).
    private void SwitchHalves()
    {
        _checkpointIdle.Wait();
        ThrowIfFailed();
        _handedOff = _activeBatches;
        _activeBatches = new();
        _journal.SwitchHalves();
        _sinceSwitch.Restart();
        _checkpointIdle.Reset();
        _checkpointSignal.Set();
    }

    private void CheckpointerLoop()
    {
        while (true)
        {
            _checkpointSignal.WaitOne();
            if (_checkpointIdle.IsSet)
            {
                if (_stoppingCheckpointer) return;
                continue;
            }
            try
            {
                ApplyToMetadata(_handedOff);
            }
            catch (Exception e)
            {
                Volatile.Write(ref _failure, e);
                _logger.LogCritical(e, "Checkpoint into the metadata store failed; the store now refuses writes until it is reopened (the journal keeps every commit)");
            }
            finally
            {
                _handedOff = new();
                _checkpointIdle.Set();
                _commitSignal.Set();
            }
        }
    }

    private void ApplyToMetadata(List<(long Sequence, byte[] Payload, int Length)> batches)
    {
        if (batches.Count == 0) return;
        long start = Stopwatch.GetTimestamp();
        try
        {
            _metadata.Checkpoint(batches, _options.BeforeCheckpointCommit);
        }
        catch (Lmdb.LmdbException e) when (e.ErrorCode == Devices.Errno.ENOSPC && _reserve.Release())
        {
            // The failed transaction was aborted whole; with the reserve's space it goes through.
            _metadata.Checkpoint(batches, _options.BeforeCheckpointCommit);
        }
        _reserve.TryHold();
        Interlocked.Add(ref Counters.CheckpointMicros, (long)Stopwatch.GetElapsedTime(start).TotalMicroseconds);
        Interlocked.Increment(ref Counters.Checkpoints);
    }

    // Rebuilds memory from the KV store plus the journal, verifies it (refusing a damaged store, or in salvage mode
    // setting the damaged volumes aside), derives free space, and checkpoints what was replayed.
    private void Recover()
    {
        Catalog catalog;
        var damage = new MetadataDamage();
        long dataBlocks = _data.Length / Layout.BlockBytes;
        using (var view = _metadata.OpenView())
        {
            catalog = Catalog.Load(view, damage);
            MetadataVerifier.Verify(view, catalog, dataBlocks, damage);
        }
        long nextId = _metadata.NextId;
        var layerNames = new Dictionary<long, string>();
        foreach (var v in catalog.Volumes.Values)
        {
            layerNames[v.LayerId] = v.DisplayName;
            foreach (var s in v.Snapshots) layerNames[s.LayerId] = s.DisplayName;
        }
        var records = _journal.ReadRecords(_metadata.AppliedSequence, _logger, layerNames.GetValueOrDefault);
        if (records.Count > 0 && !LastRecordDataIsDurable(records[^1].Payload))
        {
            _logger.LogWarning("Dropped journal record {Sequence}: the crash interrupted its sync (it was never acknowledged); it held {Contents}",
                records[^1].Sequence, Journal.Describe(records[^1].Payload, layerNames.GetValueOrDefault));
            records.RemoveAt(records.Count - 1);
        }
        long last = _metadata.AppliedSequence;
        var replayed = new List<(long Sequence, byte[] Payload, int Length)>();
        foreach (var (sequence, payload) in records)
        {
            try
            {
                var reader = new OpReader(payload);
                while (reader.TryRead(out var op))
                    catalog.Replay(op, ref nextId);
            }
            catch (StorageException e) when (_options.Salvage)
            {
                // Salvage serves the metadata as it was before the record that does not fit it.
                damage.AddUnattributed($"journal record {sequence} does not apply to the catalog ({e.Message}); it and later records were not replayed");
                break;
            }
            replayed.Add((sequence, payload, payload.Length));
            last = sequence;
        }
        _nextSequence = last + 1;
        _nextId = nextId;
        if (replayed.Count > 0)
            _logger.LogInformation("Replayed {Batches} journaled batches (sequences {First}..{Last})", replayed.Count, replayed[0].Sequence, last);

        var used = MetadataVerifier.VerifyVersions(catalog.Volumes.Values, dataBlocks, damage, ReferencedBlocks);
        var volumes = catalog.Volumes.Values.ToList();
        if (damage.Any)
        {
            if (!_options.Salvage)
                throw new StorageException(StorageError.BadStore,
                    $"the store's metadata is damaged: {damage.Summary()}. Nothing was changed; `platter check` lists the damage, " +
                    "`platter serve --salvage` serves the intact volumes read-only");
            var damaged = MetadataVerifier.DamagedVolumes(volumes, damage);
            foreach (var problem in damage.Problems) _logger.LogError("Damaged metadata: {Problem}", problem);
            foreach (var v in damaged) _logger.LogError("Salvage: volume '{Volume}' is not served (its metadata is damaged)", v.Name);
            if (damage.Unattributed)
                _logger.LogError("Salvage: some damage belongs to no known volume; served volumes may read zeros where records were lost (every block read is still checksummed)");
            volumes.RemoveAll(damaged.Contains);
            _damage = [.. damage.Problems, .. damaged.Select(v => $"volume '{v.Name}' is not served: its metadata is damaged")];
        }
        foreach (var state in volumes)
        {
            // Two volumes under one name only in damaged metadata (refused above unless salvaging): serve the first.
            if (!_byName.TryAdd(state.Name, state)) continue;
            _byId.Add(state.Id, state);
        }

        // Free space is everything no version of any volume references.
        var runs = new List<(long Start, long Length)>();
        foreach (long pba in used)
        {
            if (runs.Count > 0 && runs[^1].Start + runs[^1].Length == pba) runs[^1] = (runs[^1].Start, runs[^1].Length + 1);
            else runs.Add((pba, 1));
        }
        _allocator.Initialize(dataBlocks, runs);
        _referencedBlocks = used.Count;
        // Salvage writes nothing: the journal and the KV store stay as found, for a later repair or a second look.
        if (_options.Salvage) return;
        // With the replayed batches in the KV store, both journal halves hold only applied records.
        ApplyToMetadata(replayed);
        _journal.Reset();
    }

    /// <summary>Adds every physical block the volume's versions reference, each once, with the layer that first maps it.</summary>
    private static void ReferencedBlocks(VolumeState volume, List<(long Pba, long Layer)> used)
    {
        var (maps, versions) = Lineage(volume, freezeVolume: false);
        VisitAdditions(maps, (i, _, entry) => used.Add((entry.Pba, versions[i - 1] switch
        {
            VolumeState v => v.LayerId,
            SnapshotState s => s.LayerId,
            _ => 0,
        })));
    }

    // The record and its data were synced together: if the crash came during that sync, some blocks the record maps
    // may not be on disk. Every block the record leaves mapped must match its checksum, or the record never completed.
    private bool LastRecordDataIsDurable(byte[] payload)
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
        var buffer = new byte[Layout.BlockBytes];
        foreach (var (pba, crc) in final.Values)
        {
            if (((pba + 1) << Layout.BlockShift) > _data.Length) return false;
            _data.Read(pba << Layout.BlockShift, buffer);
            if (Crc32C.Compute(buffer) != crc) return false;
        }
        return true;
    }
}
