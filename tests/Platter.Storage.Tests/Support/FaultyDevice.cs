using Platter.Storage.Devices;

namespace Platter.Storage.Tests.Support;

/// <summary>
/// A device that passes every call to the real one and fails on command: the test double below the
/// engine. Failures are armed with counters ("fail the next N writes") so a test says exactly which
/// I/O breaks, and reported as IOException with the errno in HResult, as the file device does.
/// </summary>
internal sealed class FaultyDevice(IDataDevice inner) : IDataDevice
{
    private readonly IDataDevice _inner = inner;
    private int _failWrites, _tornWrites, _failSyncs, _failReads, _failGrows;
    private volatile bool _crashed;
    private long _writes, _syncs, _reads, _grows, _injected;

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

    public void Read(long offset, Span<byte> destination)
    {
        Interlocked.Increment(ref _reads);
        if (InRange(offset) && TakeOne(ref _failReads)) throw Eio("read", offset, destination.Length);
        _inner.Read(offset, destination);
        OnRead?.Invoke(offset, destination);
    }

    public void Write(long offset, ReadOnlySpan<byte> source)
    {
        Interlocked.Increment(ref _writes);
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

    public void PunchHole(long offset, long length)
    {
        if (!_crashed) _inner.PunchHole(offset, length);
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

/// <summary>Opens stores whose devices are <see cref="FaultyDevice"/>s and remembers them, so a test can arm faults.</summary>
internal sealed class FaultyStore
{
    private volatile bool _failCheckpoints;
    private int _checkpointsFailed;

    /// <summary>Journal region of the stores tests create: the smallest the engine allows, so test stores stay small.</summary>
    public const long JournalBytes = 1 << 20;

    /// <summary>The data file's device (journal region first, then data blocks).</summary>
    public FaultyDevice? Data { get; private set; }

    /// <summary>Aims counted faults at the data blocks only.</summary>
    public void AimAtData() { Data!.FaultRangeStart = JournalBytes; Data.FaultRangeEnd = long.MaxValue; }

    /// <summary>Aims counted faults at the journal region only.</summary>
    public void AimAtJournal() { Data!.FaultRangeStart = 0; Data.FaultRangeEnd = JournalBytes; }

    /// <summary>Every KV checkpoint commit fails while set.</summary>
    public bool FailCheckpoints { get => _failCheckpoints; set => _failCheckpoints = value; }

    public int CheckpointsFailed => Volatile.Read(ref _checkpointsFailed);

    public StoreOptions Options(long dataGrowthBytes = 1 << 20, long dataBytesMax = long.MaxValue, TimeSpan? commitIntervalMax = null) => new()
    {
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
        CommitIntervalMax = commitIntervalMax ?? TimeSpan.FromSeconds(1),
    };

    public VolumeStore Open(string dir, long dataGrowthBytes = 1 << 20, long dataBytesMax = long.MaxValue, TimeSpan? commitIntervalMax = null)
    {
        _failCheckpoints = false;
        return VolumeStore.Open(dir, Options(dataGrowthBytes, dataBytesMax, commitIntervalMax));
    }

    /// <summary>
    /// Simulates a process crash in-process: nothing more reaches the devices or the KV store, then the
    /// store is closed (its final flush fails, as it would never have run). What remains on disk is what a
    /// SIGKILL at this instant would leave. Reopen with <see cref="Open"/>.
    /// </summary>
    public void Crash(VolumeStore store, params Volume[] volumes)
    {
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
