using System.Diagnostics;
using System.Text.Json;
using Microsoft.Extensions.Logging;

namespace Platter.Storage.Internal;

/// <summary>
/// Online scrub: reads every block the maps reference and verifies its CRC32C while the store serves, so damage in
/// data nobody reads is found before a reader needs it.
///
/// What it reads, each physical block once. The whole store: every version's additions over its parent (the blocks it
/// maps that its parent does not map there; <see cref="Versions.VisitAdditions"/>), since versions share a block only
/// along their lineage and at the same logical block. Named targets: each target's mapped blocks, less those an
/// earlier target maps at the same place. Versions are taken in order of their layer id (whole store) or of the
/// target list; the resume point is (that key, logical block), so it survives catalog changes: a snapshot taken
/// during a scrub takes over the volume's layer id and with it the position reached.
///
/// How. A batch (<see cref="EngineLimits.ScrubBatchBlocksMax"/> blocks) is gathered from the maps under each
/// version's lock in short holds (<see cref="EngineLimits.ScrubLockedVisitsMax"/> entries), sorted by physical block
/// and read in runs of up to 1 MiB (spanning small gaps, <see cref="EngineLimits.ScrubGapBlocksMax"/>) with no engine
/// lock held, paced by the I/O budget. Reads go ahead of the checking (<see cref="ScrubReadAhead"/>: reader threads,
/// O_DIRECT into aligned slots) so the disk reads the next runs while this thread computes the CRCs of the last one;
/// O_DIRECT because a scrub must check what the disk holds, not a cached copy, and must not push clients' data out of
/// the page cache. The comparison is the read path's own (<see cref="BlockVerify"/>).
///
/// The race with frees. The entries were looked up without holding off reclaim, so by the time a block is read it
/// may have been freed, punched or reused by another write: a mismatch is only a candidate. It is confirmed the way a
/// client read is protected: inside a reader epoch (<see cref="EpochGate"/>: no block freed after entering can be
/// handed out again before leaving) the scrubber looks for every version that still maps that physical block at
/// that logical block, then reads it again and compares it with the CRC those versions hold. No referrer: the block
/// was freed, nothing to report. A match now: it changed under the scrub, nothing to report. A mismatch: bad, with
/// every referrer named. Nothing is repaired: reads of the block keep failing.
///
/// Persistence: <c>STORE/scrub.json</c> (docs/ON_DISK_FORMAT.md), written every
/// <see cref="EngineLimits.ScrubPersistInterval"/> and on stop, pause and finish. A scrub running when the store
/// closes (or the process dies) resumes when it opens again. A store without the file has never been scrubbed; a file
/// that cannot be read is logged and ignored (it is progress, never data).
///
/// Locks: <see cref="_lock"/> guards the progress and the bad-block list and is a leaf (held for a few instructions;
/// never across I/O or while taking an engine lock). <see cref="_persistLock"/> serialises writes of the progress
/// file and is taken with no engine lock held. The scrubber takes a volume's lock alone, never two at once.
/// </summary>
internal sealed class Scrubber : IDisposable
{
    public const string FileName = "scrub.json";
    private const int FileFormat = 1;

    private readonly EngineParts _parts;
    private readonly Func<List<VolumeState>> _volumes;
    private readonly Func<string, MapOwner> _resolve;
    private readonly string? _path; // null: salvage, nothing is written and no scrub runs
    private readonly ILogger _logger;

    private readonly object _lock = new();
    private readonly object _persistLock = new();
    private Progress _progress = new();
    private readonly Dictionary<long, BadEntry> _bad = new();
    private volatile int _badCount;
    private Thread? _worker;
    // 0: run; 1: pause (scrub stop); 2: close (the store closes: stays "running" on disk, resumes at next open).
    private volatile int _stopRequest;
    private readonly ManualResetEventSlim _wake = new(false);
    private volatile bool _disposed;

    // Measured rate of the current session: bytes read since it started, and when.
    private long _sessionBytes;
    private long _sessionStart;

    /// <summary>Test hook: called on the scrub thread before each contiguous run is read (first physical block, count).</summary>
    internal Action<long, int>? BeforeRunRead { get; set; }

    /// <summary>Test hook: called on the scrub thread after each batch is accounted (the batch's block count).</summary>
    internal Action<int>? AfterBatch { get; set; }

    // volumes: every live volume (the catalog's list). resolve: a target name (volume or volume@snapshot) to its
    // version, throwing NotFound. path: the progress file, or null when nothing may be written (salvage).
    public Scrubber(EngineParts parts, Func<List<VolumeState>> volumes, Func<string, MapOwner> resolve, string? path, ILogger logger)
    {
        _parts = parts;
        _volumes = volumes;
        _resolve = resolve;
        _path = path;
        _logger = logger;
    }

    /// <summary>At open, once the store can serve: loads the progress file and resumes a scrub that was running.</summary>
    public void Load()
    {
        if (_path is null || !File.Exists(_path)) return;
        Progress loaded;
        List<BadEntry> bad;
        try
        {
            (loaded, bad) = Decode(File.ReadAllBytes(_path));
        }
        catch (Exception e) when (e is IOException or JsonException or FormatException or InvalidOperationException or KeyNotFoundException or UnauthorizedAccessException)
        {
            _logger.LogWarning("Ignoring the scrub progress file {Path}: {Error} (a new scrub starts from the beginning)", _path, e.Message);
            return;
        }
        lock (_lock)
        {
            _progress = loaded;
            foreach (var b in bad) _bad[b.Pba] = b;
            _badCount = _bad.Count;
        }
        // Bad blocks freed between the last write of the file and a crash: no longer referenced, no longer listed.
        foreach (var b in bad)
        {
            if (FindReferrers(b.Pba, b.Block, b.Crc).Count == 0)
                lock (_lock) _bad.Remove(b.Pba);
        }
        lock (_lock) _badCount = _bad.Count;
        if (loaded.State == ScrubState.Running)
        {
            _logger.LogInformation("Resuming the scrub of {Targets} at {Checked} of {Total} blocks", TargetText(loaded.Targets), loaded.BlocksChecked, loaded.BlocksTotal);
            lock (_lock) StartWorker();
        }
    }

    public ScrubStatus Start(IReadOnlyList<string> targets, long? rateBytesPerSecond, bool restart)
    {
        if (_path is null)
            throw new StorageException(StorageError.ReadOnly, "the store is open for salvage (read-only): scrub it after it is repaired, or use `platter check --verify-checksums`");
        if (rateBytesPerSecond < 0) throw new StorageException(StorageError.InvalidArgument, "a scrub rate must be 0 (no limit) or more bytes per second");
        var names = new List<string>();
        foreach (var t in targets)
        {
            var version = _resolve(t); // NotFound for a name that is neither a volume nor a snapshot
            if (!names.Contains(version.DisplayName)) names.Add(version.DisplayName);
        }
        Thread? previous = null;
        lock (_lock)
        {
            ThrowIfDisposed();
            bool same = _progress.Targets.SequenceEqual(names);
            if (_progress.State == ScrubState.Running)
            {
                if (!same)
                    throw new StorageException(StorageError.InUse,
                        $"a scrub of {TargetText(_progress.Targets)} is running ({Percent(_progress):F1}% done): `platter scrub stop` it first");
                if (rateBytesPerSecond is { } r) _progress.RateBytesPerSecond = r;
                if (restart)
                {
                    // A restart of a running scrub: stop this worker first (outside the lock), then start afresh.
                    _stopRequest = 1;
                    _wake.Set();
                    previous = _worker;
                }
            }
        }
        if (previous is null && !restart && Status() is { State: ScrubState.Running } running) return running;
        if (previous is not null && previous != Thread.CurrentThread) previous.Join();
        lock (_lock)
        {
            ThrowIfDisposed();
            if (_progress.State == ScrubState.Running) throw new StorageException(StorageError.InUse, "another scrub was started meanwhile");
            bool resume = !restart && _progress.State == ScrubState.Paused && _progress.Targets.SequenceEqual(names);
            if (resume)
            {
                if (rateBytesPerSecond is { } r) _progress.RateBytesPerSecond = r;
            }
            else
            {
                _progress = new Progress
                {
                    Targets = [.. names],
                    RateBytesPerSecond = rateBytesPerSecond ?? EngineLimits.ScrubRateBytesPerSecondDefault,
                    BlocksTotal = TotalBlocks(names),
                    StartedUtc = DateTimeOffset.UtcNow,
                };
            }
            _progress.State = ScrubState.Running;
            _progress.FinishedUtc = null;
            _logger.LogInformation("{What} the scrub of {Targets} ({Rate})", resume ? "Resuming" : "Starting", TargetText(names), RateText(_progress.RateBytesPerSecond));
            StartWorker();
        }
        Persist();
        return Status();
    }

    /// <summary>Pauses a running scrub (waits until its worker has stopped and its progress is on disk).</summary>
    public ScrubStatus Stop()
    {
        Thread? worker;
        lock (_lock)
        {
            worker = _progress.State == ScrubState.Running ? _worker : null;
            if (worker is not null)
            {
                _stopRequest = 1;
                _wake.Set();
            }
        }
        if (worker is not null && worker != Thread.CurrentThread) worker.Join();
        return Status();
    }

    /// <summary>Test hook: asks the worker to stop after its current batch as a closing store would (no join).</summary>
    internal void RequestCloseForTests()
    {
        _stopRequest = 2;
        _wake.Set();
    }

    /// <summary>Waits for the scrub thread to end (tests).</summary>
    internal void WaitForWorker()
    {
        Thread? worker;
        lock (_lock) worker = _worker;
        worker?.Join();
    }

    public ScrubStatus Status()
    {
        ScrubStatus status;
        List<BadEntry> bad;
        lock (_lock) (status, bad) = (StatusLocked(), [.. _bad.Values.OrderBy(b => b.Pba)]);
        if (bad.Count == 0) return status;
        // Referrers are looked up after _lock (a leaf) is released: the catalog's and the volumes' locks come first.
        var listed = new List<BadBlock>();
        foreach (var b in bad)
        {
            var refs = FindReferrers(b.Pba, b.Block, b.Crc);
            // None: freed or overwritten since (NoteFreed drops it once that free is durable).
            if (refs.Count == 0) continue;
            listed.Add(new BadBlock(b.Pba, b.Reason, b.FoundUtc, [.. refs.Select(r => new BlockReference(r.Name, b.Block << EngineLimits.BlockShift))]));
        }
        return status with { BadBlocks = listed };
    }

    // Progress, rate and estimate, without the bad blocks (they need the volumes' locks). Caller holds _lock.
    private ScrubStatus StatusLocked()
    {
        var p = _progress;
        double rate = 0;
        double? eta = null;
        if (p.State == ScrubState.Running)
        {
            double seconds = Stopwatch.GetElapsedTime(Volatile.Read(ref _sessionStart)).TotalSeconds;
            if (seconds > 0) rate = Interlocked.Read(ref _sessionBytes) / seconds;
            long remaining = Math.Max(0, p.BlocksTotal - p.BlocksChecked) << EngineLimits.BlockShift;
            if (rate > 0) eta = remaining / rate;
            else if (p.RateBytesPerSecond > 0) eta = (double)remaining / p.RateBytesPerSecond;
        }
        return new ScrubStatus(p.State, [.. p.Targets], p.RateBytesPerSecond, Math.Max(p.BlocksTotal, p.BlocksChecked), p.BlocksChecked,
            p.BadBlocksFound, rate, eta, p.StartedUtc, p.FinishedUtc, []);
    }

    /// <summary>
    /// The committer's hook: blocks whose free is durable. A listed bad block that is freed (its last referrer
    /// overwrote, trimmed or deleted it) leaves the list; it may be handed out again, with new content and checksum.
    /// </summary>
    public void NoteFreed(List<long> frees)
    {
        if (_badCount == 0) return;
        lock (_lock)
        {
            foreach (var pba in frees) _bad.Remove(pba);
            _badCount = _bad.Count;
        }
    }

    private void StartWorker()
    {
        _stopRequest = 0;
        _wake.Reset();
        Volatile.Write(ref _sessionStart, Stopwatch.GetTimestamp());
        Interlocked.Exchange(ref _sessionBytes, 0);
        _worker = new Thread(Run) { IsBackground = true, Name = "platter-scrub" };
        _worker.Start();
    }

    // ---- The scrub thread ----

    private readonly record struct Item(long Pba, uint Crc, long Block);

    private void Run()
    {
        var batch = new List<Item>(EngineLimits.ScrubBatchBlocksMax);
        var pacer = new Pacer();
        var lastPersist = Stopwatch.GetTimestamp();
        bool finished = false;
        var inFlight = new Queue<(int First, int End, int Slot)>(EngineLimits.ScrubReadsAheadMax);
        var entries = new BlockEntry[EngineLimits.ScrubRunBlocksMax];
        bool saidThroughCache = false;
        try
        {
            // Its reader threads live as long as this session; disposing waits for every read it started.
            using var reads = new ScrubReadAhead(_parts.Data, EngineLimits.ScrubReadsAheadMax,
                EngineLimits.ScrubRunBlocksMax << EngineLimits.BlockShift, EngineLimits.ScrubReaderThreads);
            while (_stopRequest == 0)
            {
                string[] targets;
                long key, block;
                lock (_lock) (targets, key, block) = (_progress.Targets, _progress.CursorKey, _progress.CursorBlock);
                batch.Clear();
                var next = Gather(targets, key, block, batch);
                batch.Sort((a, b) => a.Pba.CompareTo(b.Pba));
                int found = CheckBatch(batch, reads, inFlight, entries, ref pacer);
                if (!saidThroughCache && reads.ReadThroughCache)
                {
                    saidThroughCache = true;
                    _logger.LogWarning("The scrub reads through the page cache: the data file's file system refused O_DIRECT, so a block still cached is checked as cached and the scrub evicts clients' cached data");
                }
                Interlocked.Add(ref _parts.Counters.ScrubBlocksChecked, batch.Count);
                lock (_lock)
                {
                    _progress.BlocksChecked += batch.Count;
                    _progress.BadBlocksFound += found;
                    if (next is { } n) (_progress.CursorKey, _progress.CursorBlock) = n;
                    else finished = true;
                }
                AfterBatch?.Invoke(batch.Count);
                if (finished) break;
                if (Stopwatch.GetElapsedTime(lastPersist) >= EngineLimits.ScrubPersistInterval)
                {
                    Persist();
                    lastPersist = Stopwatch.GetTimestamp();
                }
            }
        }
        catch (StorageException e) when (e.Error == StorageError.Closed)
        {
            // The store is closing under us: what was accounted stays; the scrub resumes at the next open.
        }
        catch (Exception e)
        {
            _logger.LogError(e, "The scrub stopped on an unexpected error; `platter scrub start` resumes it");
            lock (_lock) _progress.State = ScrubState.Paused;
        }
        lock (_lock)
        {
            if (finished)
            {
                _progress.State = ScrubState.Finished;
                _progress.FinishedUtc = DateTimeOffset.UtcNow;
                _progress.BlocksTotal = _progress.BlocksChecked;
                _logger.Log(_progress.BadBlocksFound > 0 ? LogLevel.Error : LogLevel.Information,
                    "Scrub of {Targets} finished: {Checked} blocks checked, {Bad} bad", TargetText(_progress.Targets), _progress.BlocksChecked, _progress.BadBlocksFound);
            }
            else if (_stopRequest == 1 && _progress.State == ScrubState.Running)
            {
                _progress.State = ScrubState.Paused;
                _logger.LogInformation("Scrub paused at {Checked} of {Total} blocks", _progress.BlocksChecked, _progress.BlocksTotal);
            }
            // A close keeps the state "running": the next open resumes it.
        }
        Persist();
    }

    /// <summary>
    /// Gathers the next batch from the cursor (key, block). Returns where the next batch starts, or null when the
    /// targets hold nothing more.
    /// </summary>
    private (long Key, long Block)? Gather(string[] targets, long cursorKey, long cursorBlock, List<Item> batch)
    {
        var units = new List<(long Key, MapOwner Version)>();
        if (targets.Length == 0)
        {
            foreach (var v in _volumes())
            {
                lock (v.Lock)
                {
                    if (v.Deleted) continue;
                    foreach (var s in v.Snapshots) units.Add((s.LayerId, s));
                    units.Add((v.LayerId, v));
                }
            }
            units.Sort((a, b) => a.Key.CompareTo(b.Key));
        }
        else
        {
            for (int i = 0; i < targets.Length; i++)
            {
                try
                {
                    units.Add((i, _resolve(targets[i])));
                }
                catch (StorageException e) when (e.Error == StorageError.NotFound)
                {
                    // Deleted during the scrub: nothing of it left to check.
                }
            }
        }
        for (int u = 0; u < units.Count; u++)
        {
            var (key, version) = units[u];
            if (key < cursorKey) continue;
            long from = key == cursorKey ? cursorBlock : 0;
            var earlier = targets.Length == 0 ? null : units.Take(u).Select(x => x.Version).ToList();
            long stoppedAt = Collect(version, wholeStore: targets.Length == 0, earlier, from, batch);
            if (stoppedAt >= 0) return (key, stoppedAt);
        }
        return null;
    }

    /// <summary>
    /// Adds the version's blocks from <paramref name="from"/> to the batch until it is full. Returns the block to go on
    /// from when the batch filled first, or -1 when the version is done.
    /// </summary>
    private long Collect(MapOwner version, bool wholeStore, List<MapOwner>? earlier, long from, List<Item> batch)
    {
        var found = new List<Item>(EngineLimits.ScrubLockedVisitsMax);
        while (true)
        {
            found.Clear();
            int visits = 0;
            long resume = -1;
            bool Visit(long block, BlockEntry older, BlockEntry newer)
            {
                if (newer.IsMapped) found.Add(new Item(newer.Pba, newer.Crc, block));
                if (++visits < EngineLimits.ScrubLockedVisitsMax && batch.Count + found.Count < EngineLimits.ScrubBatchBlocksMax) return true;
                resume = block + 1;
                return false;
            }
            if (version is VolumeState v)
            {
                // The live map changes under writes: walked under its lock, a bounded number of entries per hold.
                lock (v.Lock)
                {
                    if (v.Deleted) return -1;
                    MapTree.DiffUntil(wholeStore ? v.Parent?.Map : null, v.Map, from, long.MaxValue, Visit);
                }
            }
            else
            {
                var s = (SnapshotState)version;
                MapTree map;
                MapTree? parent;
                lock (s.Volume.Lock)
                {
                    if (s.Deleted) return -1;
                    (map, parent) = (s.Map, wholeStore ? s.Parent?.Map : null);
                }
                // A snapshot's map is frozen: walked with no lock.
                MapTree.DiffUntil(parent, map, from, long.MaxValue, Visit);
            }
            if (earlier is { Count: > 0 }) RemoveShared(found, earlier);
            batch.AddRange(found);
            if (resume < 0) return -1;
            if (batch.Count >= EngineLimits.ScrubBatchBlocksMax) return resume;
            from = resume;
        }
    }

    // Named targets: a block an earlier target maps at the same place was checked with that target. Each version's
    // lock is taken alone (never two at once).
    private static void RemoveShared(List<Item> found, List<MapOwner> earlier)
    {
        foreach (var e in earlier)
        {
            object guard = e is SnapshotState s ? s.Volume.Lock : e.Lock;
            lock (guard)
            {
                var map = e.Map;
                found.RemoveAll(item => map.Get(item.Block).PbaPlusOne == item.Pba + 1);
            }
        }
    }

    /// <summary>
    /// Reads and checks one sorted batch; returns how many bad blocks it confirmed. Runs (physically ordered blocks, at
    /// most <see cref="EngineLimits.ScrubGapBlocksMax"/> unreferenced blocks apart, at most
    /// <see cref="EngineLimits.ScrubRunBlocksMax"/> from first to last) are submitted to the read-ahead as the budget
    /// allows, up to <see cref="ScrubReadAhead.Slots"/> ahead, and checked oldest first while the later ones are read.
    /// Every read of the batch ends before it returns: the cursor moves past a batch only once all of it is checked.
    /// </summary>
    private int CheckBatch(List<Item> batch, ScrubReadAhead reads, Queue<(int First, int End, int Slot)> inFlight, BlockEntry[] entries, ref Pacer pacer)
    {
        int found = 0;
        try
        {
            for (int i = 0; i < batch.Count; )
            {
                int k = i + 1;
                while (k < batch.Count && batch[k].Pba > batch[k - 1].Pba && batch[k].Pba - batch[k - 1].Pba <= 1 + EngineLimits.ScrubGapBlocksMax
                       && batch[k].Pba - batch[i].Pba < EngineLimits.ScrubRunBlocksMax) k++;
                int blocks = (int)(batch[k - 1].Pba - batch[i].Pba + 1);
                if (inFlight.Count == reads.Slots) found += Finish(batch, reads, inFlight.Dequeue(), entries);
                // Paced in bytes read from the disk (the gaps too): the budget is what the disk gives the scrub.
                pacer.Pace(blocks, Volatile.Read(ref _progress.RateBytesPerSecond), this);
                BeforeRunRead?.Invoke(batch[i].Pba, k - i);
                inFlight.Enqueue((i, k, reads.Submit(batch[i].Pba << EngineLimits.BlockShift, blocks << EngineLimits.BlockShift)));
                i = k;
            }
            while (inFlight.Count > 0) found += Finish(batch, reads, inFlight.Dequeue(), entries);
        }
        finally
        {
            // An exception left reads in flight: they end (and their slots are given back) before the batch is left.
            while (inFlight.Count > 0)
            {
                var (_, _, slot) = inFlight.Dequeue();
                try { reads.Wait(slot); } catch (Exception) { /* the first failure is already on its way up */ }
                reads.Release(slot);
            }
        }
        return found;
    }

    /// <summary>Checks the blocks batch[First..End) of a read that was submitted; returns how many bad blocks it confirmed.</summary>
    private int Finish(List<Item> batch, ScrubReadAhead reads, (int First, int End, int Slot) run, BlockEntry[] entries)
    {
        var (first, end, slot) = run;
        try
        {
            Span<byte> data;
            try
            {
                data = reads.Wait(slot);
            }
            catch (IOException)
            {
                // Find which blocks the disk cannot read: each one is confirmed (and re-read) alone.
                int bad = 0;
                for (int j = first; j < end; j++)
                {
                    if (Confirm(batch[j], "io_error", reads.ConfirmBuffer)) bad++;
                }
                Interlocked.Add(ref _sessionBytes, (long)(end - first) << EngineLimits.BlockShift);
                return bad;
            }
            Interlocked.Add(ref _sessionBytes, (long)(end - first) << EngineLimits.BlockShift);
            int found = 0;
            long basePba = batch[first].Pba;
            // The physically contiguous pieces of the run (it may span small gaps), each checked in one pass.
            for (int g = first; g < end; )
            {
                int h = g + 1;
                while (h < end && batch[h].Pba == batch[h - 1].Pba + 1) h++;
                int count = h - g;
                for (int j = 0; j < count; j++) entries[j] = BlockEntry.Mapped(batch[g + j].Pba, batch[g + j].Crc);
                var piece = data.Slice((int)(batch[g].Pba - basePba) << EngineLimits.BlockShift, count << EngineLimits.BlockShift);
                for (int at = BlockVerify.FirstMismatch(piece, entries.AsSpan(0, count)); at >= 0; at = BlockVerify.FirstMismatch(piece, entries.AsSpan(0, count), at + 1))
                {
                    if (Confirm(batch[g + at], "checksum_mismatch", reads.ConfirmBuffer)) found++;
                }
                g = h;
            }
            return found;
        }
        finally
        {
            reads.Release(slot);
        }
    }

    /// <summary>
    /// The I/O budget: bytes per second over the whole session, with no credit for time spent idle beyond a quarter
    /// second (a scrub that was starved never bursts to catch up).
    /// </summary>
    private struct Pacer()
    {
        private long _start = Stopwatch.GetTimestamp();
        private long _bytes;

        /// <summary>Waits (stop or close cut the wait short) until reading <paramref name="blocks"/> more keeps within the rate.</summary>
        public void Pace(int blocks, long rate, Scrubber scrubber)
        {
            if (rate <= 0 || scrubber._stopRequest != 0)
            {
                _bytes += (long)blocks << EngineLimits.BlockShift;
                return;
            }
            double due = (double)_bytes / rate, elapsed = Stopwatch.GetElapsedTime(_start).TotalSeconds;
            if (due > elapsed) scrubber._wake.Wait(TimeSpan.FromSeconds(due - elapsed));
            else if (elapsed - due > 0.25)
            {
                _start = Stopwatch.GetTimestamp();
                _bytes = 0;
            }
            _bytes += (long)blocks << EngineLimits.BlockShift;
        }
    }

    /// <summary>
    /// A candidate bad block: confirmed inside a reader epoch (see the class comment). True when it is bad; then it is
    /// listed, logged and counted.
    /// </summary>
    private bool Confirm(Item item, string reason, Span<byte> block)
    {
        long epoch = _parts.Epochs.Enter();
        List<(string Name, uint Crc)> refs;
        try
        {
            refs = FindReferrers(item.Pba, item.Block, crc: null);
            if (refs.Count == 0) return false; // freed (and maybe reused) since the batch was gathered
            uint crc = refs[0].Crc;
            try
            {
                // From the disk, as the run was read (a copy still in the page cache says nothing of the disk).
                _parts.Data.ReadUncached(item.Pba << EngineLimits.BlockShift, block);
                ReadOnlySpan<BlockEntry> expected = [BlockEntry.Mapped(item.Pba, crc)];
                if (BlockVerify.FirstMismatch(block, expected) < 0) return false; // changed under us and good now
                reason = "checksum_mismatch";
            }
            catch (IOException)
            {
                reason = "io_error";
            }
            var entry = new BadEntry(item.Pba, item.Block, crc, reason, DateTimeOffset.UtcNow);
            lock (_lock)
            {
                if (_bad.Count < EngineLimits.ScrubBadBlocksListedMax || _bad.ContainsKey(item.Pba)) _bad[item.Pba] = entry;
                _badCount = _bad.Count;
            }
        }
        finally
        {
            _parts.Epochs.Exit(epoch);
        }
        Interlocked.Increment(ref _parts.Counters.ScrubBadBlocks);
        var where = string.Join(", ", refs.Select(r => $"'{r.Name}' at offset {item.Block << EngineLimits.BlockShift}"));
        _logger.LogError("Scrub found a bad block ({Reason}): physical block {Pba}, referenced by {Where}; reads of it fail with EIO until it is restored or overwritten",
            reason, item.Pba, where);
        return true;
    }

    /// <summary>
    /// Every live version that maps physical block <paramref name="pba"/> at logical block <paramref name="block"/>
    /// (with checksum <paramref name="crc"/> when given), with the checksum it holds. Versions share a block only at
    /// the same logical block, so this finds all of them. Takes each volume's lock alone.
    /// </summary>
    private List<(string Name, uint Crc)> FindReferrers(long pba, long block, uint? crc)
    {
        var found = new List<(string, uint)>();
        foreach (var v in _volumes())
        {
            lock (v.Lock)
            {
                if (v.Deleted) continue;
                foreach (var s in v.Snapshots) Add(s);
                Add(v);
            }
        }
        return found;

        void Add(MapOwner version)
        {
            if (version.Deleted) return;
            var e = version.Map.Get(block);
            if (e.PbaPlusOne == pba + 1 && (crc is null || e.Crc == crc)) found.Add((version.DisplayName, e.Crc));
        }
    }

    private long TotalBlocks(List<string> targets)
    {
        if (targets.Count == 0) return _parts.Space.ReferencedBlocks;
        long total = 0;
        foreach (var t in targets)
        {
            var version = _resolve(t);
            object guard = version is SnapshotState s ? s.Volume.Lock : version.Lock;
            lock (guard) total += version.Map.MappedBlocks;
        }
        return total;
    }

    // ---- The progress file ----

    private sealed class Progress
    {
        public ScrubState State = ScrubState.None;
        public string[] Targets = [];
        public long RateBytesPerSecond = EngineLimits.ScrubRateBytesPerSecondDefault;
        public long CursorKey;
        public long CursorBlock;
        public long BlocksTotal;
        public long BlocksChecked;
        public long BadBlocksFound;
        public DateTimeOffset? StartedUtc;
        public DateTimeOffset? FinishedUtc;

        public Progress Copy() => (Progress)MemberwiseClone();
    }

    private sealed record BadEntry(long Pba, long Block, uint Crc, string Reason, DateTimeOffset FoundUtc);

    /// <summary>Writes the progress file (a new file renamed over the old one: a crash leaves one or the other whole).</summary>
    private void Persist()
    {
        if (_path is null) return;
        lock (_persistLock)
        {
            byte[] bytes;
            lock (_lock) bytes = Encode(_progress.Copy(), [.. _bad.Values]);
            string temporary = _path + ".tmp";
            try
            {
                using (var file = new FileStream(temporary, FileMode.Create, FileAccess.Write, FileShare.None))
                {
                    file.Write(bytes);
                    file.Flush(flushToDisk: true);
                }
                File.Move(temporary, _path, overwrite: true);
            }
            catch (IOException e)
            {
                // Progress only: the scrub goes on; after a crash it redoes more work.
                _logger.LogWarning("Cannot write the scrub progress file {Path}: {Error}", _path, e.Message);
            }
        }
    }

    private static byte[] Encode(Progress p, List<BadEntry> bad)
    {
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteNumber("format", FileFormat);
            w.WriteString("state", p.State.ToString().ToLowerInvariant());
            w.WriteStartArray("targets");
            foreach (var t in p.Targets) w.WriteStringValue(t);
            w.WriteEndArray();
            w.WriteNumber("rateBytesPerSecond", p.RateBytesPerSecond);
            w.WriteNumber("cursorKey", p.CursorKey);
            w.WriteNumber("cursorBlock", p.CursorBlock);
            w.WriteNumber("blocksTotal", p.BlocksTotal);
            w.WriteNumber("blocksChecked", p.BlocksChecked);
            w.WriteNumber("badBlocksFound", p.BadBlocksFound);
            if (p.StartedUtc is { } started) w.WriteString("startedUtc", started);
            if (p.FinishedUtc is { } finished) w.WriteString("finishedUtc", finished);
            w.WriteStartArray("badBlocks");
            foreach (var b in bad.OrderBy(b => b.Pba))
            {
                w.WriteStartObject();
                w.WriteNumber("physicalBlock", b.Pba);
                w.WriteNumber("block", b.Block);
                w.WriteNumber("crc32c", b.Crc);
                w.WriteString("reason", b.Reason);
                w.WriteString("foundUtc", b.FoundUtc);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
        }
        return stream.ToArray();
    }

    private static (Progress, List<BadEntry>) Decode(byte[] bytes)
    {
        using var doc = JsonDocument.Parse(bytes);
        var root = doc.RootElement;
        int format = root.GetProperty("format").GetInt32();
        if (format != FileFormat) throw new FormatException($"format {format} is not {FileFormat}");
        var p = new Progress
        {
            State = root.GetProperty("state").GetString() switch
            {
                "running" => ScrubState.Running,
                "paused" => ScrubState.Paused,
                "finished" => ScrubState.Finished,
                "none" => ScrubState.None,
                var other => throw new FormatException($"unknown state '{other}'"),
            },
            Targets = [.. root.GetProperty("targets").EnumerateArray().Select(t => t.GetString() ?? throw new FormatException("a null target"))],
            RateBytesPerSecond = root.GetProperty("rateBytesPerSecond").GetInt64(),
            CursorKey = root.GetProperty("cursorKey").GetInt64(),
            CursorBlock = root.GetProperty("cursorBlock").GetInt64(),
            BlocksTotal = root.GetProperty("blocksTotal").GetInt64(),
            BlocksChecked = root.GetProperty("blocksChecked").GetInt64(),
            BadBlocksFound = root.GetProperty("badBlocksFound").GetInt64(),
            StartedUtc = root.TryGetProperty("startedUtc", out var s) ? s.GetDateTimeOffset() : null,
            FinishedUtc = root.TryGetProperty("finishedUtc", out var f) ? f.GetDateTimeOffset() : null,
        };
        if (p.RateBytesPerSecond < 0 || p.CursorBlock < 0 || p.BlocksChecked < 0) throw new FormatException("a negative count");
        var bad = new List<BadEntry>();
        foreach (var b in root.GetProperty("badBlocks").EnumerateArray())
        {
            bad.Add(new BadEntry(b.GetProperty("physicalBlock").GetInt64(), b.GetProperty("block").GetInt64(), b.GetProperty("crc32c").GetUInt32(),
                b.GetProperty("reason").GetString() ?? "checksum_mismatch", b.GetProperty("foundUtc").GetDateTimeOffset()));
        }
        return (p, bad);
    }

    private static double Percent(Progress p) => p.BlocksTotal <= 0 ? 0 : Math.Min(100, 100.0 * p.BlocksChecked / p.BlocksTotal);

    private static string TargetText(IReadOnlyList<string> targets) => targets.Count == 0 ? "the whole store" : string.Join(", ", targets.Select(t => $"'{t}'"));

    private static string RateText(long rate) => rate == 0 ? "no rate limit" : $"at most {rate / 1e6:0.#} MB/s";

    private void ThrowIfDisposed()
    {
        if (_disposed) throw new StorageException(StorageError.Closed, "the store is closed");
    }

    /// <summary>Stops the scrub thread as the store closes; a running scrub stays "running" on disk and resumes at the next open.</summary>
    public void Dispose()
    {
        Thread? worker;
        lock (_lock)
        {
            if (_disposed) return;
            _disposed = true;
            _stopRequest = 2;
            _wake.Set();
            worker = _worker;
        }
        worker?.Join();
    }
}
