using Microsoft.Extensions.Logging;
using Platter.Storage.Internal;

namespace Platter.Storage;

// Snapshots, clones, rollback, deletion with reclaim, diffs and space usage. Every version of a volume is a MapTree
// sharing unchanged nodes with the others (decision 0005), so the operations here change references, not data.
// Space is reclaimed by comparing neighbouring versions: a block one version maps is held by that version alone
// when neither its parent nor any version derived from it maps it there.
public sealed partial class VolumeStore
{
    private readonly List<Task> _reclaims = new();

    /// <summary>Takes a snapshot of the volume's current content in O(1); durable on return.</summary>
    public SnapshotInfo CreateSnapshot(string volume, string snapshot)
    {
        ThrowIfInvalidSnapshotName(snapshot);
        return Admin(() =>
        {
            var state = Find(volume);
            long id, layer;
            lock (_catalogLock)
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
                state.PendingOps.AppendCreateSnapshot(state.Id, id, layer, snap.Created, snapshot);
            }
            CommitNow();
            return ToInfo(snap);
        });
    }

    /// <summary>The volume's snapshots, oldest first. NotFound when there is no such volume.</summary>
    public IReadOnlyList<SnapshotInfo> ListSnapshots(string volume)
    {
        ThrowIfDisposed();
        var state = Find(volume);
        List<SnapshotState> snaps;
        lock (state.Lock) snaps = [.. state.Snapshots];
        return [.. snaps.Select(ToInfo)];
    }

    /// <summary>Every snapshot of every volume, by volume name then age.</summary>
    public IReadOnlyList<SnapshotInfo> ListSnapshots()
    {
        ThrowIfDisposed();
        List<VolumeState> volumes;
        lock (_catalogLock) volumes = [.. _byName.Values];
        var list = new List<SnapshotInfo>();
        foreach (var v in volumes.OrderBy(v => v.Name, StringComparer.Ordinal))
        {
            List<SnapshotState> snaps;
            lock (v.Lock) snaps = [.. v.Snapshots];
            list.AddRange(snaps.Select(ToInfo));
        }
        return list;
    }

    /// <summary>One snapshot's info, or NotFound.</summary>
    public SnapshotInfo GetSnapshotInfo(string volume, string snapshot)
    {
        ThrowIfDisposed();
        return ToInfo(FindSnapshot(volume, snapshot));
    }

    /// <summary>
    /// Deletes a snapshot; space only it held is reclaimed in the background. Refused with HasDependents (the
    /// message names them) while clones of it exist.
    /// </summary>
    public void DeleteSnapshot(string volume, string snapshot)
    {
        Admin(() =>
        {
            var snap = FindSnapshot(volume, snapshot);
            ThrowIfCloned(snap);
            var state = snap.Volume;
            SnapshotState? parent;
            MapTree childMap;
            lock (state.Lock)
            {
                parent = snap.Parent;
                var child = snap.Child;
                // The volume keeps writing: compare against a frozen view of it as of now. Blocks it replaces later
                // are judged by the write path against the snapshot's parent, which it now inherits from.
                childMap = child is VolumeState v ? v.Map.Snapshot() : child.Map;
                Catalog.RemoveSnapshot(snap);
                state.PendingOps.AppendDeleteSnapshot(state.Id, snap.Id);
            }
            CommitNow();
            StartReclaim($"snapshot '{snap.DisplayName}'", snap.Map.MappedBlocks + childMap.MappedBlocks, free => MapTree.Diff(snap.Map, childMap, 0, long.MaxValue, (block, older, _) =>
            {
                if (older.IsMapped && (parent is null || parent.Map.Get(block).PbaPlusOne != older.PbaPlusOne)) free(older.Pba);
            }));
            return 0;
        });
    }

    /// <summary>Creates a writable volume sharing all data with the snapshot, in O(1); durable on return.</summary>
    public VolumeInfo CloneSnapshot(string volume, string snapshot, string newVolume)
    {
        VolumeNames.ThrowIfInvalid(newVolume);
        return Admin(() =>
        {
            var snap = FindSnapshot(volume, snapshot);
            VolumeState state;
            lock (_catalogLock)
            {
                if (_byName.ContainsKey(newVolume)) throw new StorageException(StorageError.AlreadyExists, $"a volume named '{newVolume}' already exists");
                long id = _nextId++, layer = _nextId++;
                state = new VolumeState(id, newVolume, snap.SizeBytes, DateTimeOffset.UtcNow, layer, snap) { Map = snap.Map.CloneMutable() };
                _catalogOps.AppendCreateVolume(id, snap.SizeBytes, state.Created, layer, snap.Id, newVolume);
            }
            CommitNow();
            lock (_catalogLock)
            {
                _byName.Add(newVolume, state);
                _byId.Add(state.Id, state);
                snap.Clones.Add(state);
            }
            return state.ToInfo();
        });
    }

    /// <summary>
    /// Returns the volume to the snapshot's content (and size) in O(1); what was written since is reclaimed in the
    /// background. When newer snapshots exist it is refused with HasDependents unless <paramref name="recursive"/>,
    /// which deletes them (refused still if any of them has clones).
    /// </summary>
    public void RollbackVolume(string volume, string snapshot, bool recursive = false)
    {
        Admin(() =>
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
            lock (_catalogLock) layer = _nextId++;
            MapTree oldMap;
            List<SnapshotState> dropped;
            lock (state.Lock)
            {
                oldMap = state.Map.Snapshot();
                dropped = Catalog.RollBack(state, snap, layer);
                state.PendingOps.AppendRollback(state.Id, snap.Id, layer);
            }
            CommitNow();
            // What the dropped versions added on top of the snapshot was theirs alone.
            var chain = new List<MapTree?> { snap.Map };
            chain.AddRange(dropped.Select(d => d.Map));
            chain.Add(oldMap);
            StartReclaim($"rollback of '{volume}' to '{snapshot}'", chain.Sum(m => m!.MappedBlocks), free => VisitAdditions(chain, (_, _, e) => free(e.Pba)));
            return 0;
        });
    }

    /// <summary>
    /// Deletes a volume. With snapshots it is refused with HasDependents unless <paramref name="recursive"/>, which
    /// deletes them too (refused still if any of them has clones).
    /// </summary>
    public void DeleteVolume(string name, bool recursive)
    {
        Admin(() =>
        {
            var state = Find(name);
            List<SnapshotState> snaps;
            lock (state.Lock) snaps = [.. state.Snapshots];
            if (snaps.Count > 0 && !recursive)
                throw new StorageException(StorageError.HasDependents,
                    $"volume '{name}' has snapshots ({string.Join(", ", snaps.Select(s => s.Name))}); delete them first, or delete recursively (platter volume delete --recursive)");
            foreach (var s in snaps) ThrowIfCloned(s);
            lock (_catalogLock) _byName.Remove(name);
            List<MapTree?> chain;
            lock (state.Lock)
            {
                state.Deleted = true;
                foreach (var s in snaps) s.Deleted = true;
                chain = Lineage(state, freezeVolume: true).Maps;
            }
            ReleaseRegion(state);
            lock (_catalogLock) _catalogOps.AppendDeleteVolume(state.Id);
            CommitNow();
            lock (_catalogLock)
            {
                _byId.Remove(state.Id);
                state.OriginSnapshot?.Clones.Remove(state);
            }
            StartReclaim($"volume '{name}'", chain.Sum(m => m?.MappedBlocks ?? 0), free => VisitAdditions(chain, (_, _, e) => free(e.Pba)));
            return 0;
        });
    }

    /// <summary>
    /// Along a chain of versions, each derived from the one before (the first may be null: empty), reports each
    /// version's additions over the one before: the blocks it maps that its predecessor does not map there, with the
    /// index of the version in the chain. Versions share blocks only along their lineage, so no version before it in
    /// the chain references such a block: this is how reclaim finds what a dropped chain held alone, and how
    /// recovery and the check list every referenced block exactly once.
    /// </summary>
    private static void VisitAdditions(IReadOnlyList<MapTree?> chain, Action<int, long, BlockEntry> visit)
    {
        for (int i = 1; i < chain.Count; i++)
        {
            int version = i;
            MapTree.Diff(chain[i - 1], chain[i], 0, long.MaxValue, (block, _, newer) =>
            {
                if (newer.IsMapped) visit(version, block, newer);
            });
        }
    }

    /// <summary>
    /// A volume's lineage as maps: its origin snapshot's (or null), its snapshots' oldest first, then its own; and the
    /// versions they belong to (Versions[i] owns Maps[i + 1]). With <paramref name="freezeVolume"/> the volume's map
    /// is a frozen view, for callers that walk it while writes may go on.
    /// </summary>
    private static (List<MapTree?> Maps, List<MapOwner> Versions) Lineage(VolumeState volume, bool freezeVolume)
    {
        lock (volume.Lock)
        {
            var maps = new List<MapTree?> { volume.OriginSnapshot?.Map };
            maps.AddRange(volume.Snapshots.Select(s => s.Map));
            maps.Add(freezeVolume ? volume.Map.Snapshot() : volume.Map);
            return (maps, [.. volume.Snapshots, volume]);
        }
    }

    /// <summary>
    /// Ranges whose content differs between <paramref name="fromSnapshot"/> and <paramref name="toSnapshot"/> (null:
    /// the volume's current content), in offset order, coalesced. Time is proportional to the change, not the size.
    /// </summary>
    public IReadOnlyList<ChangedExtent> Diff(string volume, string fromSnapshot, string? toSnapshot)
    {
        ThrowIfDisposed();
        var from = FindSnapshot(volume, fromSnapshot);
        MapTree toMap;
        long toSize;
        if (toSnapshot is null)
        {
            var state = Find(volume);
            lock (state.Lock)
            {
                toMap = state.Map.Snapshot();
                toSize = state.SizeBytes;
            }
        }
        else
        {
            var to = FindSnapshot(volume, toSnapshot);
            if (to.Id < from.Id)
                throw new StorageException(StorageError.InvalidArgument, $"'{to.DisplayName}' is older than '{from.DisplayName}'; name the older snapshot first");
            toMap = to.Map;
            toSize = to.SizeBytes;
        }
        var runs = new List<ChangedExtent>();
        long endBlock = (Math.Max(from.SizeBytes, toSize) + Layout.BlockBytes - 1) >> Layout.BlockShift;
        MapTree.Diff(from.Map, toMap, 0, endBlock, (block, _, newer) =>
        {
            long offset = block << Layout.BlockShift;
            if (runs.Count > 0 && runs[^1].Offset + runs[^1].Length == offset && runs[^1].Allocated == newer.IsMapped)
                runs[^1] = runs[^1] with { Length = runs[^1].Length + Layout.BlockBytes };
            else
                runs.Add(new ChangedExtent(offset, Layout.BlockBytes, newer.IsMapped));
        });
        return runs;
    }

    /// <summary>Per volume and snapshot: bytes held alone and bytes shared.</summary>
    public IReadOnlyList<SpaceUsage> GetSpaceUsage()
    {
        ThrowIfDisposed();
        List<VolumeState> volumes;
        lock (_catalogLock) volumes = [.. _byName.Values];
        // Frozen views of every version, so the comparisons see a stable picture while writes go on.
        var versions = new Dictionary<MapOwner, MapTree>();
        var chains = new Dictionary<VolumeState, List<MapOwner>>();
        foreach (var v in volumes)
        {
            lock (v.Lock)
            {
                var chain = new List<MapOwner>(v.Snapshots) { v };
                foreach (var s in v.Snapshots) versions[s] = s.Map;
                versions[v] = v.Map.Snapshot();
                chains[v] = chain;
            }
        }
        var children = new Dictionary<MapOwner, List<MapOwner>>();
        var parents = new Dictionary<MapOwner, MapOwner?>();
        foreach (var (v, chain) in chains)
        {
            for (int i = 0; i < chain.Count; i++)
            {
                MapOwner? parent = i > 0 ? chain[i - 1] : v.OriginSnapshot;
                parents[chain[i]] = parent;
                if (parent is not null)
                {
                    if (!children.TryGetValue(parent, out var list)) children[parent] = list = new();
                    list.Add(chain[i]);
                }
            }
        }
        var result = new List<SpaceUsage>();
        foreach (var v in volumes.OrderBy(v => v.Name, StringComparer.Ordinal))
        {
            foreach (var version in chains[v])
            {
                var map = versions[version];
                var parent = parents[version];
                var parentMap = parent is not null && versions.TryGetValue(parent, out var pm) ? pm : null;
                var childMaps = children.GetValueOrDefault(version)?.Where(versions.ContainsKey).Select(c => versions[c]).ToList() ?? [];
                long unique = 0;
                MapTree.Diff(parentMap, map, 0, long.MaxValue, (block, _, newer) =>
                {
                    if (!newer.IsMapped) return;
                    foreach (var c in childMaps)
                        if (c.Get(block).PbaPlusOne == newer.PbaPlusOne) return;
                    unique++;
                });
                long allocated = map.MappedBlocks;
                result.Add(new SpaceUsage(version.DisplayName, version is SnapshotState, allocated * Layout.BlockBytes,
                    unique * Layout.BlockBytes, (allocated - unique) * Layout.BlockBytes));
            }
        }
        return result;
    }

    /// <summary>Opens a read-only handle on a snapshot (Volume.Name is <c>volume@snapshot</c>).</summary>
    public Volume OpenSnapshot(string volume, string snapshot)
    {
        ThrowIfDisposed();
        return new Volume(this, FindSnapshot(volume, snapshot));
    }

    private SnapshotState FindSnapshot(string volume, string snapshot)
    {
        var state = Find(volume);
        lock (state.Lock)
        {
            foreach (var s in state.Snapshots)
                if (s.Name == snapshot) return s;
        }
        throw new StorageException(StorageError.NotFound, $"no snapshot named '{volume}@{snapshot}'");
    }

    private void ThrowIfCloned(SnapshotState snap)
    {
        List<string> clones;
        lock (_catalogLock) clones = [.. snap.Clones.Select(c => c.Name)];
        if (clones.Count > 0)
            throw new StorageException(StorageError.HasDependents,
                $"snapshot '{snap.DisplayName}' has clones ({string.Join(", ", clones)}); delete them first (they share its data)");
    }

    private static void ThrowIfInvalidSnapshotName(string? name)
    {
        var reason = VolumeNames.Validate(name);
        if (reason is not null) throw new StorageException(StorageError.InvalidName, $"invalid snapshot name '{name}': {reason}");
    }

    private SnapshotInfo ToInfo(SnapshotState s)
    {
        List<string> clones;
        lock (_catalogLock) clones = [.. s.Clones.Select(c => c.Name)];
        return new SnapshotInfo(s.Id, s.Volume.Name, s.Name, s.SizeBytes, s.Map.MappedBlocks * Layout.BlockBytes, s.Created, clones);
    }

    /// <summary>
    /// Reclaims space: <paramref name="enumerate"/> reports each physical block no version references any more (its
    /// operation is already durable). Small reclaims (at most <see cref="Layout.InlineReclaimBlocks"/> blocks to
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
                lock (_catalogLock) _catalogFrees.AddRange(batch);
                Interlocked.Add(ref _referencedBlocks, -batch.Count);
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
                if (!_disposed) _commitSignal.Set();
                if (workBlocks > Layout.InlineReclaimBlocks) _logger.LogInformation("Reclaimed {Bytes} bytes from {What}", total * Layout.BlockBytes, what);
            }
            catch (Exception e)
            {
                // The space stays unused until the next open derives it free again; nothing is lost.
                _logger.LogError(e, "Reclaiming space from {What} failed; it will be reclaimed when the store is next opened", what);
            }
        }
        if (workBlocks <= Layout.InlineReclaimBlocks)
        {
            Run();
            return;
        }
        var task = Task.Run(Run);
        lock (_reclaims)
        {
            _reclaims.RemoveAll(t => t.IsCompleted);
            _reclaims.Add(task);
        }
    }

    /// <summary>Waits until every background reclaim has handed its blocks over (tests, check, close).</summary>
    internal void WaitForReclaims()
    {
        Task[] running;
        lock (_reclaims) running = [.. _reclaims];
        Task.WaitAll(running);
    }
}
