using System.Collections.Concurrent;
using Platter.Nbd;
using Platter.Storage;
using Prometheus;

namespace Platter.Server.Metrics;

/// <summary>
/// The server's Prometheus metrics, in a registry of its own (not prometheus-net's static default) so that two
/// hosts in one process, as in the tests, never mix their numbers.
/// </summary>
/// <remarks>
/// Per-volume I/O is counted on the request path through <see cref="VolumeMetrics"/>, in counters of its own that are
/// handed to the registry when /metrics is scraped, like everything the store and the NBD server already count (space,
/// commits, syncs, checkpoints, journal, connections): the request path never calls into the library.
/// </remarks>
internal sealed class PlatterMetrics
{
    // Request latencies here run from a few microseconds (a read from the page cache) to seconds (a flush behind a
    // slow disk): 16 buckets doubling from 8 µs reach 0.26 s, and +Inf catches the rest.
    private static readonly double[] DurationBuckets = Histogram.ExponentialBuckets(0.000008, 2, 16);

    private readonly Histogram _duration;
    private readonly Counter _readBytes;
    private readonly Counter _writtenBytes;
    private readonly Counter _errors;
    private readonly Counter _checksumFailures;
    private readonly ConcurrentDictionary<string, VolumeMetrics> _volumes = new(StringComparer.Ordinal);
    private readonly Lock _publishLock = new();

    private readonly Gauge _dataFileBytes;
    private readonly Gauge _usedBytes;
    private readonly Gauge _freeBytes;
    private readonly Gauge _provisionedBytes;
    private readonly Gauge _volumeCount;
    private readonly Counter _commits;
    private readonly Counter _commitSeconds;
    private readonly Counter _syncSeconds;
    private readonly Counter _checkpoints;
    private readonly Counter _checkpointSeconds;
    private readonly Counter _storeChecksumErrors;
    private readonly Counter _storeIoErrors;
    private readonly Gauge _journalUsedBytes;
    private readonly Gauge _journalHalfBytes;
    private readonly Counter _scrubCheckedBytes;
    private readonly Counter _scrubBadBlocksFound;
    private readonly Gauge _scrubBadBlocks;
    private readonly Gauge _scrubRunning;

    private readonly Gauge _nbdConnections;
    private readonly Counter _nbdConnectionsTotal;
    private readonly Counter _nbdConnectionsRefused;
    private readonly Counter _nbdHandshakesRefused;

    private volatile IVolumeBackend? _store;
    private volatile VolumeStore? _engine;
    private volatile NbdServer? _nbd;

    /// <summary>Creates the registry and every metric family; nothing is observed until a store and server are attached.</summary>
    public PlatterMetrics()
    {
        Registry = Prometheus.Metrics.NewCustomRegistry();
        var factory = Prometheus.Metrics.WithCustomRegistry(Registry);
        // Exemplars (trace ids) are only exposed in OpenMetrics and would look up Activity.Current on every request.
        var noExemplars = new ExemplarBehavior { DefaultExemplarProvider = null };
        factory.ExemplarBehavior = noExemplars;

        _duration = factory.CreateHistogram("platter_volume_request_duration_seconds",
            "NBD requests served per export (volume or volume@snapshot) and operation, by time to complete in the engine; _count is the number of requests.",
            new HistogramConfiguration { LabelNames = ["volume", "op"], Buckets = DurationBuckets });
        _readBytes = factory.CreateCounter("platter_volume_read_bytes_total", "Bytes read through NBD per export.", "volume");
        _writtenBytes = factory.CreateCounter("platter_volume_written_bytes_total", "Bytes written through NBD per export.", "volume");
        _errors = factory.CreateCounter("platter_volume_errors_total", "NBD requests that failed in the engine, per export and operation.", "volume", "op");
        _checksumFailures = factory.CreateCounter("platter_volume_checksum_failures_total",
            "Reads that failed because a block's CRC32C did not match (the data on disk is damaged), per export.", "volume");

        _dataFileBytes = factory.CreateGauge("platter_store_data_file_bytes", "Size of the store's data file.");
        _usedBytes = factory.CreateGauge("platter_store_used_bytes", "Bytes of data blocks referenced by volumes and snapshots.");
        _freeBytes = factory.CreateGauge("platter_store_free_bytes", "Bytes free for new data.");
        _provisionedBytes = factory.CreateGauge("platter_store_provisioned_bytes", "Sum of the volumes' virtual sizes.");
        _volumeCount = factory.CreateGauge("platter_store_volumes", "Volumes in the store.");
        _commits = factory.CreateCounter("platter_store_commits_total", "Group commits (one journal record and one fdatasync each).");
        _commitSeconds = factory.CreateCounter("platter_store_commit_seconds_total",
            "Time in commit rounds (gathering, journal write, sync); divided by platter_store_commits_total it is the mean commit latency.");
        _syncSeconds = factory.CreateCounter("platter_store_sync_seconds_total",
            "Time in the commits' fdatasync calls; divided by platter_store_commits_total it is the mean sync latency.");
        _checkpoints = factory.CreateCounter("platter_store_checkpoints_total", "Journal halves applied to the metadata store.");
        _checkpointSeconds = factory.CreateCounter("platter_store_checkpoint_seconds_total", "Time spent applying journal halves to the metadata store.");
        _storeChecksumErrors = factory.CreateCounter("platter_store_checksum_errors_total", "Checksum mismatches found by reads, from any client.");
        _storeIoErrors = factory.CreateCounter("platter_store_io_errors_total", "Failed data-file reads or writes.");
        _journalUsedBytes = factory.CreateGauge("platter_store_journal_used_bytes", "Bytes used in the journal half that commits go to now.");
        _journalHalfBytes = factory.CreateGauge("platter_store_journal_half_bytes", "Size of one journal half.");
        _scrubCheckedBytes = factory.CreateCounter("platter_scrub_checked_bytes_total", "Bytes the online scrub read and verified.");
        _scrubBadBlocksFound = factory.CreateCounter("platter_scrub_bad_blocks_total",
            "Bad blocks the online scrub found (checksum mismatch or unreadable, confirmed while still referenced).");
        _scrubBadBlocks = factory.CreateGauge("platter_scrub_bad_blocks",
            "Bad blocks listed now by `platter scrub status` (still referenced: not yet freed or overwritten).");
        _scrubRunning = factory.CreateGauge("platter_scrub_running", "1 while an online scrub is reading, else 0.");

        _nbdConnections = factory.CreateGauge("platter_nbd_connections", "NBD connections being served now (handshake or transmission).");
        _nbdConnectionsTotal = factory.CreateCounter("platter_nbd_connections_total", "NBD connections served since start.");
        _nbdConnectionsRefused = factory.CreateCounter("platter_nbd_connections_refused_total",
            "NBD connections closed at accept because the connection limit was reached.");
        _nbdHandshakesRefused = factory.CreateCounter("platter_nbd_handshakes_refused_total",
            "NBD clients turned away during the handshake: unknown export, TLS required or failed, protocol violation.");

        Registry.AddBeforeCollectCallback(Refresh);
    }

    /// <summary>The registry /metrics serves.</summary>
    public CollectorRegistry Registry { get; }

    /// <summary>The backend whose space is exposed (set once it is open, cleared when it closes).</summary>
    public IVolumeBackend? Store
    {
        get => _store;
        set => _store = value;
    }

    /// <summary>
    /// The embedded engine behind <see cref="Store"/>, when it is one: its commit, sync, checkpoint and journal
    /// figures are the engine's own and have no meaning for another backend, so they are read from it directly.
    /// </summary>
    public VolumeStore? Engine
    {
        get => _engine;
        set => _engine = value;
    }

    /// <summary>The NBD server whose connection totals are exposed, or null without NBD.</summary>
    public NbdServer? Nbd
    {
        get => _nbd;
        set => _nbd = value;
    }

    /// <summary>The shared counters of one export, created on first use.</summary>
    public VolumeMetrics ForVolume(string name) =>
        _volumes.GetOrAdd(name, static (n, self) =>
            new VolumeMetrics(n, self._duration, DurationBuckets, self._readBytes, self._writtenBytes, self._errors, self._checksumFailures), this);

    /// <summary>Every export served since start, for the dashboard's live rates.</summary>
    public IEnumerable<VolumeMetrics> Volumes => _volumes.Values;

    /// <summary>Drops the series of a volume that no longer exists (deleted or renamed), and of its snapshots.</summary>
    public void Forget(string volume)
    {
        foreach (var name in _volumes.Keys)
        {
            if (name != volume && !name.StartsWith(volume + "@", StringComparison.Ordinal)) continue;
            if (!_volumes.TryRemove(name, out var gone)) continue;
            gone.Release();
            foreach (var op in VolumeMetrics.OpLabels)
            {
                _duration.RemoveLabelled(name, op);
                _errors.RemoveLabelled(name, op);
            }
            _readBytes.RemoveLabelled(name);
            _writtenBytes.RemoveLabelled(name);
            _checksumFailures.RemoveLabelled(name);
        }
    }

    // Runs on each scrape: copies what the request path, the store and the NBD server count into the registry.
    private void Refresh()
    {
        // Two scrapes at once (/metrics on two listeners) must not hand the same requests to a histogram twice.
        lock (_publishLock)
        {
            foreach (var volume in _volumes.Values) volume.Publish();
        }
        if (_store is { } store)
        {
            try
            {
                var usage = store.GetUsage();
                _dataFileBytes.Set(usage.DataFileBytes);
                _usedBytes.Set(usage.UsedBytes);
                _freeBytes.Set(usage.FreeBytes);
                _provisionedBytes.Set(usage.ProvisionedBytes);
                _volumeCount.Set(usage.VolumeCount);
            }
            catch (StorageException e) when (e.Error == StorageError.Closed)
            {
                // Shutting down: the last values stay.
            }
        }
        if (_engine is { } engine)
        {
            try
            {
                var counters = engine.Counters;
                _commits.IncTo(Interlocked.Read(ref counters.Commits));
                _commitSeconds.IncTo(Interlocked.Read(ref counters.RoundMicros) / 1e6);
                _syncSeconds.IncTo(Interlocked.Read(ref counters.SyncMicros) / 1e6);
                _checkpoints.IncTo(Interlocked.Read(ref counters.Checkpoints));
                _checkpointSeconds.IncTo(Interlocked.Read(ref counters.CheckpointMicros) / 1e6);
                _storeChecksumErrors.IncTo(Interlocked.Read(ref counters.ChecksumErrors));
                _storeIoErrors.IncTo(Interlocked.Read(ref counters.IoErrors));
                _scrubCheckedBytes.IncTo(Interlocked.Read(ref counters.ScrubBlocksChecked) * 4096.0);
                _scrubBadBlocksFound.IncTo(Interlocked.Read(ref counters.ScrubBadBlocks));
                var scrub = engine.GetScrubStatus();
                _scrubBadBlocks.Set(scrub.BadBlocks.Count);
                _scrubRunning.Set(scrub.State == ScrubState.Running ? 1 : 0);
                var journal = engine.JournalUse;
                _journalUsedBytes.Set(journal.UsedBytes);
                _journalHalfBytes.Set(journal.HalfBytes);
            }
            catch (StorageException e) when (e.Error == StorageError.Closed)
            {
                // Shutting down: the last values stay.
            }
        }
        if (_nbd is { } nbd)
        {
            _nbdConnections.Set(nbd.ActiveConnections);
            _nbdConnectionsTotal.IncTo(nbd.ConnectionsAccepted);
            _nbdConnectionsRefused.IncTo(nbd.ConnectionsRefused);
            _nbdHandshakesRefused.IncTo(nbd.HandshakesRefused);
        }
    }
}
