using System.Diagnostics;
using Microsoft.Extensions.Logging;
using Platter.Storage.Devices;

namespace Platter.Storage.Internal;

/// <summary>
/// Group commit, the journal's two halves, checkpoints into the KV store and the failed-store latch.
///
/// One dedicated thread (the committer) does every sync and every journal write; a second one (the checkpointer)
/// applies full journal halves to the KV store; other threads only append to in-memory overlays (their volume's
/// pending operations) and wait for the committer. Each round gathers every pending operation through the
/// <c>gather</c> callback (the catalog's), appends one record, syncs the data file once (data and record share it)
/// and quarantines the blocks the round freed.
///
/// Once a sync, a journal write or a checkpoint fails, or an invariant inside the engine is found broken, the store
/// is failed: memory may disagree with what is durable, so every later write, commit and catalog change is refused
/// until the store is reopened (recovery rebuilds memory from the durable state).
/// </summary>
internal sealed class Committer : IDisposable
{
    private readonly ILogger _logger;
    private readonly MetadataStore _metadata;
    private readonly Journal _journal;
    private readonly IDataDevice _data;
    private readonly Space _space;
    private readonly EpochGate _epochs;
    private readonly StorageCounters _counters;
    private readonly Func<OpLog, List<long>, List<(long VolumeId, long Number)>, long> _gather;
    private readonly PendingRing _ring;
    private readonly List<(long VolumeId, long Number)> _marks = new();
    private readonly Action? _beforeCheckpointCommit;
    private readonly TimeSpan _commitIntervalMax;

    // Guards the waiter lists. Held for list swaps only.
    private readonly object _waitersLock = new();
    private List<TaskCompletionSource> _flushWaiters = new();
    private List<TaskCompletionSource> _checkpointWaiters = new();
    // Synchronous commit waiters (see Commit): tickets handed out and tickets whose round has finished.
    private long _commitTickets;
    private long _ticketsDone;
    private bool _stopped; // guarded by _waitersLock: the committer thread has ended
    private Exception? _ticketFailure;
    private readonly AutoResetEvent _commitSignal = new(false);
    private Thread? _committer;
    private volatile bool _stopping;
    private Exception? _failure;

    // Overlay size since the last round (writers add, the committer resets): bounds memory and replay work.
    private long _pendingOpBytes;
    private long _pendingDataBytes;

    // Committer-thread state.
    private long _nextSequence;
    private List<(long Sequence, byte[] Payload, int Length)> _activeBatches = new();
    private readonly Stopwatch _sinceSwitch = Stopwatch.StartNew();
    private readonly OpLog _batch = new(64 << 10);
    private List<long> _roundFrees = new();

    // Checkpointer: takes the batches of the half just left; the committer may switch again only when it is idle.
    private Thread? _checkpointer;
    private readonly AutoResetEvent _checkpointSignal = new(false);
    private readonly ManualResetEventSlim _checkpointIdle = new(true);
    private List<(long Sequence, byte[] Payload, int Length)> _handedOff = new();
    private volatile bool _stoppingCheckpointer;

    public Committer(StoreOptions options, ILogger logger, MetadataStore metadata, Journal journal, IDataDevice data, Space space,
        EpochGate epochs, StorageCounters counters, PendingRing ring, Func<OpLog, List<long>, List<(long VolumeId, long Number)>, long> gather)
    {
        _ring = ring;
        _logger = logger;
        _metadata = metadata;
        _journal = journal;
        _data = data;
        _space = space;
        _epochs = epochs;
        _counters = counters;
        _gather = gather;
        _beforeCheckpointCommit = options.BeforeCheckpointCommit;
        _commitIntervalMax = options.CommitIntervalMax;
    }

    /// <summary>
    /// After recovery: the replayed batches go to the KV store now (so both journal halves hold only applied records
    /// and the journal starts again), and sequences continue after <paramref name="lastSequence"/>. With
    /// <paramref name="salvage"/> nothing is written: the journal and the KV store stay as found, for a later repair or
    /// a second look (a salvage store takes no writes and no catalog changes, so no round has anything to commit).
    /// </summary>
    public void Start(long lastSequence, List<(long Sequence, byte[] Payload, int Length)> replayed, bool salvage)
    {
        _nextSequence = lastSequence + 1;
        if (!salvage)
        {
            ApplyToMetadata(replayed);
            _journal.Reset();
            _ring.Reset(); // what it held is committed now; before the committer thread reads its head
        }
        _checkpointer = new Thread(CheckpointerLoop) { Name = "platter-checkpoint", IsBackground = true };
        _checkpointer.Start();
        _committer = new Thread(CommitterLoop) { Name = "platter-commit", IsBackground = true };
        _committer.Start();
    }

    /// <summary>True once the store has failed (see the class summary).</summary>
    public bool Failed => Volatile.Read(ref _failure) is not null;

    /// <summary>What failed the store (a failed sync or commit, or the fault a fail-stop caught), or null while it works.</summary>
    public Exception? Failure => Volatile.Read(ref _failure);

    /// <summary>Makes every acknowledged write of every volume durable (group commit).</summary>
    public ValueTask FlushAsync(CancellationToken cancellationToken)
    {
        ThrowIfFailed();
        var waiter = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_waitersLock) _flushWaiters.Add(waiter);
        _commitSignal.Set();
        return new ValueTask(cancellationToken.CanBeCanceled ? waiter.Task.WaitAsync(cancellationToken) : waiter.Task);
    }

    /// <summary>
    /// Commits and waits on the calling thread: catalog changes (durable when they return), a writer past the hard
    /// overlay bound (back-pressure: the overlay must shrink before it grows) and an allocation that found no space
    /// (freed blocks come back only through a commit). A ticket and a monitor, not a task: no allocation, no
    /// sync-over-async. It blocks by design (the engine's write and catalog calls are synchronous); no lock is held
    /// while it waits, so usage queries, reads and other volumes' writes go on.
    /// </summary>
    public void Commit()
    {
        ThrowIfFailed();
        long ticket;
        lock (_waitersLock) ticket = ++_commitTickets;
        _commitSignal.Set();
        Exception? failure;
        lock (_waitersLock)
        {
            while (_ticketsDone < ticket && Volatile.Read(ref _failure) is null && !_stopped) Monitor.Wait(_waitersLock);
            failure = _ticketsDone >= ticket ? _ticketFailure : Volatile.Read(ref _failure);
            if (failure is null && _ticketsDone < ticket) throw new StorageException(StorageError.Closed, "the store is closed");
        }
        if (failure is not null) throw new StorageException(StorageError.StoreFailed, $"commit failed: {failure.Message}", failure);
    }

    /// <summary>Commits and checkpoints everything into the KV store (used by the check and by tests).</summary>
    public void Checkpoint()
    {
        ThrowIfFailed();
        var waiter = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_waitersLock) _checkpointWaiters.Add(waiter);
        _commitSignal.Set();
        waiter.Task.GetAwaiter().GetResult();
    }

    /// <summary>Asks for a round without waiting (freed space is waiting for one).</summary>
    public void Nudge()
    {
        if (_stopping) return;
        try
        {
            _commitSignal.Set();
        }
        catch (ObjectDisposedException)
        {
            // Closed meanwhile: the final round already ran.
        }
    }

    /// <summary>
    /// Fail-stop: an unexpected exception (anything but a <see cref="StorageException"/>) or a broken invariant inside
    /// write, commit, map or catalog code fails the store, like a failed sync: memory may now disagree with the
    /// journal, so nothing more may be committed. Flush waiters are failed by the next round (no one hangs). Returns
    /// the StoreFailed error to throw to the caller.
    /// </summary>
    public StorageException FailStop(Exception e, string during)
    {
        if (Interlocked.CompareExchange(ref _failure, e, null) is null)
            _logger.LogCritical(e, "Unexpected error during {During}; the store now refuses writes until it is reopened", during);
        _ring.Invalidate();
        lock (_waitersLock) Monitor.PulseAll(_waitersLock); // synchronous committers stop waiting
        Nudge();
        return new StorageException(StorageError.StoreFailed,
            $"the store failed during {during} ({e.Message}); it refuses writes until it is reopened (restart the server)", e);
    }

    public void ThrowIfFailed()
    {
        var failure = Volatile.Read(ref _failure);
        if (failure is not null)
            throw new StorageException(StorageError.StoreFailed,
                $"the store failed ({failure.Message}) and refuses writes; reopen it (restart the server) to recover", failure);
    }

    /// <summary>Called by writers after appending operations: bounds the overlay's memory.</summary>
    public void NotePendingBytes(int opBytes, long dataBytes)
    {
        long pending = Interlocked.Add(ref _pendingOpBytes, opBytes);
        long data = Interlocked.Add(ref _pendingDataBytes, dataBytes);
        if (pending > EngineLimits.PendingOpBytesSoftMax || data > EngineLimits.PendingDataBytesSoftMax) _commitSignal.Set();
        if (pending > EngineLimits.PendingOpBytesHardMax(_metadata.JournalRegionBytes)) Commit();
    }

    private void CommitterLoop()
    {
        var idle = _commitIntervalMax / 2;
        while (true)
        {
            _commitSignal.WaitOne(idle);
            bool stopping = _stopping;
            List<TaskCompletionSource> flushes, checkpoints;
            long tickets;
            lock (_waitersLock)
            {
                tickets = _commitTickets;
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
                    Interlocked.Add(ref _counters.RoundMicros, (long)Stopwatch.GetElapsedTime(roundStart).TotalMicroseconds);
                    if (stopping || checkpoints.Count > 0)
                    {
                        // Everything journaled goes to the KV store before a close or a check.
                        if (_activeBatches.Count > 0) SwitchHalves();
                        _checkpointIdle.Wait();
                        ThrowIfFailed();
                    }
                    else if (_activeBatches.Count > 0 && _checkpointIdle.IsSet
                        && (_journal.Position > EngineLimits.JournalSwitchBytes(_metadata.JournalRegionBytes) || _sinceSwitch.Elapsed > EngineLimits.CheckpointIntervalMax))
                    {
                        SwitchHalves();
                    }
                }
                catch (Exception e)
                {
                    error = e;
                    Volatile.Write(ref _failure, e);
                    _ring.Invalidate();
                    _logger.LogCritical(e, "Commit failed; the store now refuses writes until it is reopened");
                }
            }
            try
            {
                // A double free here (a broken invariant) must fail the store, not kill the committer thread.
                if (error is null && _space.HasQuarantine) _space.ReleaseQuarantine(_epochs.TryAdvance());
            }
            catch (Exception e)
            {
                error = e;
                FailStop(e, "the release of freed blocks");
            }
            lock (_waitersLock)
            {
                _ticketsDone = tickets;
                _ticketFailure = error;
                _stopped = stopping;
                Monitor.PulseAll(_waitersLock);
            }
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
        _marks.Clear();
        // Every record the ring holds before this point is in a volume's pending log now, so in this round or an earlier one.
        long ringHead = _ring.Head;
        // The blocks the gathered operations mapped, counted with them under each volume's lock: the committer's own
        // data count (below) also holds writes whose operations were appended after the gather, and a round whose frees
        // seemed to outweigh its writes by those few MiB was punched, an overwrite's space made a hole again
        // (docs/PERFORMANCE.md, session 8).
        long writtenBlocks = _gather(batch, frees, _marks);
        Interlocked.Exchange(ref _pendingOpBytes, 0);
        Interlocked.Exchange(ref _pendingDataBytes, 0);
        if (batch.Length == 0)
        {
            _ring.Reclaim(ringHead);
            Quarantine(frees, writtenBlocks);
            return;
        }

        if (!_journal.Fits(batch.Length)) SwitchHalves();
        long sequence = _nextSequence++;
        // Before the journal record: a mark counts at replay only if its record turns out durable.
        _ring.AppendMarks(sequence, _marks);
        _journal.Append(sequence, batch.Span);
        // One sync covers the batch's data blocks and its journal record (they share the data file).
        long syncStart = Stopwatch.GetTimestamp();
        _data.Sync();
        Interlocked.Add(ref _counters.SyncMicros, (long)Stopwatch.GetElapsedTime(syncStart).TotalMicroseconds);
        Interlocked.Increment(ref _counters.Commits);
        _ring.Reclaim(ringHead);

        // The batch's bytes wait with the active half until it is checkpointed.
        _activeBatches.Add((sequence, batch.Span.ToArray(), batch.Length));
        if (_activeBatches.Count == 1) _sinceSwitch.Restart();
        Quarantine(frees, writtenBlocks);
    }

    /// <summary>Told of every block whose free is durable, before it is quarantined (the scrubber's bad-block list).</summary>
    public Action<List<long>>? BlocksFreed { get; set; }

    // writtenBlocks: the new space the round's operations mapped, which bounds how much of what it freed stays warm
    // (allocated for the next writes rather than punched; see EngineLimits.WarmFreeBlocksMax).
    private void Quarantine(List<long> frees, long writtenBlocks)
    {
        if (frees.Count == 0) return;
        BlocksFreed?.Invoke(frees);
        _space.Quarantine(_epochs.Current, frees, writtenBlocks);
        _roundFrees = new List<long>();
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
                _ring.Invalidate();
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
            _metadata.Checkpoint(batches, _beforeCheckpointCommit);
        }
        catch (Lmdb.LmdbException e) when (e.ErrorCode == Errno.ENOSPC && _space.ReleaseReserve())
        {
            // The failed transaction was aborted whole; with the reserve's space it goes through.
            _metadata.Checkpoint(batches, _beforeCheckpointCommit);
        }
        _space.HoldReserve();
        Interlocked.Add(ref _counters.CheckpointMicros, (long)Stopwatch.GetElapsedTime(start).TotalMicroseconds);
        Interlocked.Increment(ref _counters.Checkpoints);
    }

    /// <summary>Commits what is pending, checkpoints it, and stops both threads.</summary>
    public void Dispose()
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
}
