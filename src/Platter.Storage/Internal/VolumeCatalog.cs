using Microsoft.Extensions.Logging;

namespace Platter.Storage.Internal;

/// <summary>
/// The live catalog: volumes by name and id, id allocation, catalog operations (create, rename, resize, delete,
/// snapshot, clone, rollback) and the reclaim of space they drop.
///
/// Locks: <see cref="_adminLock"/> serialises catalog operations (rare; each waits for its commit);
/// <see cref="_lock"/> guards the dictionaries, the catalog's pending operations and frees, ids and every
/// snapshot's clone list, and is held for a few instructions only. Order: admin lock, then this lock, then a volume's
/// lock (rename nests them; never the other way round); the committer takes this lock, then each volume's lock in
/// turn, never both at once.
/// A catalog change becomes visible (by name) only once it is durable, so no write to a new volume can be journaled
/// before its creation.
/// </summary>
internal sealed class VolumeCatalog : IDisposable
{
    private readonly EngineParts _parts;
    private readonly ILogger _logger;

    private readonly SemaphoreSlim _adminLock = new(1, 1);
    private readonly object _lock = new();
    private readonly Dictionary<string, VolumeState> _byName = new(StringComparer.Ordinal);
    private readonly Dictionary<long, VolumeState> _byId = new();
    private OpLog _pendingOps = new(256);
    private readonly List<long> _pendingFrees = new();
    private long _nextId;

    private readonly List<Task> _reclaims = new();
    private readonly Action<bool>? _backgroundReclaimObserver;

    public VolumeCatalog(EngineParts parts, ILogger logger, Action<bool>? backgroundReclaimObserver = null)
    {
        _parts = parts;
        _logger = logger;
        _backgroundReclaimObserver = backgroundReclaimObserver;
    }

    private Committer Committer => _parts.Committer;

    /// <summary>At open: the volumes recovery rebuilt and the next free id.</summary>
    public void Load(IEnumerable<VolumeState> volumes, long nextId)
    {
        lock (_lock)
        {
            foreach (var state in volumes)
            {
                // Two volumes under one name only in damaged metadata (refused at open unless salvaging): serve the first.
                if (!_byName.TryAdd(state.Name, state)) continue;
                _byId.Add(state.Id, state);
            }
            _nextId = nextId;
        }
    }

    /// <summary>
    /// For the committer: moves every pending operation (each volume's, then the catalog's) into
    /// <paramref name="batch"/> and their freed blocks into <paramref name="frees"/>. Catalog operations go last, so a
    /// volume deleted in this round has all its writes in this round too. <paramref name="ringMarks"/> gets, per volume
    /// gathered, the number of its last record in the pending-operation ring (<see cref="PendingRing"/>). Returns the
    /// blocks of new space the gathered operations mapped (<see cref="VolumeState.PendingMappedBlocks"/>).
    /// </summary>
    public long Gather(OpLog batch, List<long> frees, List<(long VolumeId, long Number)> ringMarks)
    {
        long mapped = 0;
        OpLog catalogOps;
        List<VolumeState> volumes;
        lock (_lock)
        {
            catalogOps = _pendingOps;
            _pendingOps = new OpLog(256);
            frees.AddRange(_pendingFrees);
            _pendingFrees.Clear();
            volumes = [.. _byId.Values];
        }
        foreach (var v in volumes)
        {
            lock (v.Lock)
            {
                if (v.PendingOps.Length == 0 && v.PendingFrees.Count == 0) continue;
                // Map and pending log in step: a block is freed only by a map change, which is journaled with it.
                Invariant.Check(v.PendingOps.Length > 0, $"volume '{v.Name}' freed {v.PendingFrees.Count} blocks without a journaled change");
                batch.Append(v.PendingOps.Span);
                v.PendingOps.Clear();
                ringMarks.Add((v.Id, v.RingNumber));
                v.RingBroken = false; // everything it did not copy is in this batch
                frees.AddRange(v.PendingFrees);
                v.PendingFrees.Clear();
                mapped += v.PendingMappedBlocks;
                v.PendingMappedBlocks = 0;
            }
        }
        batch.Append(catalogOps.Span);
        catalogOps.Dispose();
        return mapped;
    }

    /// <summary>Every live volume (including one being deleted until its deletion is durable).</summary>
    public List<VolumeState> AllVolumes()
    {
        lock (_lock) return [.. _byId.Values];
    }

    /// <summary>The volumes users see, by name.</summary>
    public List<VolumeState> NamedVolumes()
    {
        lock (_lock) return [.. _byName.Values];
    }

    public VolumeState Find(string name)
    {
        lock (_lock)
        {
            if (_byName.TryGetValue(name, out var state)) return state;
        }
        throw new StorageException(StorageError.NotFound, $"no volume named '{name}'");
    }

    public VolumeState? TryFind(string name)
    {
        lock (_lock) return _byName.GetValueOrDefault(name);
    }

    public SnapshotState FindSnapshot(string volume, string snapshot)
    {
        var state = Find(volume);
        lock (state.Lock)
        {
            foreach (var s in state.Snapshots)
                if (s.Name == snapshot) return s;
        }
        throw new StorageException(StorageError.NotFound, $"no snapshot named '{volume}@{snapshot}'");
    }

    public SnapshotInfo ToInfo(SnapshotState s)
    {
        List<string> clones;
        lock (_lock) clones = [.. s.Clones.Select(c => c.Name)];
        return new SnapshotInfo(s.Id, s.Volume.Name, s.Name, s.SizeBytes, s.Map.MappedBlocks * EngineLimits.BlockBytes, s.Created, clones);
    }

    // ---- Catalog operations: each under the admin lock, durable on return. ----

    public VolumeInfo CreateVolume(string name, long sizeBytes) => Admin(() =>
    {
        VolumeState state;
        lock (_lock)
        {
            if (_byName.ContainsKey(name)) throw new StorageException(StorageError.AlreadyExists, $"a volume named '{name}' already exists");
            long id = _nextId++, layer = _nextId++;
            state = new VolumeState(id, name, sizeBytes, DateTimeOffset.UtcNow, layer, origin: null);
            _pendingOps.AppendCreateVolume(state.Id, sizeBytes, state.Created, layer, 0, name);
        }
        Committer.Commit();
        // Visible only once durable, so no write to it can be journaled before its creation.
        lock (_lock)
        {
            _byName.Add(name, state);
            _byId.Add(state.Id, state);
        }
        return state.ToInfo();
    });

    public void RenameVolume(string name, string newName) => Admin(() =>
    {
        lock (_lock)
        {
            if (!_byName.TryGetValue(name, out var state)) throw new StorageException(StorageError.NotFound, $"no volume named '{name}'");
            if (name == newName) return 0;
            if (_byName.ContainsKey(newName)) throw new StorageException(StorageError.AlreadyExists, $"a volume named '{newName}' already exists");
            _byName.Remove(name);
            _byName.Add(newName, state);
            lock (state.Lock) state.Name = newName;
            _pendingOps.AppendRenameVolume(state.Id, newName);
        }
        Committer.Commit();
        return 0;
    });

    /// <summary>Grows, or with <paramref name="allowShrink"/> shrinks (InvalidArgument without it: the data past the new end would go).</summary>
    public void ResizeVolume(string name, long newSizeBytes, bool allowShrink) => Admin(() =>
    {
        var state = Find(name);
        long oldSize;
        lock (state.Lock) oldSize = state.SizeBytes;
        // Checked under the admin lock, so no other resize can move the size between this check and the change.
        if (newSizeBytes < oldSize && !allowShrink)
            throw new StorageException(StorageError.InvalidArgument,
                $"shrinking volume '{name}' from {oldSize} to {newSizeBytes} bytes discards the data past the new end; it needs allow-shrink (platter volume resize --allow-shrink)");
        new Volume(_parts, state).Resize(newSizeBytes);
        lock (_lock) _pendingOps.AppendResizeVolume(state.Id, newSizeBytes);
        Committer.Commit();
        return 0;
    });

    public void DeleteVolume(string name, bool recursive) => Admin(() =>
    {
        var state = Find(name);
        List<SnapshotState> snaps;
        lock (state.Lock) snaps = [.. state.Snapshots];
        if (snaps.Count > 0 && !recursive)
            throw new StorageException(StorageError.HasDependents,
                $"volume '{name}' has snapshots ({string.Join(", ", snaps.Select(s => s.Name))}); delete them first, or delete recursively (platter volume delete --recursive)");
        foreach (var s in snaps) ThrowIfCloned(s);
        lock (_lock) _byName.Remove(name);
        List<MapTree?> chain;
        lock (state.Lock)
        {
            state.Deleted = true;
            foreach (var s in snaps) s.Deleted = true;
            chain = Versions.Lineage(state, freezeVolume: true).Maps;
        }
        _parts.Space.ReleaseRegion(state);
        long work = chain.Sum(m => m?.MappedBlocks ?? 0);
        var reclaim = EnumerateIfSmall(work, free => Versions.VisitAdditions(chain, (_, _, e) => free(e.Pba)));
        lock (_lock) _pendingOps.AppendDeleteVolume(state.Id);
        Committer.Commit();
        lock (_lock)
        {
            _byId.Remove(state.Id);
            state.Origin?.Clones.Remove(state);
        }
        StartReclaim($"volume '{name}'", work, reclaim);
        return 0;
    });

    public SnapshotInfo CreateSnapshot(string volume, string snapshot) => Admin(() =>
    {
        var state = Find(volume);
        long id, layer;
        lock (_lock)
        {
            id = _nextId++;
            layer = _nextId++;
        }
        SnapshotState snap;
        lock (state.Lock)
        {
            if (state.Deleted) throw new StorageException(StorageError.NotFound, $"no volume named '{volume}'");
            if (state.Snapshots.Any(s => s.Name == snapshot))
                throw new StorageException(StorageError.AlreadyExists, $"snapshot '{volume}@{snapshot}' already exists");
            snap = Catalog.TakeSnapshot(state, id, snapshot, DateTimeOffset.UtcNow, layer);
            int ringFrom = state.PendingOps.Length;
            state.PendingOps.AppendCreateSnapshot(state.Id, id, layer, snap.Created, snapshot);
            _parts.Ring.Append(state, state.PendingOps.Span[ringFrom..]); // writes after it name its new layer
        }
        Committer.Commit();
        return ToInfo(snap);
    });

    public void DeleteSnapshot(string volume, string snapshot) => Admin(() =>
    {
        var snap = FindSnapshot(volume, snapshot);
        ThrowIfCloned(snap);
        var state = snap.Volume;
        long work;
        Action<Action<long>> reclaim;
        lock (state.Lock)
        {
            var parent = snap.Parent;
            var child = snap.Child;
            // The volume keeps writing: compare against a frozen view of it as of now. Blocks it replaces later
            // are judged by the write path against the snapshot's parent, which it now inherits from.
            var childMap = child is VolumeState v ? v.Map.Snapshot() : child.Map;
            work = snap.Map.MappedBlocks + childMap.MappedBlocks;
            // Before the operation is appended: a background commit cannot take it to a checkpoint meanwhile.
            reclaim = EnumerateIfSmall(work, free => MapTree.Diff(snap.Map, childMap, 0, long.MaxValue, (block, older, _) =>
            {
                if (older.IsMapped && (parent is null || parent.Map.Get(block).PbaPlusOne != older.PbaPlusOne)) free(older.Pba);
            }));
            Catalog.RemoveSnapshot(snap);
            int ringFrom = state.PendingOps.Length;
            state.PendingOps.AppendDeleteSnapshot(state.Id, snap.Id);
            _parts.Ring.Append(state, state.PendingOps.Span[ringFrom..]); // writes after it name its new layer
        }
        Committer.Commit();
        StartReclaim($"snapshot '{snap.DisplayName}'", work, reclaim);
        return 0;
    });

    public VolumeInfo CloneSnapshot(string volume, string snapshot, string newVolume) => Admin(() =>
    {
        var snap = FindSnapshot(volume, snapshot);
        VolumeState state;
        lock (_lock)
        {
            if (_byName.ContainsKey(newVolume)) throw new StorageException(StorageError.AlreadyExists, $"a volume named '{newVolume}' already exists");
            long id = _nextId++, layer = _nextId++;
            state = new VolumeState(id, newVolume, snap.SizeBytes, DateTimeOffset.UtcNow, layer, snap) { Map = snap.Map.CloneMutable() };
            _pendingOps.AppendCreateVolume(id, snap.SizeBytes, state.Created, layer, snap.Id, newVolume);
        }
        Committer.Commit();
        lock (_lock)
        {
            _byName.Add(newVolume, state);
            _byId.Add(state.Id, state);
            snap.Clones.Add(state);
        }
        return state.ToInfo();
    });

    public void RollbackVolume(string volume, string snapshot, bool recursive) => Admin(() =>
    {
        var snap = FindSnapshot(volume, snapshot);
        var state = snap.Volume;
        List<SnapshotState> newer;
        lock (state.Lock) newer = state.Snapshots.SkipWhile(s => s != snap).Skip(1).ToList();
        if (newer.Count > 0 && !recursive)
            throw new StorageException(StorageError.HasDependents,
                $"'{volume}' has snapshots newer than '{snapshot}' ({string.Join(", ", newer.Select(s => s.Name))}); rolling back past them deletes them, which needs the recursive option (platter rollback --recursive)");
        foreach (var s in newer) ThrowIfCloned(s);
        long layer;
        lock (_lock) layer = _nextId++;
        long work;
        Action<Action<long>> reclaim;
        lock (state.Lock)
        {
            // What the versions the rollback drops (the newer snapshots and the volume as it is) added on top of the
            // snapshot was theirs alone. Walked before anything changes when small: until the operation is appended, a
            // background commit cannot take it to a checkpoint.
            var chain = new List<MapTree?> { snap.Map };
            chain.AddRange(state.Snapshots.SkipWhile(s => s != snap).Skip(1).Select(d => d.Map));
            chain.Add(state.Map.Snapshot());
            work = chain.Sum(m => m!.MappedBlocks);
            reclaim = EnumerateIfSmall(work, free => Versions.VisitAdditions(chain, (_, _, e) => free(e.Pba)));
            Catalog.RollBack(state, snap, layer);
            int ringFrom = state.PendingOps.Length;
            state.PendingOps.AppendRollback(state.Id, snap.Id, layer);
            _parts.Ring.Append(state, state.PendingOps.Span[ringFrom..]); // writes after it name its new layer
        }
        Committer.Commit();
        StartReclaim($"rollback of '{volume}' to '{snapshot}'", work, reclaim);
        return 0;
    });

    /// <summary>
    /// Flatten (decision 0008): checks and marks under the admin lock, copies the inherited blocks with no catalog
    /// lock held (the copy takes as long as the data; other catalog changes and all I/O go on), then detaches the
    /// clone from its origin in one journaled operation under the admin lock. The operation goes to the volume's own
    /// pending log, after the copies it depends on, so replay never sees it without them.
    /// </summary>
    public FlattenResult FlattenVolume(string name)
    {
        var (state, origin) = Admin(() =>
        {
            var s = Find(name);
            SnapshotState o;
            lock (_lock)
            {
                lock (s.Lock)
                {
                    o = s.Origin ?? throw new StorageException(StorageError.InvalidArgument, $"volume '{name}' is not a clone: it depends on no snapshot, nothing to flatten");
                    if (s.Snapshots.Count > 0)
                        throw new StorageException(StorageError.HasDependents,
                            $"clone '{name}' has snapshots ({string.Join(", ", s.Snapshots.Select(x => x.Name))}), which share the origin's data too; delete them first (flatten copies into the volume only)");
                }
                if (s.Flattening) throw new StorageException(StorageError.InUse, $"volume '{name}' is being flattened already");
                s.Flattening = true;
            }
            return (s, o);
        });
        try
        {
            long copied;
            try
            {
                copied = new Volume(_parts, state).CopyInherited(origin);
            }
            catch (StorageException e) when (e.Error == StorageError.NoSpace)
            {
                throw new StorageException(StorageError.NoSpace,
                    $"flatten of '{name}' stopped: {e.Message}. The clone reads as before and still depends on '{origin.DisplayName}'; " +
                    "what was copied stays its own, and flattening again continues from there", e);
            }
            catch (Exception e) when (e is not StorageException)
            {
                throw Committer.FailStop(e, $"flattening '{name}'");
            }
            Admin(() =>
            {
                lock (_lock)
                {
                    lock (state.Lock)
                    {
                        if (state.Deleted) throw new StorageException(StorageError.NotFound, $"no volume named '{name}'");
                        if (state.Snapshots.Count > 0)
                            throw new StorageException(StorageError.HasDependents, $"a snapshot of '{state.Name}' was taken during its flatten; delete its snapshots and flatten again (it continues where it stopped)");
                        // The copy installed a block of its own wherever the clone mapped the origin's, and nothing can
                        // map an origin block again (no snapshots to roll back to): sharing here would mean reclaim
                        // later frees a block the clone still reads.
                        long shared = CountShared(state, origin);
                        Invariant.Check(shared == 0, $"volume '{state.Name}' still shares {shared} blocks with '{origin.DisplayName}' after its flatten copy");
                        Catalog.Flatten(state);
                        int ringFrom = state.PendingOps.Length;
                        state.PendingOps.AppendFlatten(state.Id);
                        _parts.Ring.Append(state, state.PendingOps.Span[ringFrom..]); // writes after it name its new layer
                    }
                }
                Committer.Commit();
                return 0;
            });
            _logger.LogInformation("Flattened '{Volume}': copied {Bytes} bytes it shared with '{Origin}'", state.Name, copied * EngineLimits.BlockBytes, origin.DisplayName);
            return new FlattenResult(state.Name, origin.DisplayName, copied * EngineLimits.BlockBytes);
        }
        finally
        {
            lock (_lock) state.Flattening = false;
        }
    }

    // Blocks the volume maps at the same offset as the origin (the blocks it still inherits). Caller holds its lock.
    private static long CountShared(VolumeState state, SnapshotState origin)
    {
        long shared = 0, limit = Math.Min(origin.SizeBlocks, state.SizeBlocks);
        for (long b = origin.Map.NextMapped(0, limit); b >= 0; b = origin.Map.NextMapped(b + 1, limit))
            if (state.Map.Get(b).PbaPlusOne == origin.Map.Get(b).PbaPlusOne) shared++;
        return shared;
    }

    private void ThrowIfCloned(SnapshotState snap)
    {
        List<string> clones;
        lock (_lock) clones = [.. snap.Clones.Select(c => c.Name)];
        if (clones.Count > 0)
            throw new StorageException(StorageError.HasDependents,
                $"snapshot '{snap.DisplayName}' has clones ({string.Join(", ", clones)}); delete them first (they share its data), or make them independent (platter volume flatten)");
    }

    private T Admin<T>(Func<T> action)
    {
        _parts.ThrowIfClosed();
        if (_parts.Salvage)
            throw new StorageException(StorageError.ReadOnly, "the store is open for salvage (read-only): copy the volumes out, then repair or recreate it");
        Committer.ThrowIfFailed();
        // A blocking wait, kept on purpose: the catalog surface (IVolumeBackend) is synchronous and every catalog
        // change waits for its own commit (one fsync) anyway, so an HTTP handler holds its thread for that commit
        // whatever this lock does. The queue behind it is bounded by the management API's concurrency and each
        // holder's time by one commit plus in-memory work (a reclaim over 64 Ki blocks goes to the background).
        // Measured (docs/PERFORMANCE.md, "The admin lock under a burst of catalog changes"): 32 clients each taking 4
        // snapshots through the API at once queue here for 18 ms a change; the server grew from 19 to 28 threads and
        // GET /v1/health kept answering (median 39 ms, on a machine whose idle p99 was 390 ms). An async wait would
        // free those few threads only if the whole catalog surface became async, which nothing measured asks for.
        _adminLock.Wait();
        try
        {
            return action();
        }
        catch (Exception e) when (e is not StorageException)
        {
            throw Committer.FailStop(e, "a catalog change");
        }
        finally
        {
            _adminLock.Release();
        }
    }

    /// <summary>
    /// For a reclaim small enough to run inline, walks the dropped versions' maps now, before the operation is appended
    /// to a pending log, and returns what it found: a map leaf the map cache dropped is rebuilt from records that a
    /// checkpoint of the operation would merge or delete (decision 0019), and until the operation is appended no commit
    /// or checkpoint holds it. The maps walked
    /// are frozen, so the result is what the walk after the commit would find. A larger reclaim walks in the background
    /// after the commit, as before; a walk that fails here is left to that path (which logs it).
    /// </summary>
    private static Action<Action<long>> EnumerateIfSmall(long workBlocks, Action<Action<long>> enumerate)
    {
        if (workBlocks > EngineLimits.InlineReclaimBlocks) return enumerate;
        var blocks = new List<long>();
        try
        {
            enumerate(blocks.Add);
        }
        catch (StorageException)
        {
            return enumerate;
        }
        return free => blocks.ForEach(free);
    }

    /// <summary>
    /// Reclaims space: <paramref name="enumerate"/> reports each physical block no version references any more (its
    /// operation is already durable). Small reclaims (at most <see cref="EngineLimits.InlineReclaimBlocks"/> blocks to
    /// compare) run before the call returns, so space is back at once; larger ones run in the background, holding no
    /// lock the I/O path needs. The blocks go through the usual quarantine, so reads still in flight on the deleted
    /// versions finish first. After a crash nothing is lost: free space is derived from the durable maps at open.
    /// </summary>
    private void StartReclaim(string what, long workBlocks, Action<Action<long>> enumerate)
    {
        void Run()
        {
            var batch = new List<long>();
            long total = 0;
            void Hand()
            {
                lock (_lock) _pendingFrees.AddRange(batch);
                _parts.Space.NoteUnreferenced(batch.Count);
                total += batch.Count;
                batch.Clear();
            }
            try
            {
                enumerate(pba =>
                {
                    batch.Add(pba);
                    if (batch.Count >= 1 << 16) Hand();
                });
                Hand();
                Committer.Nudge();
                if (workBlocks > EngineLimits.InlineReclaimBlocks) _logger.LogInformation("Reclaimed {Bytes} bytes from {What}", total * EngineLimits.BlockBytes, what);
            }
            catch (Exception e)
            {
                // The space stays unused until the next open derives it free again; nothing is lost.
                _logger.LogError(e, "Reclaiming space from {What} failed; it will be reclaimed when the store is next opened", what);
            }
        }
        if (workBlocks <= EngineLimits.InlineReclaimBlocks)
        {
            Run();
            return;
        }
        var observer = _backgroundReclaimObserver;
        var task = observer is null ? Task.Run(Run) : Task.Run(() =>
        {
            observer(true);
            try
            {
                Run();
            }
            finally
            {
                observer(false);
            }
        });
        lock (_reclaims)
        {
            _reclaims.RemoveAll(t => t.IsCompleted);
            _reclaims.Add(task);
        }
    }

    /// <summary>Waits until every background reclaim has handed its blocks over (tests, check, close).</summary>
    public void WaitForReclaims()
    {
        Task[] running;
        lock (_reclaims) running = [.. _reclaims];
        Task.WaitAll(running);
    }

    public void Dispose() => _adminLock.Dispose();
}
