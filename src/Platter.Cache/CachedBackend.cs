using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Platter.Cache;

/// <summary>Where a node keeps its volume caches and how large each may be.</summary>
public sealed class NodeCacheOptions
{
    /// <summary>The directory of cache files (a local SSD), or null: this node caches nothing (it still honours dirty markers).</summary>
    public string? Directory { get; init; }

    /// <summary>
    /// Local disk each cached volume may use. A write-back volume's log gets three quarters (the bound on its dirty
    /// data: writes wait for write-back beyond it) and its read cache the rest; a write-through volume's read cache all.
    /// </summary>
    public long SizeBytes { get; init; } = 1L << 30;

    /// <summary>The backend's unit of atomic writes (RBD: the object size, 4 MiB by default).</summary>
    public int AtomicUnitBytes { get; init; } = 4 << 20;

    /// <summary>Where log messages go.</summary>
    public ILoggerFactory LoggerFactory { get; init; } = NullLoggerFactory.Instance;

    /// <summary>Checks the combination; returns the problem or null.</summary>
    public string? Validate() =>
        Directory is not null && SizeBytes < 16L << 20 ? "--cache-size must be at least 16M (a write-back log needs room for several records)" : null;
}

/// <summary>What <c>volume info</c> shows of a volume's cache on this node.</summary>
/// <param name="Mode">The mode stored with the volume (<c>none</c>, <c>writethrough</c>, <c>writeback</c>).</param>
/// <param name="Active">The mode this node serves it with now, or null when it is not open here.</param>
/// <param name="Hits">Reads served from the local read cache.</param>
/// <param name="Misses">Reads of clean blocks that went to the backend.</param>
/// <param name="DirtyBytes">Bytes the local log holds that the backend lacks.</param>
/// <param name="LogUsedBytes">Bytes of the log ring in use.</param>
/// <param name="LogCapacityBytes">Size of the log ring (the bound on dirty data).</param>
/// <param name="LagRecords">Write-back lag: records logged but not yet written back.</param>
/// <param name="Failure">Why write-back stopped, or null.</param>
/// <param name="DirtyMarker">The dirty marker stored with the volume (which node's log may hold writes the image lacks), or null.</param>
public sealed record VolumeCacheStatus(string Mode, string? Active, long Hits, long Misses, long DirtyBytes, long LogUsedBytes,
    long LogCapacityBytes, long LagRecords, string? Failure, string? DirtyMarker);

/// <summary>
/// A shared store with a node cache in front of its volumes: wraps a backend's volume handles, on the node that serves
/// them, in a <see cref="WriteBackVolume"/> or a <see cref="WriteThroughVolume"/> as each volume's stored mode says. The
/// backend knows nothing of the cache; the cache knows the backend only through the seam and
/// <see cref="IVolumeMetadata"/> (the mode and the dirty marker live with the volume, where every node sees them).
/// </summary>
/// <remarks>
/// <para><b>The dirty marker</b> (<see cref="DirtyKey"/>) says "the write-back log LOGID on node N may hold writes the
/// image lacks". It is set (durably, in the image) before a write-back cache takes its first write, and removed only
/// after the log is fully written back and closed: on <c>volume release</c>, on a clean shutdown, when the mode
/// changes. A node opens a volume that carries a marker only with the very log it names (replaying it); every other
/// node is refused until the owner releases the volume or the user accepts the consistent but older image
/// (<see cref="TakeOverVolume(string, bool)"/>). A local log whose id the volume no longer names (the loss was
/// accepted elsewhere) is stale and deleted, never replayed.</para>
/// <para><b>Lifetime.</b> A write-back cache stays open on this node (holding the volume's lock) from the first
/// client until <see cref="Release"/> or shutdown, so clients can come and go without draining; a write-through
/// cache closes with its last client (it holds nothing the backend lacks).</para>
/// <para><b>Ordering with catalog changes.</b> A snapshot, rollback, resize or live diff first drains the write-back
/// log, so a snapshot holds every write acknowledged before it, and nothing logged before a rollback lands on top of
/// it afterwards.</para>
/// <para><b>Locks</b>, in this order: a <i>volume gate</i> per volume name serialises opening and closing that
/// volume's cache (a few catalog calls, a log replay, a drain on release) and is held across that I/O — two opens of
/// one volume must not race, and nothing else waits for it; then <c>_gate</c>, a leaf held for a few instructions
/// (the table of open caches, client counts, the gates themselves). One volume's long release never delays another
/// volume's open. Neither is taken on the I/O path.</para>
/// </remarks>
public sealed class CachedBackend : IVolumeBackend, IVolumeTakeover
{
    /// <summary>Volume metadata key of the cache mode.</summary>
    public const string ModeKey = "platter.cache.mode";

    /// <summary>Volume metadata key of the dirty marker: "LOGID node HOST dir DIR pid PID".</summary>
    public const string DirtyKey = "platter.cache.dirty";

    private readonly IVolumeBackend _inner;
    private readonly IVolumeMetadata _metadata;
    private readonly NodeCacheOptions _options;
    private readonly ILogger _log;
    private readonly Lock _gate = new();
    private readonly Dictionary<string, Entry> _open = new(StringComparer.Ordinal); // guarded by _gate
    private readonly Dictionary<string, VolumeGate> _volumeGates = new(StringComparer.Ordinal); // guarded by _gate
    private bool _disposed; // guarded by _gate

    // Held across one volume's cache open or close (I/O); counted so the table keeps only gates in use.
    private sealed class VolumeGate
    {
        public readonly Lock Lock = new();
        public int Users; // guarded by _gate
    }

    private readonly struct VolumeLease(CachedBackend owner, string name, VolumeGate gate) : IDisposable
    {
        public void Dispose()
        {
            gate.Lock.Exit();
            lock (owner._gate)
            {
                if (--gate.Users == 0) owner._volumeGates.Remove(name);
            }
        }
    }

    // Takes the gate of volume <paramref name="name"/> (reentrant: a thread that holds it may enter again).
    private VolumeLease EnterVolume(string name)
    {
        VolumeGate gate;
        lock (_gate)
        {
            if (!_volumeGates.TryGetValue(name, out gate!)) _volumeGates[name] = gate = new VolumeGate();
            gate.Users++;
        }
        gate.Lock.Enter();
        return new VolumeLease(this, name, gate);
    }

    // Removes <paramref name="entry"/> from the table if it is still the volume's open cache and (unless
    // <paramref name="evenWithClients"/>) has no client; true when it did. The caller holds the volume's gate and
    // closes the entry afterwards, outside _gate.
    private bool TryDetach(Entry entry, bool evenWithClients = false)
    {
        lock (_gate)
        {
            if (!_open.TryGetValue(entry.Name, out var current) || current != entry || (!evenWithClients && entry.Handles > 0)) return false;
            _open.Remove(entry.Name);
            return true;
        }
    }

    private Entry? OpenEntry(string name)
    {
        lock (_gate) return _open.GetValueOrDefault(name);
    }

    private sealed class Entry(string name, CacheMode mode, string logPath)
    {
        public string Name { get; } = name;
        public CacheMode Mode { get; } = mode;
        public string LogPath { get; } = logPath;
        public WriteBackVolume? WriteBack { get; init; }
        public WriteThroughVolume? WriteThrough { get; init; }
        public int Handles; // guarded by _gate
    }

    /// <summary>Wraps <paramref name="inner"/>, which must keep volume metadata (<see cref="IVolumeMetadata"/>). Owns it.</summary>
    public CachedBackend(IVolumeBackend inner, NodeCacheOptions options)
    {
        _metadata = inner as IVolumeMetadata
            ?? throw new ArgumentException($"the {inner.Kind} store keeps no volume metadata, so it cannot have a node cache", nameof(inner));
        var problem = options.Validate();
        if (problem is not null) throw new ArgumentException(problem, nameof(options));
        _inner = inner;
        _options = options;
        _log = options.LoggerFactory.CreateLogger("Platter.Cache");
        if (options.Directory is not null)
        {
            System.IO.Directory.CreateDirectory(options.Directory);
            // Cache files hold VM data: private to the server's user. (The guard only satisfies the platform analyzer.)
            if (!OperatingSystem.IsWindows())
                File.SetUnixFileMode(options.Directory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        }
    }

    /// <summary>The wrapped backend.</summary>
    public IVolumeBackend Inner => _inner;

    /// <summary>True when this node has a cache directory.</summary>
    public bool HasCache => _options.Directory is not null;

    /// <inheritdoc />
    public string Kind => _inner.Kind;

    /// <inheritdoc />
    public string Location => _inner.Location;

    // ---- modes ----

    /// <summary>The mode stored with a volume (none when unset or unreadable as a mode).</summary>
    public CacheMode GetMode(string name) =>
        CacheModes.TryParse(_metadata.GetVolumeMetadata(name, ModeKey), out var mode) ? mode : CacheMode.None;

    /// <summary>
    /// Stores a volume's mode. It applies from the volume's next open on any node; a volume open here in another mode
    /// with no client is closed now (a write-back log drained first), so the next client gets the new mode.
    /// </summary>
    public void SetMode(string name, CacheMode mode)
    {
        _metadata.SetVolumeMetadata(name, ModeKey, CacheModes.ToName(mode));
        _log.LogInformation("volume {Name}: cache mode set to {Mode}", name, CacheModes.ToName(mode));
        using (EnterVolume(name))
        {
            if (OpenEntry(name) is { } entry && entry.Mode != mode && TryDetach(entry)) CloseDetached(entry, drain: true);
        }
    }

    /// <summary>What this node knows of a volume's cache (for <c>volume info</c>).</summary>
    public VolumeCacheStatus GetStatus(string name)
    {
        string? modeText = _metadata.GetVolumeMetadata(name, ModeKey);
        string? marker = _metadata.GetVolumeMetadata(name, DirtyKey);
        string mode = CacheModes.TryParse(modeText, out var m) ? CacheModes.ToName(m) : "none";
        Entry? entry;
        lock (_gate) _open.TryGetValue(name, out entry);
        if (entry?.WriteBack is { } wb)
        {
            var s = wb.Status;
            var (hits, misses) = wb.ReadCacheCounters;
            return new VolumeCacheStatus(mode, "writeback", hits, misses, s.DirtyBytes, s.LogUsedBytes, s.LogCapacityBytes, s.LagRecords, s.Failure, marker);
        }
        if (entry?.WriteThrough is { } wt)
        {
            var (hits, misses) = wt.ReadCacheCounters;
            return new VolumeCacheStatus(mode, "writethrough", hits, misses, 0, 0, 0, 0, null, marker);
        }
        return new VolumeCacheStatus(mode, entry is null ? null : "none", 0, 0, 0, 0, 0, 0, null, marker);
    }

    // ---- opening ----

    /// <inheritdoc />
    public IVolumeHandle OpenVolumeHandle(string name)
    {
        VolumeNames.ThrowIfInvalidExisting(name);
        // Open already: a client more, no I/O. (A close detaches under _gate only when no client is counted.)
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_open.TryGetValue(name, out var open))
            {
                open.Handles++;
                return new CountedHandle(this, open, open.WriteBack?.OpenHandle() ?? open.WriteThrough!.OpenHandle());
            }
        }
        using (EnterVolume(name))
        {
            var entry = OpenEntry(name);
            if (entry is null)
            {
                entry = OpenLocked(name, acceptLoss: false, out var uncached);
                if (entry is null) return uncached!; // mode none: nothing to wrap
            }
            lock (_gate)
            {
                if (!_disposed)
                {
                    entry.Handles++;
                    return new CountedHandle(this, entry, entry.WriteBack?.OpenHandle() ?? entry.WriteThrough!.OpenHandle());
                }
            }
            // Disposed while this open ran: close what it opened (the log stays for the next run).
            if (TryDetach(entry)) CloseDetached(entry, drain: false);
            throw new ObjectDisposedException(nameof(CachedBackend));
        }
    }

    // Opens the volume's cache as its mode and marker say; null (and the plain backend handle in
    // <paramref name="uncached"/>) when it is served uncached. Under the volume's gate.
    private Entry? OpenLocked(string name, bool acceptLoss, out IVolumeHandle? uncached)
    {
        uncached = null;
        var info = _inner.GetVolumeInfo(name);
        string logPath = LogPath(info);
        // The backend's lock first: while this node holds it, no other node can set or clear the marker under us.
        IVolumeHandle? backend = _inner.OpenVolumeHandle(name);
        try
        {
            var mode = GetMode(name);
            var marker = _metadata.GetVolumeMetadata(name, DirtyKey);
            Guid? local = WriteBackVolume.ReadLogId(logPath);
            if (marker is not null)
            {
                if (local is null || local != MarkerLogId(marker))
                    throw new StorageException(StorageError.InUse, DirtyElsewhere(name, marker));
                // Our own log, left by a crash or by a run that could not drain it: replay it whatever the mode is now.
                var owned = backend;
                backend = null;
                var replayed = OpenWriteBack(name, info, logPath, owned, acceptLoss, newLog: false);
                if (mode == CacheMode.WriteBack && HasCache) return replayed;
                _log.LogInformation("volume {Name}: writing back the log left by an earlier run before serving it as {Mode}", name, CacheModes.ToName(mode));
                if (TryDetach(replayed)) CloseDetached(replayed, drain: true);
                backend = _inner.OpenVolumeHandle(name);
            }
            else if (local is not null || File.Exists(logPath))
            {
                // The volume names no log: either this one was fully written back, or the user accepted the loss of it
                // (takeover elsewhere). Replaying it now would write old data over newer: it goes.
                _log.LogWarning("volume {Name}: deleting the local write-back log {Path}: the volume does not name it (written back, or its loss was accepted)", name, logPath);
                DeleteCacheFiles(logPath);
            }

            if (!HasCache || mode == CacheMode.None)
            {
                if (mode != CacheMode.None)
                    _log.LogWarning("volume {Name} has cache mode {Mode} but this server has no --cache-dir: serving it uncached", name, CacheModes.ToName(mode));
                uncached = backend;
                backend = null;
                return null;
            }
            if (mode == CacheMode.WriteThrough)
            {
                var wt = new WriteThroughVolume(backend, logPath + ".wtcache", _options.SizeBytes);
                backend = null;
                var entry = new Entry(name, CacheMode.WriteThrough, logPath) { WriteThrough = wt };
                lock (_gate) _open[name] = entry;
                return entry;
            }
            var handed = backend;
            backend = null;
            return OpenWriteBack(name, info, logPath, handed, acceptLoss, newLog: true);
        }
        finally
        {
            backend?.Dispose();
        }
    }

    // Takes ownership of <paramref name="backend"/> (disposed on failure).
    private Entry OpenWriteBack(string name, VolumeInfo info, string logPath, IVolumeHandle backend, bool acceptLoss, bool newLog)
    {
        WriteBackVolume wb;
        try
        {
            wb = WriteBackVolume.Open(logPath, Identity(info), backend, new WriteBackOptions
            {
                LogBytes = _options.SizeBytes / 4 * 3,
                ReadCacheBytes = _options.SizeBytes / 4,
                AtomicUnitBytes = _options.AtomicUnitBytes,
                AcceptLoss = acceptLoss,
                LoggerFactory = _options.LoggerFactory,
            });
        }
        catch (StorageException e) when (e.Error == StorageError.IoError && !acceptLoss)
        {
            backend.Dispose();
            // The log's own words say what is damaged and what the image holds; add how to go on from here.
            throw new StorageException(StorageError.IoError, $"volume '{name}': {e.Message} (run `platter volume takeover {name} --accept-cache-loss` on this server)", e);
        }
        catch
        {
            backend.Dispose();
            throw;
        }
        if (newLog)
        {
            try
            {
                // Durable in the image before the first write is taken: from now on no other node serves the volume
                // without this log or an explicit acceptance of its loss.
                _metadata.SetVolumeMetadata(name, DirtyKey, $"{wb.LogId} node {Environment.MachineName} dir {_options.Directory} pid {Environment.ProcessId}");
            }
            catch
            {
                wb.DisposeAsync().AsTask().GetAwaiter().GetResult(); // disposes the backend handle too
                DeleteCacheFiles(logPath);
                throw;
            }
        }
        if (wb.Replayed > 0) _log.LogInformation("volume {Name}: {Records} record(s) replayed from the write-back log; writing them back", name, wb.Replayed);
        if (wb.Damage is not null) _log.LogError("volume {Name}: {Damage}; the loss was accepted", name, wb.Damage);
        var entry = new Entry(name, CacheMode.WriteBack, logPath) { WriteBack = wb };
        lock (_gate) _open[name] = entry;
        return entry;
    }

    // Cache files are named after the store and the volume's id, not its name: a rename keeps its cache, and a new
    // volume that reuses a name never meets an old volume's log.
    private string LogPath(VolumeInfo info)
    {
        var tag = string.Concat(_inner.Location.Select(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' ? c : '_'));
        return Path.Combine(_options.Directory ?? "", $"{tag}-{info.Id:x}.wblog");
    }

    private string Identity(VolumeInfo info) => $"{_inner.Location}#{info.Id:x}";

    private static Guid? MarkerLogId(string marker)
    {
        int space = marker.IndexOf(' ');
        return Guid.TryParse(space < 0 ? marker : marker[..space], out var id) ? id : null;
    }

    private static string DirtyElsewhere(string name, string marker)
    {
        int at = marker.IndexOf(" node ", StringComparison.Ordinal);
        string where = at < 0 ? $"log {marker}" : marker[(at + 1)..];
        return $"volume '{name}': the write-back cache of another server ({where}) may hold writes the image lacks; " +
               $"release the volume there (`platter volume release {name}`), or, if that server or its cache is lost, accept the older but " +
               $"consistent image with `platter volume takeover {name} --accept-cache-loss`";
    }

    private static void DeleteCacheFiles(string logPath)
    {
        foreach (var path in new[] { logPath, logPath + ".rcache", logPath + ".wtcache" }) File.Delete(path);
    }

    // ---- closing ----

    private sealed class CountedHandle(CachedBackend owner, Entry entry, IVolumeHandle inner) : IVolumeHandle, IClockedAcknowledgements, IInlineCompletions
    {
        private int _disposed;

        // Only forwards: the caller's continuation is the inner handle's (a cache's own handle does not implement it).
        public void CompleteInline() => (inner as IInlineCompletions)?.CompleteInline();

        public void AcknowledgeThroughClock() => (inner as IClockedAcknowledgements)?.AcknowledgeThroughClock();
        public void AcknowledgementsLeaving() => (inner as IClockedAcknowledgements)?.AcknowledgementsLeaving();

        public string Name => inner.Name;
        public long SizeBytes => inner.SizeBytes;
        public bool IsReadOnly => inner.IsReadOnly;
        public bool FlushCoversAllHandles => inner.FlushCoversAllHandles;
        public bool ExtentsAreCheap => inner.ExtentsAreCheap;
        public ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken cancellationToken = default) => inner.ReadAsync(offset, destination, cancellationToken);
        public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, bool fua, CancellationToken cancellationToken = default) => inner.WriteAsync(offset, source, fua, cancellationToken);
        public ValueTask FlushAsync(CancellationToken cancellationToken = default) => inner.FlushAsync(cancellationToken);
        public ValueTask TrimAsync(long offset, long length, bool fua, CancellationToken cancellationToken = default) => inner.TrimAsync(offset, length, fua, cancellationToken);
        public ValueTask WriteZeroesAsync(long offset, long length, bool deallocate, bool fua, CancellationToken cancellationToken = default) =>
            inner.WriteZeroesAsync(offset, length, deallocate, fua, cancellationToken);
        public int GetExtents(long offset, long length, Span<VolumeExtent> destination) => inner.GetExtents(offset, length, destination);
        public int GetChangedExtents(string sinceSnapshot, long offset, long length, Span<VolumeExtent> destination) =>
            inner.GetChangedExtents(sinceSnapshot, offset, length, destination);
        public int GetAllocationDepth(long offset, long length, Span<DepthExtent> destination) => inner.GetAllocationDepth(offset, length, destination);
        public IReadOnlyList<string> DirtyBitmapSnapshots => inner.DirtyBitmapSnapshots;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
            inner.Dispose();
            owner.HandleClosed(entry);
        }
    }

    private void HandleClosed(Entry entry)
    {
        lock (_gate)
        {
            entry.Handles--;
            // Write-through holds nothing the backend lacks: close it (and free the volume's lock) with its last client.
            if (entry.Handles > 0 || entry.Mode != CacheMode.WriteThrough) return;
        }
        using (EnterVolume(entry.Name))
        {
            if (TryDetach(entry)) CloseDetached(entry, drain: false); // unless a client came back meanwhile
        }
    }

    // Closes a cache that TryDetach took out of the table. With drain, a write-back log is written back completely
    // first, then the marker is removed and the log deleted (in that order: a crash in between leaves a log the volume
    // no longer names, deleted at the next open). Without, the log stays for the next open here and the marker keeps
    // other nodes out. Under the volume's gate, not _gate: this is I/O.
    private void CloseDetached(Entry entry, bool drain, CancellationToken cancellationToken = default)
    {
        if (entry.WriteThrough is { } wt)
        {
            wt.Dispose();
            DeleteCacheFiles(entry.LogPath);
            return;
        }
        var wb = entry.WriteBack!;
        bool drained = false;
        try
        {
            if (drain)
            {
                wb.DrainAsync(cancellationToken).AsTask().GetAwaiter().GetResult();
                _metadata.SetVolumeMetadata(entry.Name, DirtyKey, null);
                drained = true;
            }
        }
        finally
        {
            wb.DisposeAsync().AsTask().GetAwaiter().GetResult();
            if (drained)
            {
                DeleteCacheFiles(entry.LogPath);
                _log.LogInformation("volume {Name}: write-back cache drained and closed", entry.Name);
            }
            else
            {
                _log.LogWarning("volume {Name}: write-back cache closed with {Dirty} dirty bytes kept in {Path}; the volume stays marked dirty by this node until it serves the volume again",
                    entry.Name, wb.Status.DirtyBytes, entry.LogPath);
            }
        }
    }

    /// <summary>
    /// Lets other servers have a volume: writes its write-back log back completely, removes the dirty marker, closes
    /// the cache and the backend handle (which frees the volume's lock). InUse while NBD clients are connected to it.
    /// Returns the bytes written back by the drain.
    /// </summary>
    public long Release(string name, CancellationToken cancellationToken = default)
    {
        VolumeNames.ThrowIfInvalidExisting(name);
        _inner.GetVolumeInfo(name); // NotFound first
        using (EnterVolume(name))
        {
            if (OpenEntry(name) is not { } entry) return 0;
            if (!TryDetach(entry))
                throw new StorageException(StorageError.InUse, $"volume '{name}' has {entry.Handles} connected client(s); disconnect them before releasing it");
            long dirty = entry.WriteBack?.Status.DirtyBytes ?? 0;
            CloseDetached(entry, drain: true, cancellationToken);
            return dirty;
        }
    }

    // Drains an open write-back cache before a catalog change that must see every acknowledged write (sync: the
    // catalog seam is synchronous; these run on management API threads, never on the I/O path).
    private void Drain(string name)
    {
        WriteBackVolume? wb;
        lock (_gate) wb = _open.TryGetValue(name, out var e) ? e.WriteBack : null;
        wb?.DrainAsync().AsTask().GetAwaiter().GetResult();
    }

    // Closes an idle cache before a catalog change the backend refuses while the volume is open (rename).
    private void CloseIfIdle(string name)
    {
        using (EnterVolume(name))
        {
            if (OpenEntry(name) is { } e && TryDetach(e)) CloseDetached(e, drain: true);
        }
    }

    // ---- takeover ----

    /// <summary>Takes a volume over (see <see cref="TakeOverVolume(string, bool)"/>) without accepting any loss.</summary>
    public string? TakeOverVolume(string name) => TakeOverVolume(name, acceptCacheLoss: false);

    /// <summary>
    /// Breaks another server's hold on a volume and fences it. Refused (InUse) while the volume's dirty marker names a
    /// write-back log this node does not have, unless <paramref name="acceptCacheLoss"/>: then the marker is removed
    /// after the fence, and the image — an ordered prefix of the writes that server acknowledged — is what is served.
    /// When the marker names this node's own log and that log is damaged, accepting the loss opens it with the
    /// damage accepted: its intact records are written back, the rest is discarded.
    /// </summary>
    public string? TakeOverVolume(string name, bool acceptCacheLoss)
    {
        VolumeNames.ThrowIfInvalidExisting(name);
        if (_inner is not IVolumeTakeover takeover)
            throw new StorageException(StorageError.InvalidArgument, $"the {_inner.Kind} store has a single server: there is nothing to take over");
        using (EnterVolume(name))
        {
            var info = _inner.GetVolumeInfo(name);
            var marker = _metadata.GetVolumeMetadata(name, DirtyKey);
            bool ours = marker is not null && WriteBackVolume.ReadLogId(LogPath(info)) is { } local && local == MarkerLogId(marker);
            if (marker is not null && !ours && !acceptCacheLoss) throw new StorageException(StorageError.InUse, DirtyElsewhere(name, marker));
            bool openHere = OpenEntry(name) is not null;
            string? holder = openHere ? null : takeover.TakeOverVolume(name);
            if (marker is not null && !ours)
            {
                _metadata.SetVolumeMetadata(name, DirtyKey, null);
                _log.LogWarning("volume {Name}: the loss of the write-back cache {Marker} was accepted; serving the image as it was written back", name, marker);
            }
            else if (ours && acceptCacheLoss && !openHere)
            {
                OpenLocked(name, acceptLoss: true, out var uncached);
                uncached?.Dispose();
            }
            return holder;
        }
    }

    // ---- catalog: passed through, with drains where the change must see every acknowledged write ----

    /// <inheritdoc />
    public IReadOnlyList<VolumeInfo> ListVolumes() => _inner.ListVolumes();

    /// <inheritdoc />
    public VolumeInfo GetVolumeInfo(string name) => _inner.GetVolumeInfo(name);

    /// <inheritdoc />
    public VolumeInfo GetVolumeInfo(string name, bool withAllocation) => _inner.GetVolumeInfo(name, withAllocation);

    /// <inheritdoc />
    public bool TryGetVolumeInfo(string name, out VolumeInfo? info) => _inner.TryGetVolumeInfo(name, out info);

    /// <inheritdoc />
    public VolumeInfo CreateVolume(string name, long sizeBytes) => _inner.CreateVolume(name, sizeBytes);

    /// <inheritdoc />
    public void RenameVolume(string name, string newName)
    {
        CloseIfIdle(name);
        _inner.RenameVolume(name, newName);
    }

    /// <inheritdoc />
    public void ResizeVolume(string name, long newSizeBytes, bool allowShrink = false)
    {
        Drain(name);
        _inner.ResizeVolume(name, newSizeBytes, allowShrink);
    }

    /// <summary>Deletes a volume after closing its cache here (drained: the backend may still refuse the delete).</summary>
    public void DeleteVolume(string name, bool recursive)
    {
        VolumeNames.ThrowIfInvalidExisting(name);
        using (EnterVolume(name))
        {
            if (OpenEntry(name) is { } e)
            {
                if (!TryDetach(e)) throw new StorageException(StorageError.InUse, $"volume '{name}' has {e.Handles} connected client(s); disconnect them before deleting it");
                // Drained, not dropped: the delete may still be refused (snapshots), and then nothing may be lost.
                CloseDetached(e, drain: true);
            }
        }
        _inner.DeleteVolume(name, recursive);
    }

    /// <summary>Takes a snapshot after the volume's write-back log is drained: it holds every write acknowledged before.</summary>
    public SnapshotInfo CreateSnapshot(string volume, string snapshot)
    {
        Drain(volume);
        return _inner.CreateSnapshot(volume, snapshot);
    }

    /// <inheritdoc />
    public IReadOnlyList<SnapshotInfo> ListSnapshots(string volume) => _inner.ListSnapshots(volume);

    /// <inheritdoc />
    public IReadOnlyList<SnapshotInfo> ListSnapshots() => _inner.ListSnapshots();

    /// <inheritdoc />
    public SnapshotInfo GetSnapshotInfo(string volume, string snapshot) => _inner.GetSnapshotInfo(volume, snapshot);

    /// <inheritdoc />
    public void DeleteSnapshot(string volume, string snapshot) => _inner.DeleteSnapshot(volume, snapshot);

    /// <inheritdoc />
    public VolumeInfo CloneSnapshot(string volume, string snapshot, string newVolume) => _inner.CloneSnapshot(volume, snapshot, newVolume);

    /// <summary>Rolls back after draining (nothing logged before lands on top afterwards), then forgets cached reads.</summary>
    public void RollbackVolume(string volume, string snapshot, bool recursive)
    {
        Drain(volume);
        _inner.RollbackVolume(volume, snapshot, recursive);
        lock (_gate)
        {
            if (_open.TryGetValue(volume, out var e))
            {
                e.WriteBack?.ClearReadCache();
                e.WriteThrough?.Clear();
            }
        }
    }

    /// <inheritdoc />
    public IReadOnlyList<ChangedExtent> Diff(string volume, string fromSnapshot, string? toSnapshot)
    {
        if (toSnapshot is null) Drain(volume);
        return _inner.Diff(volume, fromSnapshot, toSnapshot);
    }

    /// <summary>Passed through: a flatten only fills what the clone has not written, so logged writes still land on top.</summary>
    public FlattenResult FlattenVolume(string name) => _inner.FlattenVolume(name);

    /// <inheritdoc />
    public IReadOnlyList<SpaceUsage> GetSpaceUsage() => _inner.GetSpaceUsage();

    /// <inheritdoc />
    public StoreUsage GetUsage() => _inner.GetUsage();

    /// <inheritdoc />
    public CheckReport Check(bool verifyChecksums) => _inner.Check(verifyChecksums);

    /// <inheritdoc />
    public IVolumeHandle OpenSnapshotHandle(string volume, string snapshot) => _inner.OpenSnapshotHandle(volume, snapshot);

    /// <summary>Makes every acknowledged write durable: write-back logs locally, the backend for the rest.</summary>
    public async ValueTask FlushAsync(CancellationToken cancellationToken = default)
    {
        List<WriteBackVolume> logs;
        lock (_gate) logs = _open.Values.Where(e => e.WriteBack is not null).Select(e => e.WriteBack!).ToList();
        foreach (var wb in logs) await wb.FlushAsync(cancellationToken).ConfigureAwait(false);
        await _inner.FlushAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Clean shutdown (SIGTERM): drains every write-back log and removes its marker, so another node may serve the
    /// volume. A drain cut short by <paramref name="cancellationToken"/> (or failing) leaves that log and its marker
    /// for the next run here.
    /// </summary>
    public void Close(CancellationToken cancellationToken)
    {
        List<Entry> entries;
        lock (_gate) entries = [.. _open.Values];
        foreach (var entry in entries)
        {
            using (EnterVolume(entry.Name))
            {
                if (!TryDetach(entry, evenWithClients: true)) continue; // closed meanwhile
                try
                {
                    CloseDetached(entry, drain: true, cancellationToken);
                }
                catch (Exception e) when (e is StorageException or OperationCanceledException)
                {
                    _log.LogError("volume {Name}: write-back not finished at shutdown ({Message}); the log keeps the rest and is written back when this node serves the volume again", entry.Name, e.Message);
                }
            }
        }
    }

    /// <summary>Closes every cache without draining (a write-back log stays for the next open here), then the backend.</summary>
    public void Dispose()
    {
        List<Entry> entries;
        lock (_gate)
        {
            if (_disposed) return;
            _disposed = true;
            entries = [.. _open.Values];
        }
        foreach (var entry in entries)
        {
            using (EnterVolume(entry.Name))
            {
                if (TryDetach(entry, evenWithClients: true)) CloseDetached(entry, drain: false);
            }
        }
        _inner.Dispose();
    }
}
