using System.Buffers;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;

namespace Platter.Cache.Internal;

/// <summary>
/// One volume's write-back log on local disk: an ordered ring of checksummed records, an index of the blocks it
/// holds newer than the backend, and the background task that writes records back to the backend in order.
/// </summary>
/// <remarks>
/// <para><b>Order is the whole point.</b> Records get consecutive sequence numbers when they are reserved, and are
/// written back strictly one write-back operation at a time, each durable on the backend (write + flush) before the
/// next starts; the head is durable in the superblock once per batch of operations on disjoint blocks (see
/// WriteBackLoopAsync for why replay may then write a batch again). So at any instant the backend holds exactly the
/// records before some sequence number (plus, at most, the one operation in flight, which is one record or several
/// contiguous records inside one backend atomic unit — one RADOS object for RBD). If the cache disk dies, the image is
/// an ordered prefix of the acknowledged writes.</para>
/// <para><b>Durability.</b> A write is acknowledged once its record is written into the log file (page cache); FLUSH
/// waits until every record reserved before it is written, then fdatasyncs the log. Replay after a crash stops at the
/// first record that is missing, torn, stale (older incarnation or lap), or fails its checksum; every record before a
/// completed flush is intact, so nothing flushed is lost — unless the log was damaged, which replay detects by
/// comparing with the flushed sequence number the superblock records and reports.</para>
/// <para><b>Locks</b> (taken in this order, never across I/O): <c>_appendLock</c> guards the ring's tail, the record
/// slots and the written-through watermark; <c>_indexLock</c> guards the dirty-block index. The superblock is written
/// under <c>_superGate</c> (an async gate: superblock writes are I/O and must not interleave); a flush's sync carries
/// a superblock write, so flushes take it too (head syncs come once per batch, so they rarely meet). Readers of log blocks
/// are counted in two epoch counters so the writer of new records never overwrites space a reader still reads.</para>
/// </remarks>
internal sealed partial class WriteBackLog : IAsyncDisposable
{
    private const int BlockBytes = LogFormat.BlockBytes;

    // Pause between retries when the backend fails a write-back: the data is safe in the log, so waiting is right;
    // a cluster that returns resumes write-back by itself.
    private static readonly TimeSpan BackendRetryDelay = TimeSpan.FromMilliseconds(500);

    private readonly SafeFileHandle _file;
    private readonly IVolumeHandle _backend;
    private readonly ILogger _logger;
    private readonly string _path;
    private readonly long _capacity;
    private readonly long _dataBytes;
    private readonly int _atomicUnitBytes;
    private readonly int _waveOpsMax;   // backend writes in flight together at most
    private readonly int _waveBytesMax; // bytes in flight together at most (the staging buffer)
    private readonly ulong _logTag;
    private readonly Guid _logId;
    private readonly string _identity;
    private readonly long _incarnation;

    // Ring state, guarded by _appendLock.
    private readonly object _appendLock = new();
    private readonly RecordSlot[] _slots;
    private long _tailPos;
    private long _nextSeq;
    private long _usedBytes;
    private long _writtenThrough; // every record with seq <= this is written into the log file
    private TaskCompletionSource _spaceFreed = NewSignal();
    private TaskCompletionSource _recordWritten = NewSignal();

    // Dirty-block index, guarded by _indexLock.
    private readonly object _indexLock = new();
    private readonly Dictionary<long, DirtyBlock> _index = new();

    // Write-back progress. Records before _appliedSeq are on the backend (the write-back task writes it; readers and
    // drains look). Records before _headSeq are on the backend *and* the superblock says so durably: only their ring
    // space may be reused. The head lags the applied point by at most one batch (see WriteBackLoopAsync).
    private long _appliedSeq;
    private long _appliedPos; // where _appliedSeq's record starts, written when write-back stops (for DisposeAsync)
    private long _headSeq;
    private long _headPos;
    private TaskCompletionSource _applied = NewSignal();

    // Superblock state, guarded by _superGate.
    private readonly SemaphoreSlim _superGate = new(1, 1);
    private long _generation;
    private long _flushedSeq; // the flushed sequence number the superblock carries

    private long _syncedThrough; // every record with seq <= this was fdatasynced (flushes sync one at a time under _superGate)

    // Write-back waits this long for the next record before it makes the head durable and frees ring space, so a steady
    // writer's records share one superblock sync instead of paying one each (20 ms: far below any client timeout, long
    // enough for depth-1 writers on a loaded node).
    private readonly TimeSpan _headIdleDelay;

    // A writer waits for ring space: write-back makes its head durable at once instead of batching.
    private volatile bool _spaceWanted;

    // Syncs of the log, by cause (tests and the bench read them).
    private long _flushSyncs;
    private long _headSyncs;
    private long _slotSyncs; // head syncs that made the superblock's slot alone durable (pwritev2 RWF_DSYNC)

    private bool _slotSyncUnsupported; // the kernel or file system refused RWF_DSYNC: head syncs fdatasync the file

    // The clock of acknowledgements (IClockedAcknowledgements): records are stamped with it when their write arrives
    // and when they are written; write-back lets records go back together only if none may depend on another.
    private long _ackClock;

    // Write-back waves and their backend writes (tests and the bench read them).
    private long _waves;
    private long _waveOps;

    // Readers of log blocks: two counters, selected by the epoch's parity (see ReleaseSpaceAsync).
    private readonly long[] _readers = new long[2];
    private long _epoch;

    private readonly CancellationTokenSource _stop = new();
    private Task? _writeBack;
    private volatile string? _failure;

    private struct RecordSlot
    {
        public long Seq;
        public long Pos;
        public long Bytes;
        public long VolumeOffset;
        public int Blocks;
        public ushort Kind;
        public bool Written;
        public long Entered; // _ackClock when the write arrived (long.MaxValue: replayed, arrival unknown)
        public long Acked;   // _ackClock when it was written into the log (long.MinValue: replayed)
    }

    private readonly record struct DirtyBlock(long Pos, long Seq, ulong Sum);

    private WriteBackLog(SafeFileHandle file, IVolumeHandle backend, ILogger logger, string path, in LogFormat.Super super, int atomicUnitBytes,
        TimeSpan headIdleDelay, int waveOpsMax, int waveBytesMax)
    {
        _waveOpsMax = Math.Max(1, waveOpsMax);
        _waveBytesMax = waveBytesMax;
        _headIdleDelay = headIdleDelay;
        _file = file;
        _backend = backend;
        _logger = logger;
        _path = path;
        _capacity = super.Capacity;
        _dataBytes = super.Capacity - LogFormat.DataStart;
        _atomicUnitBytes = atomicUnitBytes;
        _logId = super.LogId;
        _logTag = BitConverter.ToUInt64(super.LogId.ToByteArray(), 0);
        _identity = super.Identity;
        _incarnation = super.Incarnation;
        _generation = super.Generation;
        _flushedSeq = super.FlushedSeq;
        _headSeq = super.HeadSeq;
        _headPos = super.HeadPos;
        _appliedSeq = super.HeadSeq;
        // The smallest record is one sector of header plus one block; a wrap marker is one sector but at most one
        // per lap. One slot per record that can be in the ring at once, plus slack for wrap markers.
        _slots = new RecordSlot[_dataBytes / (LogFormat.SectorBytes + BlockBytes) + 16];
    }

    /// <summary>This log's id: recorded where the volume lives so another node knows whose cache holds dirty data.</summary>
    public Guid LogId => _logId;

    /// <summary>Where the next record goes.</summary>
    public long TailPosition
    {
        get { lock (_appendLock) return _tailPos; }
    }

    /// <summary>Bytes of the ring in use (records not yet written back, and their padding).</summary>
    public long UsedBytes => Interlocked.Read(ref _usedBytes);

    /// <summary>Capacity of the ring in bytes.</summary>
    public long CapacityBytes => _dataBytes;

    /// <summary>Blocks the log holds that the backend does not have yet.</summary>
    public long DirtyBlocks
    {
        get { lock (_indexLock) return _index.Count; }
    }

    /// <summary>Records appended but not yet written back.</summary>
    public long LagRecords => Interlocked.Read(ref _nextSeq) - Volatile.Read(ref _appliedSeq);

    /// <summary>fdatasyncs made by flushes (one per flush that found unsynced records; concurrent flushes share one).</summary>
    internal long FlushSyncs => Interlocked.Read(ref _flushSyncs);

    /// <summary>Durable head writes (one per batch of write-back operations).</summary>
    internal long HeadSyncs => Interlocked.Read(ref _headSyncs);

    /// <summary>Head syncs that made the superblock's slot alone durable, not the whole file.</summary>
    internal long SlotSyncs => Interlocked.Read(ref _slotSyncs);

    /// <summary>Moves the clock of acknowledgements: those made so far may reach clients from now on.</summary>
    public void AcknowledgementsLeaving() => Interlocked.Increment(ref _ackClock);

    /// <summary>Write-back waves so far (each: backend writes in flight together, then one backend flush).</summary>
    internal long Waves => Interlocked.Read(ref _waves);

    /// <summary>Backend writes of all waves so far.</summary>
    internal long WaveOps => Interlocked.Read(ref _waveOps);

    /// <summary>True when the superblock's durable head has caught up with write-back (no head sync pending).</summary>
    internal bool HeadSettled => Volatile.Read(ref _headSeq) == Volatile.Read(ref _appliedSeq);

    /// <summary>Where the durable head is in the ring (the first record not on the backend).</summary>
    internal long HeadPosition => Volatile.Read(ref _headPos);

    /// <summary>The flushed sequence number the superblock holds.</summary>
    internal long ConfirmedFlushSeq => Volatile.Read(ref _flushedSeq);

    /// <summary>Why write-back stopped (the log is damaged or the backend refused for good), or null.</summary>
    public string? Failure => _failure;

    private static TaskCompletionSource NewSignal() => new(TaskCreationOptions.RunContinuationsAsynchronously);

    private static void Signal(ref TaskCompletionSource signal)
    {
        var old = Interlocked.Exchange(ref signal, NewSignal());
        old.TrySetResult();
    }

    /// <summary>Starts the background write-back; call once after open.</summary>
    public void Start() => _writeBack = Task.Run(WriteBackLoopAsync);

    // ---- append ----

    /// <summary>
    /// Appends whole blocks at <paramref name="volumeOffset"/> (block-aligned) as one or more records. Waits while the
    /// ring is full (back-pressure: write-back frees space). Acknowledged when the records are in the log file and
    /// the index points at them.
    /// </summary>
    /// <param name="volumeOffset">Where the blocks go on the volume.</param>
    /// <param name="data">Whole blocks.</param>
    /// <param name="clocked">The caller calls <see cref="AcknowledgementsLeaving"/> before the acknowledgement reaches
    /// its client (<see cref="IClockedAcknowledgements"/>); otherwise this method does before it returns.</param>
    /// <param name="cancellationToken">Cancels a wait for ring space.</param>
    public async ValueTask AppendAsync(long volumeOffset, ReadOnlyMemory<byte> data, bool clocked, CancellationToken cancellationToken)
    {
        ThrowIfFailed();
        // The write arrived now: it cannot depend on a write whose acknowledgement had not left before this value.
        long entered = Volatile.Read(ref _ackClock);
        try
        {
            while (!data.IsEmpty)
            {
                int blocks = Math.Min(data.Length / BlockBytes, LogFormat.RecordBlocksMax);
                var chunk = data[..(blocks * BlockBytes)];
                await AppendRecordAsync(volumeOffset, chunk, blocks, entered, cancellationToken).ConfigureAwait(false);
                volumeOffset += chunk.Length;
                data = data[chunk.Length..];
            }
        }
        finally
        {
            // Any outcome the caller hands on may be what a later write depends on (a failed write's records are
            // conservatively ordered too).
            if (!clocked) AcknowledgementsLeaving();
        }
    }

    private async ValueTask AppendRecordAsync(long volumeOffset, ReadOnlyMemory<byte> payload, int blocks, long entered, CancellationToken cancellationToken)
    {
        int headerBytes = LogFormat.HeaderBytes(blocks);
        long recordBytes = headerBytes + (long)blocks * BlockBytes;
        var sums = ArrayPool<ulong>.Shared.Rent(blocks);
        var header = ArrayPool<byte>.Shared.Rent(headerBytes);
        try
        {
            for (int i = 0; i < blocks; i++) sums[i] = LogFormat.Hash(payload.Span.Slice(i * BlockBytes, BlockBytes));

            long seq, pos;
            long wrapSeq = -1, wrapPos = 0;
            while (true)
            {
                Task wait;
                lock (_appendLock)
                {
                    long waste = _tailPos + recordBytes > _capacity ? _capacity - _tailPos : 0;
                    if (_usedBytes + waste + recordBytes <= _dataBytes)
                    {
                        if (waste > 0)
                        {
                            wrapSeq = _nextSeq++;
                            wrapPos = _tailPos;
                            Reserve(wrapSeq, wrapPos, waste, 0, 0, LogFormat.KindWrap, entered);
                            _tailPos = LogFormat.DataStart;
                        }
                        seq = _nextSeq++;
                        pos = _tailPos;
                        Reserve(seq, pos, recordBytes, volumeOffset, blocks, LogFormat.KindWrite, entered);
                        _tailPos += recordBytes;
                        if (_tailPos == _capacity) _tailPos = LogFormat.DataStart;
                        break;
                    }
                    wait = _spaceFreed.Task;
                    _spaceWanted = true;
                }
                // Wake write-back if it is batching: it makes its head durable now and frees what it wrote back.
                Signal(ref _recordWritten);
                ThrowIfFailed();
                await wait.WaitAsync(cancellationToken).ConfigureAwait(false);
            }

            if (wrapSeq >= 0)
            {
                var wrap = header.AsSpan(0, LogFormat.SectorBytes);
                LogFormat.EncodeHeader(wrap, LogFormat.KindWrap, _logTag, _incarnation, wrapSeq, 0, ReadOnlySpan<ulong>.Empty);
                WriteFully(wrap, wrapPos);
                MarkWritten(wrapSeq);
            }

            LogFormat.EncodeHeader(header.AsSpan(0, headerBytes), LogFormat.KindWrite, _logTag, _incarnation, seq, volumeOffset, sums.AsSpan(0, blocks));
            RandomAccess.Write(_file, [header.AsMemory(0, headerBytes), payload], pos);

            lock (_indexLock)
            {
                long blockPos = pos + headerBytes;
                long first = volumeOffset / BlockBytes;
                for (int i = 0; i < blocks; i++, blockPos += BlockBytes)
                {
                    ref var entry = ref CollectionsMarshal.GetValueRefOrAddDefault(_index, first + i, out bool exists);
                    if (!exists || entry.Seq < seq) entry = new DirtyBlock(blockPos, seq, sums[i]);
                }
            }
            MarkWritten(seq);
        }
        finally
        {
            ArrayPool<ulong>.Shared.Return(sums);
            ArrayPool<byte>.Shared.Return(header);
        }
    }

    private void Reserve(long seq, long pos, long bytes, long volumeOffset, int blocks, ushort kind, long entered)
    {
        ref var slot = ref _slots[seq % _slots.Length];
        // The slot's previous record must have been written back and released: the ring's byte bound keeps the
        // number of live records below the slot count.
        if (slot.Seq != 0 && slot.Seq >= Volatile.Read(ref _headSeq) && slot.Seq != seq)
            throw new InvalidOperationException($"write-back log {_path}: record slot {seq % _slots.Length} still holds live record {slot.Seq}");
        slot = new RecordSlot { Seq = seq, Pos = pos, Bytes = bytes, VolumeOffset = volumeOffset, Blocks = blocks, Kind = kind, Written = false, Entered = entered };
        _usedBytes += bytes;
    }

    private void MarkWritten(long seq)
    {
        lock (_appendLock)
        {
            ref var slot = ref _slots[seq % _slots.Length];
            // Read before the acknowledgement can leave (the tick that lets it leave comes after this).
            slot.Acked = Volatile.Read(ref _ackClock);
            slot.Written = true;
            while (_writtenThrough + 1 < _nextSeq && _slots[(_writtenThrough + 1) % _slots.Length] is { Written: true } s && s.Seq == _writtenThrough + 1)
                _writtenThrough++;
        }
        Signal(ref _recordWritten);
    }

    private void WriteFully(ReadOnlySpan<byte> data, long pos) => RandomAccess.Write(_file, data, pos);

    // ---- read ----

    /// <summary>
    /// If the log holds block <paramref name="block"/> newer than the backend, reads it into
    /// <paramref name="destination"/> (4 KiB), verifies its checksum and returns true. Returns false when the backend
    /// has the newest copy. A damaged block is a ChecksumMismatch, never returned.
    /// </summary>
    public bool TryReadBlock(long block, Span<byte> destination)
    {
        long epoch = Volatile.Read(ref _epoch);
        Interlocked.Increment(ref _readers[epoch & 1]);
        try
        {
            DirtyBlock entry;
            lock (_indexLock)
            {
                if (!_index.TryGetValue(block, out entry)) return false;
            }
            ReadFully(destination[..BlockBytes], entry.Pos);
            if (LogFormat.Hash(destination[..BlockBytes]) != entry.Sum)
                throw new StorageException(StorageError.ChecksumMismatch,
                    $"write-back cache {_path}: block at volume offset {block * BlockBytes} (record {entry.Seq}) fails its checksum; it is neither served nor written back");
            return true;
        }
        finally
        {
            Interlocked.Decrement(ref _readers[epoch & 1]);
        }
    }

    /// <summary>True when the log holds block <paramref name="block"/> newer than the backend (a hint: may change at once).</summary>
    public bool IsDirty(long block)
    {
        lock (_indexLock) return _index.ContainsKey(block);
    }

    private void ReadFully(Span<byte> destination, long pos)
    {
        int total = 0;
        while (total < destination.Length)
        {
            int n = RandomAccess.Read(_file, destination[total..], pos + total);
            if (n == 0) throw new StorageException(StorageError.IoError, $"write-back cache {_path}: short read at {pos + total}");
            total += n;
        }
    }

    // ---- flush and drain ----

    /// <summary>
    /// Makes every record appended before this call durable in the log: one fdatasync, shared by concurrent flushes
    /// (group commit). The superblock's flushed sequence number goes in the same sync: it lets replay tell damage (a
    /// flushed record that does not read back) from a torn tail, also for the newest record after a crash right after
    /// its flush. Head syncs of write-back take the same gate but come once per batch of operations, not per operation.
    /// </summary>
    public async ValueTask FlushAsync(CancellationToken cancellationToken)
    {
        ThrowIfFailed();
        long target;
        lock (_appendLock) target = _nextSeq - 1;
        while (true)
        {
            Task wait;
            lock (_appendLock)
            {
                if (_writtenThrough >= target) break;
                wait = _recordWritten.Task;
            }
            await wait.WaitAsync(cancellationToken).ConfigureAwait(false);
            ThrowIfFailed();
        }
        if (Volatile.Read(ref _syncedThrough) >= target) return;
        await _superGate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (Volatile.Read(ref _syncedThrough) >= target) return; // the sync this flush waited behind covered it
            long through;
            lock (_appendLock) through = _writtenThrough;
            _flushedSeq = through;
            WriteSuperLocked(_headSeq, _headPos);
            Sync();
            Interlocked.Increment(ref _flushSyncs);
            Volatile.Write(ref _syncedThrough, through);
        }
        finally
        {
            _superGate.Release();
        }
    }

    /// <summary>Waits until every record appended before this call is written back to the backend.</summary>
    public async ValueTask DrainAsync(CancellationToken cancellationToken)
    {
        long target;
        lock (_appendLock) target = _nextSeq;
        while (Volatile.Read(ref _appliedSeq) < target)
        {
            ThrowIfFailed();
            var wait = _applied.Task;
            if (Volatile.Read(ref _appliedSeq) >= target) break;
            await wait.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        ThrowIfFailed();
    }

    private void ThrowIfFailed()
    {
        var failure = _failure;
        if (failure is not null) throw new StorageException(StorageError.IoError, failure);
    }

    // ---- write-back ----

    // Most write-back operations between two head syncs. Bounds how much a restart after a crash writes back again
    // (those operations are on the backend already) and how long ring space stays held.
    private const int HeadBatchOpsMax = 64;

    // Most records one wave takes (bounds the planning done under _appendLock).
    private const int WaveRecordsMax = 1024;

    // One backend write of a wave: volume bytes [Start, End), staged at Offset of the staging buffer.
    private struct WaveOp
    {
        public long Start;
        public long End;
        public int Offset;
    }

    private readonly record struct WaveRecord(RecordSlot Slot, int Op);

    // Write-back goes in *waves* (decision 0014). A wave is a run of consecutive records, from the first not yet on the
    // backend, in which no record may depend on an earlier one of the run: each arrived before every earlier one was
    // acknowledged (the clock of acknowledgements, IClockedAcknowledgements), so no client can have ordered them, and a cacheless disk that lost power
    // with them in flight could hold any subset of them. The wave's records are coalesced into pairwise disjoint
    // backend writes (a record that continues a write inside one atomic unit — one RADOS object — joins it; one that
    // overlaps a write of the wave ends the wave), all in flight together (at most _waveOpsMax, _waveBytesMax), then
    // one backend flush; only then is the wave applied and the next one planned, since its records may depend on this
    // one's. A record that may depend on the wave joins it only as the continuation of a wave of one write, landing
    // atomically with what it depends on. So whenever the cache can be lost, the backend
    // holds every record before the wave, some of the wave's writes, and nothing after: closed under "acknowledged
    // before this write arrived", which is guarantee 2. Writes from one writer at depth 1 each depend on the one
    // before: their waves are one record long, and the backend is an ordered prefix of the log at every instant.
    //
    // The head — the first record not on the backend — is made durable in the superblock once per *batch* of
    // operations, not once per wave, under one rule: the operations of a batch touch pairwise disjoint blocks. Why that
    // is enough: after a crash, replay starts at the durable head and writes the batch's records again, one at a time
    // (replayed records carry no arrival stamps), over a backend that holds some of them. Rewriting record j puts back
    // the value it already holds or would hold (no other record of the batch touched its blocks), and j's own
    // dependencies are records before it, so the backend stays closed under dependencies at every instant, even if the
    // cache is lost during that replay. An operation that overlaps the batch first ends it (head sync); so do a full
    // batch, a writer waiting for ring space, and _headIdleDelay without a new record.
    private async Task WriteBackLoopAsync()
    {
        var token = _stop.Token;
        int stagingBytes = Math.Max(_waveBytesMax, Math.Max(_atomicUnitBytes, LogFormat.RecordBlocksMax * BlockBytes));
        var buffer = ArrayPool<byte>.Shared.Rent(stagingBytes);
        var sums = new ulong[LogFormat.RecordBlocksMax];
        var batch = new List<RecordSlot>();           // records written back since the durable head
        var batchBlocks = new List<(long First, long End)>(); // the block ranges of the batch's operations
        var records = new List<WaveRecord>();
        var ops = new List<WaveOp>();
        var writes = new Task<bool>[_waveOpsMax];
        long appliedPos = _headPos;
        int batchOps = 0;
        try
        {
            while (!token.IsCancellationRequested)
            {
                // Wait for the next record to be written into the log.
                long seq = _appliedSeq;
                RecordSlot first;
                Task wait;
                lock (_appendLock)
                {
                    wait = _recordWritten.Task;
                    first = _slots[seq % _slots.Length];
                }
                bool ready = seq < Interlocked.Read(ref _nextSeq) && first.Seq == seq && first.Written;
                if (batch.Count > 0 && (_spaceWanted || (!ready && !await WaitForRecordAsync(wait, token).ConfigureAwait(false))))
                {
                    await AdvanceAsync(seq, appliedPos, batch, token).ConfigureAwait(false);
                    batch.Clear();
                    batchBlocks.Clear();
                    batchOps = 0;
                    continue;
                }
                if (!ready)
                {
                    if (batch.Count == 0) await wait.WaitAsync(token).ConfigureAwait(false);
                    continue;
                }

                if (first.Kind == LogFormat.KindWrap)
                {
                    batch.Add(first);
                    appliedPos = LogFormat.DataStart;
                    Volatile.Write(ref _appliedSeq, seq + 1);
                    Signal(ref _applied);
                    continue;
                }

                long firstBlock = first.VolumeOffset / BlockBytes;
                if (batch.Count > 0 && (batchOps >= HeadBatchOpsMax || Overlaps(batchBlocks, firstBlock, firstBlock + first.Blocks)))
                {
                    await AdvanceAsync(seq, appliedPos, batch, token).ConfigureAwait(false);
                    batch.Clear();
                    batchBlocks.Clear();
                    batchOps = 0;
                }

                // Plan the wave and read its records into place. A damaged record ends the wave before it; first in
                // its wave, it stops write-back (the backend holds every record before it).
                long limit = long.MaxValue;
                while (true)
                {
                    PlanWave(seq, limit, stagingBytes, Math.Min(_waveOpsMax, HeadBatchOpsMax - batchOps), batchBlocks, records, ops);
                    var (damaged, verdict) = StageWave(records, ops, buffer, sums);
                    if (verdict is null) break;
                    if (damaged == seq)
                    {
                        Fail(verdict);
                        return;
                    }
                    limit = damaged;
                }

                if (!await WriteWaveAsync(ops, buffer, writes, token).ConfigureAwait(false)) return;

                // The backend serves these blocks now: drop the index entries (a reader that found one still reads the
                // record safely: its ring space is freed only after the head sync and a reader epoch, AdvanceAsync).
                lock (_indexLock)
                {
                    foreach (var (r, _) in records)
                    {
                        long b0 = r.VolumeOffset / BlockBytes;
                        for (int i = 0; i < r.Blocks; i++)
                        {
                            if (_index.TryGetValue(b0 + i, out var e) && e.Seq == r.Seq) _index.Remove(b0 + i);
                        }
                    }
                }
                var last = records[^1].Slot;
                appliedPos = last.Pos + last.Bytes;
                if (appliedPos == _capacity) appliedPos = LogFormat.DataStart;
                foreach (var (r, _) in records) batch.Add(r);
                foreach (var o in ops) batchBlocks.Add((o.Start / BlockBytes, o.End / BlockBytes));
                batchOps += ops.Count;
                Interlocked.Increment(ref _waves);
                Interlocked.Add(ref _waveOps, ops.Count);
                Volatile.Write(ref _appliedSeq, last.Seq + 1);
                Signal(ref _applied);
            }
        }
        catch (OperationCanceledException) when (token.IsCancellationRequested)
        {
        }
        catch (Exception e)
        {
            Fail($"write-back cache {_path}: write-back stopped: {e.Message}");
            _logger.LogError(e, "write-back of {Path} stopped", _path);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
            // DisposeAsync records how far write-back got.
            Volatile.Write(ref _appliedPos, appliedPos);
        }
    }

    // Plans the wave that starts at record seq (see WriteBackLoopAsync): written records before limit, none of which
    // may depend on an earlier one of the wave (but for continuations of a one-write wave) or touches the head batch's
    // blocks, in at most opsMax disjoint
    // operations whose bytes fit the staging buffer. Always takes record seq itself.
    private void PlanWave(long seq, long limit, int stagingBytes, int opsMax, List<(long First, long End)> batchBlocks,
        List<WaveRecord> records, List<WaveOp> ops)
    {
        records.Clear();
        ops.Clear();
        long minAcked = long.MaxValue;
        long staged = 0;
        lock (_appendLock)
        {
            for (long next = seq; next < _nextSeq && next < limit && records.Count < WaveRecordsMax; next++)
            {
                var s = _slots[next % _slots.Length];
                if (s.Seq != next || !s.Written || s.Kind != LogFormat.KindWrite) break;
                long start = s.VolumeOffset, end = start + (long)s.Blocks * BlockBytes;
                int op;
                if (records.Count == 0)
                {
                    op = 0;
                    ops.Add(new WaveOp { Start = start, End = end });
                    staged = end - start;
                }
                else
                {
                    if (Overlaps(batchBlocks, start / BlockBytes, end / BlockBytes)) break;
                    if (s.Entered > minAcked)
                    {
                        // It arrived after an acknowledgement of the wave could have left, so it may depend on it: it
                        // can only continue a wave of one operation, landing with what it depends on in one atomic
                        // write (a sequential writer's records go back in operations of one atomic unit).
                        if (ops.Count != 1 || start != ops[0].End || !InOneUnit(ops[0].Start, end)) break;
                        op = 0;
                    }
                    else
                    {
                        op = JoinableOp(ops, start, end, out bool conflict);
                        if (conflict) break;
                    }
                    if (op >= 0)
                    {
                        ref var o = ref CollectionsMarshal.AsSpan(ops)[op];
                        long joinedStart = Math.Min(o.Start, start), joinedEnd = Math.Max(o.End, end);
                        long grown = (joinedEnd - joinedStart) - (o.End - o.Start);
                        if (staged + grown > stagingBytes) break;
                        staged += grown;
                        o.Start = joinedStart;
                        o.End = joinedEnd;
                    }
                    else
                    {
                        if (ops.Count >= opsMax || staged + (end - start) > stagingBytes) break;
                        op = ops.Count;
                        ops.Add(new WaveOp { Start = start, End = end });
                        staged += end - start;
                    }
                }
                records.Add(new WaveRecord(s, op));
                minAcked = Math.Min(minAcked, s.Acked);
            }
        }
    }

    // The operation of the wave that blocks [start, end) continue inside one atomic unit (so the two land together),
    // or -1. conflict: they overlap an operation, so they cannot be in this wave: two writes in flight to the same
    // blocks may land in either order, and joining them into one would let replay (which rewrites the batch's records
    // one at a time) put back the older data over the newer.
    private int JoinableOp(List<WaveOp> ops, long start, long end, out bool conflict)
    {
        int adjacent = -1;
        conflict = false;
        for (int i = 0; i < ops.Count; i++)
        {
            var o = ops[i];
            if (start < o.End && o.Start < end)
            {
                conflict = true;
                return -1;
            }
            if (adjacent < 0 && (start == o.End || end == o.Start) && InOneUnit(Math.Min(o.Start, start), Math.Max(o.End, end))) adjacent = i;
        }
        return adjacent;
    }

    private bool InOneUnit(long start, long end) => start / _atomicUnitBytes == (end - 1) / _atomicUnitBytes;

    // Gives each operation its place in the staging buffer and reads the wave's records there in record order (a later
    // record's blocks overwrite an earlier one's). Returns the first damaged record and why, or (-1, null).
    private (long Damaged, string? Verdict) StageWave(List<WaveRecord> records, List<WaveOp> ops, byte[] buffer, ulong[] sums)
    {
        var placed = CollectionsMarshal.AsSpan(ops);
        int offset = 0;
        for (int i = 0; i < placed.Length; i++)
        {
            placed[i].Offset = offset;
            offset += (int)(placed[i].End - placed[i].Start);
        }
        foreach (var (r, op) in records)
        {
            var o = placed[op];
            var verdict = ReadRecordPayload(r, buffer.AsSpan(o.Offset + (int)(r.VolumeOffset - o.Start), r.Blocks * BlockBytes), sums);
            if (verdict is not null) return (r.Seq, verdict);
        }
        return (-1, null);
    }

    // All of a wave's operations in flight together, then one backend flush: the wave is durable on the backend before
    // the next one (whose records may depend on it) starts. False when the backend refused for good (write-back failed).
    private async ValueTask<bool> WriteWaveAsync(List<WaveOp> ops, byte[] buffer, Task<bool>[] writes, CancellationToken token)
    {
        bool ok = true;
        if (ops.Count == 1)
        {
            var o = ops[0];
            ok = await WriteOpAsync(o.Start, buffer.AsMemory(o.Offset, (int)(o.End - o.Start)), token).ConfigureAwait(false);
        }
        else
        {
            for (int i = 0; i < ops.Count; i++)
            {
                var o = ops[i];
                writes[i] = WriteOpAsync(o.Start, buffer.AsMemory(o.Offset, (int)(o.End - o.Start)), token);
            }
            // Every write is awaited, also after one failed: the staging buffer must not be reused under a write.
            Exception? error = null;
            for (int i = 0; i < ops.Count; i++)
            {
                try { ok &= await writes[i].ConfigureAwait(false); }
                catch (Exception e) { error ??= e; }
                writes[i] = null!;
            }
            if (error is not null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(error);
        }
        return ok && await WriteOpAsync(0, ReadOnlyMemory<byte>.Empty, token).ConfigureAwait(false);
    }

    // One backend write (or, with no data, a backend flush), retried while the backend fails in a way that may pass:
    // the data is safe in the log. False when the backend refused for good (write-back has failed).
    private async Task<bool> WriteOpAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken token)
    {
        while (true)
        {
            try
            {
                if (data.IsEmpty) await _backend.FlushAsync(token).ConfigureAwait(false);
                else await _backend.WriteAsync(offset, data, fua: false, token).ConfigureAwait(false);
                return true;
            }
            catch (StorageException e) when (e.Error is not (StorageError.Closed or StorageError.ReadOnly or StorageError.OutOfRange or StorageError.InvalidArgument))
            {
                _logger.LogWarning("write-back of {Path} to the backend failed, retrying: {Message}", _path, e.Message);
                await Task.Delay(BackendRetryDelay, token).ConfigureAwait(false);
            }
            catch (StorageException e)
            {
                Fail($"write-back cache {_path}: the backend refused write-back for good ({e.Error}): {e.Message}");
                return false;
            }
        }
    }

    private static bool Overlaps(List<(long First, long End)> ranges, long first, long end)
    {
        foreach (var (f, e) in ranges)
        {
            if (first < e && f < end) return true;
        }
        return false;
    }

    // Waits for the next record up to _headIdleDelay; false when none came (or a writer wants ring space).
    private async ValueTask<bool> WaitForRecordAsync(Task recordWritten, CancellationToken token)
    {
        if (recordWritten.IsCompleted) return true;
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(token);
        timeout.CancelAfter(_headIdleDelay);
        try
        {
            await recordWritten.WaitAsync(timeout.Token).ConfigureAwait(false);
            return !_spaceWanted;
        }
        catch (OperationCanceledException) when (!token.IsCancellationRequested)
        {
            return false;
        }
    }

    // Reads a record back from the log and checks it against what was appended; returns why it is unusable, or null.
    private string? ReadRecordPayload(in RecordSlot r, Span<byte> payload, Span<ulong> sums)
    {
        int headerBytes = LogFormat.HeaderBytes(r.Blocks);
        var header = ArrayPool<byte>.Shared.Rent(headerBytes);
        try
        {
            ReadFully(header.AsSpan(0, headerBytes), r.Pos);
            if (!LogFormat.TryDecodeHeader(header.AsSpan(0, headerBytes), _logTag, out var h, out _, sums)
                || h.Seq != r.Seq || h.VolumeOffset != r.VolumeOffset || h.Blocks != r.Blocks)
                return $"write-back cache {_path}: record {r.Seq} is damaged (header); it and every later record stay out of the backend, which holds the writes before it";
            ReadFully(payload, r.Pos + headerBytes);
            for (int i = 0; i < r.Blocks; i++)
            {
                if (LogFormat.Hash(payload.Slice(i * BlockBytes, BlockBytes)) != sums[i])
                    return $"write-back cache {_path}: record {r.Seq} is damaged (block at volume offset {r.VolumeOffset + (long)i * BlockBytes}); it and every later record stay out of the backend, which holds the writes before it";
            }
            return null;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(header);
        }
    }

    // After a batch of write-back operations is durable on the backend: record the new head durably (with the flushed
    // sequence number), wait out readers of the released space, then let appends reuse it.
    private async Task AdvanceAsync(long headSeq, long headPos, List<RecordSlot> released, CancellationToken token)
    {
        await _superGate.WaitAsync(token).ConfigureAwait(false);
        try
        {
            WriteSuperDurableLocked(headSeq, headPos);
            Interlocked.Increment(ref _headSyncs);
        }
        finally
        {
            _superGate.Release();
        }

        // A reader registers in the current epoch before it looks at the index. Moving to a new epoch and waiting for
        // the old one's readers to leave means every reader that could have seen a released entry is done; readers
        // of the new epoch looked after the entries were removed (when their operation reached the backend).
        long old = Interlocked.Increment(ref _epoch) - 1;
        var spin = new SpinWait();
        while (Interlocked.Read(ref _readers[old & 1]) != 0) spin.SpinOnce();

        long bytes = 0;
        foreach (var r in released) bytes += r.Bytes;
        lock (_appendLock)
        {
            _usedBytes -= bytes;
            _spaceWanted = false;
            Volatile.Write(ref _headPos, headPos);
            Volatile.Write(ref _headSeq, headSeq);
        }
        Signal(ref _spaceFreed);
    }

    private void Fail(string reason)
    {
        if (_failure is not null) return;
        _failure = reason;
        _logger.LogError("{Reason}", reason);
        Signal(ref _applied);
        Signal(ref _spaceFreed);
        Signal(ref _recordWritten);
    }

    // ---- superblock and file ----

    private void WriteSuperLocked(long headSeq, long headPos)
    {
        Span<byte> slot = stackalloc byte[LogFormat.SectorBytes];
        long pos = EncodeNextSuper(slot, headSeq, headPos);
        WriteFully(slot, pos);
    }

    // Writes the superblock and makes it durable, and only it. A head sync needs no more: the records before the head
    // are durable on the backend (the wave's backend flush), and the flushed sequence number the superblock carries
    // was made durable, with the records it vouches for, by the flush that set it (flushes fdatasync the whole file,
    // under the same gate). An fdatasync of the whole file here would also write every record appended since the last
    // flush: a writer that never flushes leaves hundreds of MiB in the page cache, and one head sync took 184 ms of
    // write-back time to write them (docs/PERFORMANCE.md, "The sequential drain: where a wave's time goes"); the slot
    // alone took 0.3-3.7 ms. pwritev2 with RWF_DSYNC writes the slot and waits for it as O_DSYNC would, device cache
    // flush included; where the kernel or file system refuses the flag, the whole file is synced as before.
    private void WriteSuperDurableLocked(long headSeq, long headPos)
    {
        Span<byte> slot = stackalloc byte[LogFormat.SectorBytes];
        long pos = EncodeNextSuper(slot, headSeq, headPos);
        if (!_slotSyncUnsupported && TryWriteDsync(slot, pos))
        {
            Interlocked.Increment(ref _slotSyncs);
            return;
        }
        WriteFully(slot, pos);
        Sync();
    }

    // The next generation's superblock into `slot`; returns where it goes (the two slots alternate, so a torn write of
    // one leaves the other).
    private long EncodeNextSuper(Span<byte> slot, long headSeq, long headPos)
    {
        _generation++;
        var super = new LogFormat.Super(_logId, _identity, _capacity, _generation, _incarnation, headSeq, headPos, _flushedSeq);
        LogFormat.EncodeSuper(slot, super);
        return (_generation & 1) * LogFormat.SectorBytes;
    }

    // One write made durable by itself (RWF_DSYNC). False, once and for good, when the kernel or file system does not
    // know the flag; any other failure is a failed sync (see Sync): the log stops taking writes.
    private bool TryWriteDsync(ReadOnlySpan<byte> data, long pos)
    {
        nint written = LogFileCalls.WriteDurable(_file, data, pos, out int errno);
        if (written == data.Length) return true;
        if (written < 0 && errno is LogFileCalls.EINVAL or LogFileCalls.ENOSYS or LogFileCalls.EOPNOTSUPP)
        {
            _slotSyncUnsupported = true;
            _logger.LogInformation("write-back cache {Path}: durable superblock writes (RWF_DSYNC) are not supported here ({Error}); head syncs fdatasync the log", _path, Marshal.GetPInvokeErrorMessage(errno));
            return false;
        }
        var message = written < 0
            ? $"write-back cache {_path}: durable superblock write failed: {Marshal.GetPInvokeErrorMessage(errno)}"
            : $"write-back cache {_path}: durable superblock write was short ({written} of {data.Length} bytes)";
        Fail(message);
        throw new StorageException(StorageError.IoError, message);
    }

    private void Sync()
    {
        if (LogFileCalls.DataSync(_file) is int errno and not 0)
        {
            var message = $"write-back cache {_path}: fdatasync failed: {Marshal.GetPInvokeErrorMessage(errno)}";
            // After a failed sync the kernel may have dropped dirty pages: nothing in the log can be trusted to be
            // durable any more, so the log stops taking writes.
            Fail(message);
            throw new StorageException(StorageError.IoError, message);
        }
    }


    /// <summary>Stops write-back (without draining: the log keeps what is not written back) and closes the file.</summary>
    public async ValueTask DisposeAsync()
    {
        if (_stop.IsCancellationRequested) return;
        _stop.Cancel();
        if (_writeBack is not null)
        {
            try { await _writeBack.ConfigureAwait(false); }
            catch (OperationCanceledException) { }
        }
        // The gate is kept: nothing writes the superblock after this one.
        await _superGate.WaitAsync().ConfigureAwait(false);
        if (_failure is null)
        {
            try
            {
                // The records first, then the superblock that vouches for them (two syncs: closing is rare). The head is
                // where write-back got: those operations are durable on the backend.
                long through;
                lock (_appendLock) through = _writtenThrough;
                Sync();
                Volatile.Write(ref _syncedThrough, through);
                _flushedSeq = through;
                long appliedSeq = Volatile.Read(ref _appliedSeq);
                long appliedPos = appliedSeq == _headSeq ? _headPos : Volatile.Read(ref _appliedPos);
                WriteSuperLocked(appliedSeq, appliedPos);
                Sync();
            }
            catch (StorageException)
            {
                // Already logged; the file is closed below either way.
            }
        }
        _file.Dispose();
        _stop.Dispose();
    }
}
