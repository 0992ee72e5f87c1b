using System.Diagnostics;
using Microsoft.Extensions.Logging;
using Platter.Storage.Internal;

namespace Platter.Storage;

// Group commit, journal, checkpoints and recovery. One dedicated thread (the committer) does every sync and every
// metadata write; other threads only append to in-memory overlays and wait for it.
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
    private readonly List<(long Sequence, byte[] Payload, int Length)> _unapplied = new();
    private readonly Stopwatch _sinceCheckpoint = Stopwatch.StartNew();
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
        _committer = new Thread(CommitterLoop) { Name = "platter-commit", IsBackground = true };
        _committer.Start();
    }

    private void StopCommitter()
    {
        _stopping = true;
        _commitSignal.Set();
        _committer?.Join();
        _commitSignal.Dispose();
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
                    if (stopping || checkpoints.Count > 0 || _journal.Position > Layout.JournalCheckpointBytes(_metadata.JournalRegionBytes)
                        || (_unapplied.Count > 0 && _sinceCheckpoint.Elapsed > Layout.CheckpointIntervalMax))
                        CheckpointNow();
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

        if (!_journal.Fits(batch.Length)) CheckpointNow();
        long sequence = _nextSequence++;
        _journal.Append(sequence, batch.Span);
        // One sync covers the batch's data blocks and its journal record (they share the data file).
        long syncStart = Stopwatch.GetTimestamp();
        _data.Sync();
        Interlocked.Add(ref Counters.SyncMicros, (long)Stopwatch.GetElapsedTime(syncStart).TotalMicroseconds);
        Interlocked.Increment(ref Counters.Commits);

        // The batch's bytes now belong to the checkpoint queue.
        _unapplied.Add((sequence, batch.Span.ToArray(), batch.Length));
        if (_unapplied.Count == 1) _sinceCheckpoint.Restart();
        Quarantine(frees);
    }

    private void Quarantine(List<long> frees)
    {
        if (frees.Count == 0) return;
        _quarantine.Add((_epochs.Current, frees));
        lock (_spaceAccountingLock) _quarantinedBlocks += frees.Count;
        _roundFrees = new List<long>();
    }

    // Hands freed blocks back to the allocator once no reader that might have looked them up is still running.
    private void ReleaseQuarantine()
    {
        if (_quarantine.Count == 0) return;
        long drained = _epochs.TryAdvance();
        int released = 0;
        lock (_spaceAccountingLock)
        {
            while (released < _quarantine.Count && _quarantine[released].Epoch <= drained)
            {
                _allocator.FreeBlocksBulk(_quarantine[released].Blocks);
                _quarantinedBlocks -= _quarantine[released].Blocks.Count;
                released++;
            }
        }
        _quarantine.RemoveRange(0, released);
    }

    private void CheckpointNow()
    {
        if (_unapplied.Count > 0)
        {
            long start = Stopwatch.GetTimestamp();
            _metadata.Checkpoint(_unapplied, _options.BeforeCheckpointCommit);
            Interlocked.Add(ref Counters.CheckpointMicros, (long)Stopwatch.GetElapsedTime(start).TotalMicroseconds);
            _unapplied.Clear();
            Interlocked.Increment(ref Counters.Checkpoints);
        }
        _journal.Reset();
        _sinceCheckpoint.Restart();
    }

    // Rebuilds memory from the KV store plus the journal, derives free space, and checkpoints what was replayed.
    private void Recover()
    {
        var catalog = new Dictionary<long, VolumeState>();
        _metadata.Load(
            v => catalog.Add(v.Id, new VolumeState(v.Id, v.Name, v.SizeBytes, v.Created)),
            (volumeId, block, count, pba, _, crcs) =>
            {
                if (!catalog.TryGetValue(volumeId, out var state))
                    throw new StorageException(StorageError.BadStore, $"the metadata maps blocks of volume {volumeId}, which the catalog does not hold; run `platter check`");
                for (int i = 0; i < count; i++)
                    state.Map.Set(block + i, BlockEntry.Mapped(pba + i, System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(crcs[(4 * i)..])));
            });
        long nextId = _metadata.NextVolumeId;
        var records = _journal.ReadRecords(_metadata.AppliedSequence);
        if (records.Count > 0 && !LastRecordDataIsDurable(records[^1].Payload))
        {
            _logger.LogWarning("Dropped journal record {Sequence}: the crash interrupted its sync (it was never acknowledged)", records[^1].Sequence);
            records.RemoveAt(records.Count - 1);
        }
        long last = _metadata.AppliedSequence;
        foreach (var (sequence, payload) in records)
        {
            var reader = new OpReader(payload);
            while (reader.TryRead(out var op))
                ReplayOp(catalog, op, ref nextId);
            _unapplied.Add((sequence, payload, payload.Length));
            last = sequence;
        }
        _nextSequence = last + 1;
        _nextVolumeId = Math.Max(nextId, catalog.Count == 0 ? 1 : catalog.Keys.Max() + 1);
        foreach (var state in catalog.Values)
        {
            _byId.Add(state.Id, state);
            _byName.Add(state.Name, state);
        }
        if (_unapplied.Count > 0)
            _logger.LogInformation("Replayed {Batches} journaled batches (sequences {First}..{Last})", _unapplied.Count, _unapplied[0].Sequence, last);

        // Free space is everything the maps do not reference.
        long dataBlocks = _data.Length / Layout.BlockBytes;
        var used = new List<long>();
        foreach (var state in catalog.Values)
            foreach (var (_, entry) in state.Map.EnumerateMapped())
                used.Add(entry.Pba);
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
        _allocator.Initialize(dataBlocks, runs);
        if (_unapplied.Count > 0) CheckpointNow();
    }

    // The record and its data were synced together: if the crash came during that sync, some blocks the record maps
    // may not be on disk. Every block the record leaves mapped must match its checksum, or the record never completed.
    private bool LastRecordDataIsDurable(byte[] payload)
    {
        var final = new Dictionary<(long Volume, long Block), (long Pba, uint Crc)>();
        var reader = new OpReader(payload);
        while (reader.TryRead(out var op))
        {
            switch (op.Kind)
            {
                case OpKind.MapExtent:
                    for (int i = 0; i < op.Count; i++) final[(op.VolumeId, op.Block + i)] = (op.Pba + i, op.Crc(i));
                    break;
                case OpKind.Unmap:
                case OpKind.DeleteVolume:
                {
                    long start = op.Kind == OpKind.Unmap ? op.Block : 0;
                    long end = op.Kind == OpKind.Unmap && op.Count < long.MaxValue - op.Block ? op.Block + op.Count : long.MaxValue;
                    long volume = op.VolumeId;
                    foreach (var key in final.Keys.Where(k => k.Volume == volume && k.Block >= start && k.Block < end).ToList())
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

    private static void ReplayOp(Dictionary<long, VolumeState> catalog, in Op op, ref long nextId)
    {
        switch (op.Kind)
        {
            case OpKind.CreateVolume:
                catalog[op.VolumeId] = new VolumeState(op.VolumeId, op.Name, op.SizeBytes, new DateTimeOffset(op.CreatedTicks, TimeSpan.Zero));
                nextId = Math.Max(nextId, op.VolumeId + 1);
                return;
        }
        if (!catalog.TryGetValue(op.VolumeId, out var state))
            throw new StorageException(StorageError.BadStore, $"the journal names volume {op.VolumeId}, which the catalog does not hold");
        switch (op.Kind)
        {
            case OpKind.MapExtent:
                for (int i = 0; i < op.Count; i++)
                    state.Map.Set(op.Block + i, BlockEntry.Mapped(op.Pba + i, op.Crc(i)));
                break;
            case OpKind.Unmap:
            {
                long end = op.Count >= long.MaxValue - op.Block ? long.MaxValue : op.Block + op.Count;
                for (long b = state.Map.NextMapped(op.Block, end); b >= 0; b = state.Map.NextMapped(b + 1, end))
                    state.Map.Set(b, default);
                break;
            }
            case OpKind.DeleteVolume:
                catalog.Remove(op.VolumeId);
                break;
            case OpKind.ResizeVolume:
                state.SizeBytes = op.SizeBytes;
                break;
            case OpKind.RenameVolume:
                state.Name = op.Name;
                break;
        }
    }
}
