using Platter.Storage.Devices;

namespace Platter.Storage.Tests.Support;

/// <summary>
/// A device that passes every call to the real one and fails on command: the test double below the
/// engine. Failures are armed with counters ("fail the next N writes") so a test says exactly which
/// I/O breaks, and reported as IOException with the errno in HResult, as the file device does.
///
/// Power-cut mode (<see cref="TrackUnsynced"/>): every write since the last successful sync is remembered with the
/// bytes it replaced. A cut (<see cref="CutPowerAtCall"/> or <see cref="CutPower"/>) then decides, from a seeded
/// random source, what of those writes the disk kept: each one survives whole, is lost whole, or is torn at 512-byte
/// or 4 KiB sector boundaries (some sectors new, some old). Losing an earlier write while keeping a later one is the
/// out-of-order case. Synced writes are never touched. This is what a power failure leaves and a SIGKILL does not
/// (the page cache survives a killed process). Growth (fallocate) is not undone: the engine references new space only
/// through records synced after it, and fdatasync makes the new size durable with them.
/// </summary>
internal sealed class FaultyDevice(IDataDevice inner) : IDataDevice
{
    private readonly IDataDevice _inner = inner;
    private int _failWrites, _tornWrites, _failSyncs, _failReads, _failGrows;
    private volatile bool _crashed;
    private long _writes, _syncs, _reads, _uncachedReads, _grows, _injected;

    public string Path => (_inner as FileDataDevice)?.Path ?? "?";

    /// <summary>Fail the next N writes with EIO, writing nothing.</summary>
    public int FailWrites { get => Volatile.Read(ref _failWrites); set => Volatile.Write(ref _failWrites, value); }

    /// <summary>Tear the next N writes: write the first <see cref="TornPrefixBytes"/> bytes, then fail with EIO.</summary>
    public int TornWrites { get => Volatile.Read(ref _tornWrites); set => Volatile.Write(ref _tornWrites, value); }

    /// <summary>How much of a torn write reaches the device (less than a block, so the block is garbage).</summary>
    public int TornPrefixBytes { get; set; } = 1536;

    /// <summary>Fail the next N syncs with EIO.</summary>
    public int FailSyncs { get => Volatile.Read(ref _failSyncs); set => Volatile.Write(ref _failSyncs, value); }

    /// <summary>Fail the next N reads with EIO.</summary>
    public int FailReads { get => Volatile.Read(ref _failReads); set => Volatile.Write(ref _failReads, value); }

    /// <summary>Fail the next N grows with ENOSPC.</summary>
    public int FailGrowsNoSpace { get => Volatile.Read(ref _failGrows); set => Volatile.Write(ref _failGrows, value); }

    /// <summary>
    /// The process "died": from now on nothing reaches the device (writes, syncs and grows fail). What the
    /// device holds is what a SIGKILL would leave: every completed write, synced or not.
    /// </summary>
    public bool Crashed { get => _crashed; set => _crashed = value; }

    /// <summary>
    /// Counted faults (fail/tear writes, fail reads) only hit I/O that starts inside [FaultRangeStart, FaultRangeEnd):
    /// the data file holds the journal region first and data blocks after it, so a test aims at one or the other.
    /// </summary>
    public long FaultRangeStart { get; set; }
    public long FaultRangeEnd { get; set; } = long.MaxValue;

    private bool InRange(long offset) => offset >= FaultRangeStart && offset < FaultRangeEnd;

    /// <summary>Corrupts data on its way up, as a decaying disk would; called with (device offset, buffer) after each read.</summary>
    public Action<long, Span<byte>>? OnRead { get; set; }

    public long Writes => Interlocked.Read(ref _writes);
    public long Syncs => Interlocked.Read(ref _syncs);
    public long Reads => Interlocked.Read(ref _reads);
    public long Grows => Interlocked.Read(ref _grows);

    /// <summary>How many failures were actually injected (proves a fault test exercised its fault).</summary>
    public long Injected => Interlocked.Read(ref _injected);

    public long Length => _inner.Length;

    // ---- Power cut ----

    private readonly object _cutLock = new();
    private readonly List<(long Offset, byte[] Old)> _unsynced = new();
    private long _callsUntilCut = -1;
    private Random? _cutRandom;

    /// <summary>Remember unsynced writes (with the bytes they replaced) so a power cut can undo them.</summary>
    public bool TrackUnsynced { get; set; }

    /// <summary>What the last power cut did: where it landed and what it kept, lost and tore.</summary>
    public PowerCutReport? LastCut { get; private set; }

    /// <summary>
    /// Cuts the power during the <paramref name="calls"/>-th write or sync from now (1 = the next one). A write cut
    /// is itself an unsynced write (kept, lost or torn like the others); a sync cut completes nothing. After the cut
    /// every call fails as after a crash.
    /// </summary>
    public void CutPowerAtCall(long calls, Random random)
    {
        lock (_cutLock)
        {
            _callsUntilCut = calls;
            _cutRandom = random;
        }
    }

    /// <summary>Cuts the power now (between calls).</summary>
    public PowerCutReport CutPower(Random random)
    {
        lock (_cutLock) return CutLocked(random, "idle", 0);
    }

    /// <summary>True when the armed cut point was reached.</summary>
    public bool PowerWasCut => LastCut is not null;

    // Caller holds _cutLock. Decides the fate of each unsynced write, newest first, so restoring an older write's
    // "before" bytes over a newer kept one leaves the sector at an older version: every sector ends at one of the
    // versions it had since the last sync.
    private PowerCutReport CutLocked(Random random, string during, long offset)
    {
        _crashed = true;
        int kept = 0, lost = 0, torn = 0;
        for (int i = _unsynced.Count - 1; i >= 0; i--)
        {
            var (at, old) = _unsynced[i];
            switch (random.Next(3))
            {
                case 0:
                    kept++;
                    break;
                case 1:
                    _inner.Write(at, old);
                    lost++;
                    break;
                default:
                {
                    int sector = random.Next(2) == 0 ? 512 : 4096;
                    // Sectors are aligned on the device, not on the write: each one independently new or old.
                    long pos = at, end = at + old.Length;
                    while (pos < end)
                    {
                        long next = Math.Min(end, (pos / sector + 1) * sector);
                        if (random.Next(2) == 0) _inner.Write(pos, old.AsSpan((int)(pos - at), (int)(next - pos)));
                        pos = next;
                    }
                    torn++;
                    break;
                }
            }
        }
        _unsynced.Clear();
        var report = new PowerCutReport(during, offset, kept, lost, torn);
        LastCut = report;
        return report;
    }

    // Caller holds _cutLock. True when this call is the one the cut was armed for.
    private bool CutNowLocked()
    {
        if (_callsUntilCut < 0 || _crashed) return false;
        return --_callsUntilCut == 0;
    }

    private void TrackLocked(long offset, int length)
    {
        long readable = Math.Max(0, Math.Min(length, _inner.Length - offset));
        var old = new byte[readable];
        if (readable > 0) _inner.Read(offset, old);
        _unsynced.Add((offset, old));
    }

    public void Read(long offset, Span<byte> destination)
    {
        Interlocked.Increment(ref _reads);
        if (InRange(offset) && TakeOne(ref _failReads)) throw Eio("read", offset, destination.Length);
        _inner.Read(offset, destination);
        OnRead?.Invoke(offset, destination);
    }

    /// <summary>The scrubber's direct reads meet the same faults, counters and corruption as <see cref="Read"/>.</summary>
    public bool ReadUncached(long offset, Span<byte> destination)
    {
        Interlocked.Increment(ref _reads);
        Interlocked.Increment(ref _uncachedReads);
        if (InRange(offset) && TakeOne(ref _failReads)) throw Eio("read", offset, destination.Length);
        bool direct = _inner.ReadUncached(offset, destination);
        OnRead?.Invoke(offset, destination);
        return direct;
    }

    /// <summary>Reads that asked to bypass the page cache (<see cref="ReadUncached"/>).</summary>
    public long UncachedReads => Interlocked.Read(ref _uncachedReads);

    public void Write(long offset, ReadOnlySpan<byte> source)
    {
        Interlocked.Increment(ref _writes);
        NoteWrite(offset, source.Length);
        if (TrackUnsynced)
        {
            lock (_cutLock)
            {
                if (_crashed) throw Eio("write (power cut)", offset, source.Length);
                TrackLocked(offset, source.Length);
                _inner.Write(offset, source);
                if (CutNowLocked())
                {
                    CutLocked(_cutRandom!, "write", offset);
                    throw Eio("write (power cut)", offset, source.Length);
                }
            }
            return;
        }
        if (_crashed) throw Eio("write (crashed)", offset, source.Length);
        if (InRange(offset) && TakeOne(ref _failWrites)) throw Eio("write", offset, source.Length);
        if (InRange(offset) && TakeOne(ref _tornWrites))
        {
            _inner.Write(offset, source[..Math.Min(TornPrefixBytes, source.Length)]);
            throw Eio("torn write", offset, source.Length);
        }
        _inner.Write(offset, source);
    }

    public void Sync()
    {
        Interlocked.Increment(ref _syncs);
        if (TrackUnsynced)
        {
            lock (_cutLock)
            {
                if (_crashed) throw Eio("sync (power cut)", 0, 0);
                if (CutNowLocked())
                {
                    CutLocked(_cutRandom!, "sync", 0);
                    throw Eio("sync (power cut)", 0, 0);
                }
                _inner.Sync();
                _unsynced.Clear();
            }
            return;
        }
        if (_crashed) throw Eio("sync (crashed)", 0, 0);
        if (TakeOne(ref _failSyncs)) throw Eio("sync", 0, 0);
        _inner.Sync();
    }

    public void Grow(long newLength)
    {
        Interlocked.Increment(ref _grows);
        if (_crashed) throw Eio("grow (crashed)", newLength, 0);
        if (TakeOne(ref _failGrows))
        {
            Interlocked.Increment(ref _injected);
            throw new IOException($"injected ENOSPC growing {Path} to {newLength}: No space left on device", Errno.ENOSPC);
        }
        _inner.Grow(newLength);
    }

    // ---- Hole punching ----

    private readonly object _punchLock = new();
    private readonly List<(long Start, long End)> _punching = new();
    private long _punchesStarted, _punchesDone, _punchedBytes, _writesIntoPunching;

    /// <summary>While set and not signalled, every hole punch waits for it (60 s at most, then fails): a stalled file system.</summary>
    public ManualResetEventSlim? PunchGate { get; set; }

    /// <summary>Every punch takes this much longer: a slow file system.</summary>
    public TimeSpan PunchDelay { get; set; }

    public long PunchesStarted => Interlocked.Read(ref _punchesStarted);
    public long PunchesDone => Interlocked.Read(ref _punchesDone);
    public long PunchedBytes => Interlocked.Read(ref _punchedBytes);

    /// <summary>Writes that touched a range while its punch was in progress: each would be zeroed by it (must stay 0).</summary>
    public long WritesIntoPunching => Interlocked.Read(ref _writesIntoPunching);

    public void PunchHole(long offset, long length)
    {
        if (_crashed) return;
        lock (_punchLock) _punching.Add((offset, offset + length));
        Interlocked.Increment(ref _punchesStarted);
        try
        {
            if (PunchGate is { } gate && !gate.Wait(TimeSpan.FromSeconds(60)))
                throw new IOException("test: the punch gate was never opened");
            if (PunchDelay > TimeSpan.Zero) Thread.Sleep(PunchDelay);
            _inner.PunchHole(offset, length);
            Interlocked.Add(ref _punchedBytes, length);
            lock (_punchLock)
                for (long b = offset / 4096; b < (offset + length) / 4096; b++) _written.Remove(b);
        }
        finally
        {
            lock (_punchLock) _punching.Remove((offset, offset + length));
            Interlocked.Increment(ref _punchesDone);
        }
    }

    private void NoteWrite(long offset, int length)
    {
        lock (_punchLock)
        {
            foreach (var (start, end) in _punching)
                if (offset < end && start < offset + length) Interlocked.Increment(ref _writesIntoPunching);
            if (TrackFreshFrom >= 0 && offset + length > TrackFreshFrom)
            {
                for (long b = Math.Max(offset, TrackFreshFrom) / 4096; b < (offset + length + 4095) / 4096; b++)
                    if (_written.Add(b)) _freshBlocks++;
            }
        }
    }

    // ---- Writes into never-written space (holes of the sparse data file) ----

    private readonly HashSet<long> _written = new();
    private long _freshBlocks;

    /// <summary>
    /// When set (at or after 0), counts the 4 KiB blocks at or past this offset that are written for the first time, or
    /// first since a punch: writes into holes, whose flush must also write the file system's block allocation.
    /// </summary>
    public long TrackFreshFrom { get; set; } = -1;

    /// <summary>Blocks written into holes since <see cref="TrackFreshFrom"/> was set.</summary>
    public long FreshBlocks
    {
        get { lock (_punchLock) return _freshBlocks; }
    }

    public void Dispose() => _inner.Dispose();

    private IOException Eio(string what, long offset, int length)
    {
        Interlocked.Increment(ref _injected);
        return new IOException($"injected EIO: {what} of {Path} at {offset} ({length} bytes): Input/output error", Errno.EIO);
    }

    private static bool TakeOne(ref int counter)
    {
        while (true)
        {
            int n = Volatile.Read(ref counter);
            if (n <= 0) return false;
            if (Interlocked.CompareExchange(ref counter, n - 1, n) == n) return true;
        }
    }
}

/// <summary>What a power cut did: the call it landed in (write, sync or idle), and the fate of the unsynced writes.</summary>
internal sealed record PowerCutReport(string During, long Offset, int Kept, int Lost, int Torn);

/// <summary>Opens stores whose devices are <see cref="FaultyDevice"/>s and remembers them, so a test can arm faults.</summary>
internal sealed class FaultyStore
{
    private volatile bool _failCheckpoints;
    private int _checkpointsFailed;

    /// <summary>Journal region of the stores tests create: the smallest the engine allows, so test stores stay small.</summary>
    public const long JournalBytes = 1 << 20;

    /// <summary>The data file's device (journal region first, then data blocks).</summary>
    public FaultyDevice? Data { get; private set; }

    /// <summary>The map cache's budget of the stores opened (decision 0019: a tiny one pages every map leaf loaded at open).</summary>
    public long MapCacheBytes { get; set; } = StoreOptions.MapCacheBytesDefault;

    /// <summary>Aims counted faults at the data blocks only.</summary>
    public void AimAtData() { Data!.FaultRangeStart = JournalBytes; Data.FaultRangeEnd = long.MaxValue; }

    /// <summary>Aims counted faults at the journal region only.</summary>
    public void AimAtJournal() { Data!.FaultRangeStart = 0; Data.FaultRangeEnd = JournalBytes; }

    /// <summary>Every KV checkpoint commit fails while set.</summary>
    public bool FailCheckpoints { get => _failCheckpoints; set => _failCheckpoints = value; }

    public int CheckpointsFailed => Volatile.Read(ref _checkpointsFailed);

    /// <summary>
    /// Options of a test store. <paramref name="bootId"/>: the boot the store believes it runs in (null: this
    /// machine's); another one plays a reboot for the pending-operation ring. <paramref name="loggerFactory"/>: where
    /// the store logs (null: nowhere).
    /// </summary>
    public StoreOptions Options(long dataGrowthBytes = 1 << 20, long dataBytesMax = long.MaxValue, TimeSpan? commitIntervalMax = null,
        string? bootId = null, Microsoft.Extensions.Logging.ILoggerFactory? loggerFactory = null) => new()
    {
        BootIdForTests = bootId,
        LoggerFactory = loggerFactory ?? Microsoft.Extensions.Logging.Abstractions.NullLoggerFactory.Instance,
        DataDeviceFactory = path => Data = new FaultyDevice(new FileDataDevice(path)),
        JournalRegionBytes = JournalBytes,
        BeforeCheckpointCommit = () =>
        {
            if (_failCheckpoints)
            {
                Interlocked.Increment(ref _checkpointsFailed);
                throw new IOException("injected: KV checkpoint commit failed", Errno.EIO);
            }
        },
        DataGrowthBytes = dataGrowthBytes,
        DataBytesMax = dataBytesMax,
        MapCacheBytes = MapCacheBytes,
        CommitIntervalMax = commitIntervalMax ?? TimeSpan.FromSeconds(1),
        // The smallest reserve file: sized from the file system it would be 256 MiB, and on tmpfs (the power-cut test's
        // /dev/shm) allocating that zeroes 256 MiB of RAM per store: two stores per iteration, 2,000 iterations.
        MetadataReserveBytes = 1 << 20,
        // The relocation thread would add device calls of its own at moments no seed decides: the device must see the
        // same calls in the same order for a seed (power cuts, counted faults). Tests of relocation run passes themselves.
        RelocateRateBytesPerSecond = 0,
    };

    public VolumeStore Open(string dir, long dataGrowthBytes = 1 << 20, long dataBytesMax = long.MaxValue, TimeSpan? commitIntervalMax = null,
        string? bootId = null, Microsoft.Extensions.Logging.ILoggerFactory? loggerFactory = null)
    {
        _failCheckpoints = false;
        return VolumeStore.Open(dir, Options(dataGrowthBytes, dataBytesMax, commitIntervalMax, bootId, loggerFactory));
    }

    /// <summary>
    /// Simulates a process crash in-process: nothing more reaches the devices or the KV store, then the
    /// store is closed (its final flush fails, as it would never have run). What remains on disk is what a
    /// SIGKILL at this instant would leave. Reopen with <see cref="Open"/>.
    /// </summary>
    public void Crash(VolumeStore store, params Volume[] volumes)
    {
        // A killed process writes nothing more to the ring either (its final, failing commit would mark the ring invalid).
        store.DetachRingForTests();
        if (Data is not null) Data.Crashed = true;
        _failCheckpoints = true;
        foreach (var v in volumes)
        {
            try { v.Dispose(); } catch (StorageException) { } catch (IOException) { }
        }
        try { store.Dispose(); } catch (StorageException) { } catch (IOException) { }
        _failCheckpoints = false;
    }
}
