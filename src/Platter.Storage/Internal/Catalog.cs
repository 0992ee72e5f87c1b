using System.Buffers.Binary;

namespace Platter.Storage.Internal;

/// <summary>
/// The in-memory catalog being rebuilt at open (from the KV store, then the journal) or by the consistency check,
/// plus the structural changes of snapshots, deletes and rollbacks that live operations and replay share, so both
/// produce the same versions from the same operations.
/// </summary>
internal sealed class Catalog
{
    public readonly Dictionary<long, VolumeState> Volumes = new();
    public readonly Dictionary<long, SnapshotState> Snapshots = new();
    private readonly Dictionary<long, VolumeState> _byLayer = new();

    /// <summary>
    /// Builds every version from the durable records: each starts from its parent's map and applies its own layer.
    /// Without <paramref name="damage"/> damaged metadata throws; with it, the damage is reported there and what can
    /// be read is loaded (the verification at open, and salvage, decide what to do with it).
    /// </summary>
    public static Catalog Load(MetadataStore.View view, MetadataDamage? damage = null, MapCrcPager? pager = null)
    {
        var catalog = new Catalog();
        void LoadLayer(long layerId, MapTree map)
        {
            var loader = new LeafLoader(map, pager, layerId);
            long records = 0;
            view.VisitLayer(layerId, (_, block, count, pba, _, crcs) =>
            {
                records++;
                loader.Apply(block, count, pba, crcs);
            }, damage);
            loader.Flush();
            if (damage is not null) damage.RecordsLoaded[layerId] = damage.RecordsLoaded.GetValueOrDefault(layerId) + records;
        }
        var snapshotsByVolume = view.Snapshots(damage).GroupBy(s => s.VolumeId).ToDictionary(g => g.Key, g => g.OrderBy(s => s.Id).ToList());
        // A clone's origin belongs to an older volume (ids grow), so id order builds every origin before its clones.
        foreach (var v in view.Volumes(damage).OrderBy(v => v.Id))
        {
            SnapshotState? origin = null;
            if (v.OriginId != 0 && !catalog.Snapshots.TryGetValue(v.OriginId, out origin))
            {
                string problem = $"volume '{v.Name}' is a clone of snapshot {v.OriginId}, which the catalog does not hold";
                if (damage is null) throw new StorageException(StorageError.BadStore, $"{problem}; run `platter check`");
                damage.Add(v.LayerId, problem);
            }
            if (damage is not null && (catalog.Volumes.ContainsKey(v.Id) || catalog._byLayer.ContainsKey(v.LayerId)))
            {
                damage.Add(v.LayerId, $"volume '{v.Name}' reuses id {v.Id} or layer {v.LayerId}");
                continue;
            }
            var state = new VolumeState(v.Id, v.Name, v.SizeBytes, v.Created, v.LayerId, origin);
            var working = origin?.Map.CloneMutable() ?? new MapTree();
            foreach (var s in snapshotsByVolume.GetValueOrDefault(v.Id) ?? [])
            {
                LoadLayer(s.LayerId, working);
                var snap = new SnapshotState(s.Id, s.Name, state, working.Snapshot(), s.SizeBytes, s.Created, s.LayerId);
                state.Snapshots.Add(snap);
                catalog.Snapshots.Add(snap.Id, snap);
            }
            LoadLayer(v.LayerId, working);
            state.Map = working;
            origin?.Clones.Add(state);
            catalog.Volumes.Add(state.Id, state);
            catalog._byLayer.Add(state.LayerId, state);
        }
        if (snapshotsByVolume.Keys.FirstOrDefault(id => !catalog.Volumes.ContainsKey(id)) is var orphan and not 0)
        {
            string problem = $"the catalog holds snapshots of volume {orphan}, which does not exist";
            if (damage is null) throw new StorageException(StorageError.BadStore, $"{problem}; run `platter check`");
            damage.AddUnattributed(problem);
        }
        return catalog;
    }

    /// <summary>
    /// <see cref="Load"/> and the record rules of <see cref="MetadataVerifier"/> in one walk of the extents table in
    /// key order (issue 15, target 5: open read every record twice, once per layer to load it and once more to verify
    /// the table). One walk builds every version because a version's layers come in key order: along a volume's chain
    /// (origin snapshot, its snapshots oldest first, the volume) layer ids grow — new layers take fresh ids, a deleted
    /// snapshot's layer passes to the next version in the chain, which is younger — so applying layers in id order
    /// applies every parent before its child, as <see cref="Load"/> does. That order, a clean catalog and unique
    /// layers are checked first: when any does not hold (a damaged catalog) this returns null and nothing in
    /// <paramref name="damage"/>, and the caller loads and verifies the old way, two walks.
    /// </summary>
    public static Catalog? LoadInOneWalk(MetadataStore.View view, long dataBlocks, MetadataDamage damage, MapCrcPager? pager = null)
    {
        var scratch = new MetadataDamage();
        var volumeRecords = view.Volumes(scratch);
        var snapshotRecords = view.Snapshots(scratch);
        if (scratch.Any) return null;
        var snapshotsByVolume = snapshotRecords.GroupBy(s => s.VolumeId).ToDictionary(g => g.Key, g => g.OrderBy(s => s.Id).ToList());
        var catalog = new Catalog();
        var steps = new List<LayerStep>();
        var layers = new HashSet<long>();
        foreach (var v in volumeRecords.OrderBy(v => v.Id))
        {
            SnapshotState? origin = null;
            if ((v.OriginId != 0 && !catalog.Snapshots.TryGetValue(v.OriginId, out origin)) || catalog.Volumes.ContainsKey(v.Id)) return null;
            var state = new VolumeState(v.Id, v.Name, v.SizeBytes, v.Created, v.LayerId, origin);
            long previous = origin?.LayerId ?? long.MinValue;
            bool first = true;
            foreach (var s in snapshotsByVolume.GetValueOrDefault(v.Id) ?? [])
            {
                if (s.LayerId <= previous || !layers.Add(s.LayerId)) return null;
                var snap = new SnapshotState(s.Id, s.Name, state, state.Map, s.SizeBytes, s.Created, s.LayerId);
                state.Snapshots.Add(snap);
                catalog.Snapshots.Add(snap.Id, snap);
                steps.Add(new LayerStep(s.LayerId, state, snap, first));
                previous = s.LayerId;
                first = false;
            }
            if (v.LayerId <= previous || !layers.Add(v.LayerId)) return null;
            steps.Add(new LayerStep(v.LayerId, state, null, first));
            origin?.Clones.Add(state);
            catalog.Volumes.Add(state.Id, state);
            catalog._byLayer.Add(state.LayerId, state);
        }
        if (snapshotsByVolume.Keys.Any(id => !catalog.Volumes.ContainsKey(id))) return null;

        var walk = new MetadataVerifier.RecordWalk(MetadataVerifier.VerifyCatalog(catalog, view.NextId, damage), dataBlocks, damage);
        steps.Sort(static (a, b) => a.Layer.CompareTo(b.Layer));
        int at = 0;
        bool started = false;
        LeafLoader loader = null!;
        long records = 0;
        view.ScanRaw((key, value) =>
        {
            if (!walk.Visit(key, value))
            {
                // Loading by layer reported a record that does not decode on the layer it was found in: so does this.
                long prefix = key.Length >= 8 ? BinaryPrimitives.ReadInt64BigEndian(key) : -1;
                if (layers.Contains(prefix)) damage.Add(prefix, $"layer {prefix}: {MetadataStore.DescribeDamage(key, value)}");
                return;
            }
            var (layer, block, pba, count) = MetadataStore.DecodeFields(key, value);
            while (at < steps.Count && steps[at].Layer < layer) Finish();
            if (at == steps.Count || steps[at].Layer != layer) return; // a layer nobody owns: the walk reported it
            if (!started) Start();
            loader.Apply(block, count, pba, MetadataStore.CrcsOf(value));
            records++;
        });
        while (at < steps.Count) Finish();
        walk.Finish(view);
        return catalog;

        void Start()
        {
            var step = steps[at];
            // The volume's map is its working map while its layers load; the snapshots take frozen copies of it.
            if (step.First && step.Volume.Origin is { } origin) step.Volume.Map = origin.Map.CloneMutable();
            loader = new LeafLoader(step.Volume.Map, pager, step.Layer);
            records = 0;
            started = true;
        }

        void Finish()
        {
            if (!started) Start();
            var step = steps[at];
            loader.Flush();
            damage.RecordsLoaded[step.Layer] = damage.RecordsLoaded.GetValueOrDefault(step.Layer) + records;
            if (step.Snapshot is { } snap) snap.Map = step.Volume.Map.Snapshot();
            at++;
            started = false;
        }
    }

    /// <summary>One layer of <see cref="LoadInOneWalk"/>: the version it completes (a snapshot, or the volume when null).</summary>
    private sealed record LayerStep(long Layer, VolumeState Volume, SnapshotState? Snapshot, bool First);

    /// <summary>
    /// Applies one layer's records, which come in block order, a leaf at a time: the entries of the leaf being filled
    /// are gathered in a buffer and stored (packed) once the records move past it, so loading costs one leaf write per
    /// leaf rather than one tree update per block.
    /// </summary>
    private sealed class LeafLoader(MapTree map, MapCrcPager? pager, long layer)
    {
        private const int LeafBlocks = 256;
        private readonly BlockEntry[] _entries = new BlockEntry[LeafBlocks];
        // A leaf the map does not hold yet (a volume's first layer: nearly every leaf at open) is gathered as runs and
        // stored packed straight from them; a leaf over its parent's content is gathered as entries over the parent's.
        private readonly MapTree.LeafRuns _runs = new();
        private long _leafBase = -1;
        private bool _dirty, _fresh;

        public void Apply(long block, long count, long pba, ReadOnlySpan<byte> crcs)
        {
            if (pba == MetadataStore.TombstonePba)
            {
                Flush();
                _leafBase = -1;
                map.UnmapRange(block, block + count);
                return;
            }
            for (int done = 0; done < count; )
            {
                long b = block + done;
                long leafBase = b & ~(long)(LeafBlocks - 1);
                int slot = (int)(b - leafBase), n = (int)Math.Min(LeafBlocks - slot, count - done);
                if (leafBase != _leafBase)
                {
                    Flush();
                    _leafBase = leafBase;
                    _fresh = !map.HasLeaf(leafBase);
                    if (_fresh) _runs.Clear();
                    else map.Get(leafBase, _entries);
                }
                var blockCrcs = crcs.Slice(4 * done, 4 * n);
                if (_fresh && !_runs.TryAdd(slot, n, pba + done, blockCrcs))
                {
                    _runs.CopyTo(_entries);
                    _fresh = false;
                }
                if (!_fresh)
                    for (int i = 0; i < n; i++)
                        _entries[slot + i] = BlockEntry.Mapped(pba + done + i, BinaryPrimitives.ReadUInt32LittleEndian(blockCrcs[(4 * i)..]));
                _dirty = true;
                done += n;
            }
        }

        public void Flush()
        {
            if (!_dirty) return;
            _dirty = false;
            if (_fresh)
            {
                if (map.TrySetNewLeaf(_leafBase, _runs, pager, layer)) return;
                _runs.CopyTo(_entries);
            }
            map.SetLeaf(_leafBase, _entries);
        }
    }

    /// <summary>Applies one durable record (an extent, or a tombstone when pba is -1) to a map being built.</summary>
    public static void ApplyRecord(MapTree map, long block, long count, long pba, ReadOnlySpan<byte> crcs)
    {
        if (pba == MetadataStore.TombstonePba)
        {
            map.UnmapRange(block, block + count);
            return;
        }
        for (int i = 0; i < count; i++)
            map.Set(block + i, BlockEntry.Mapped(pba + i, BinaryPrimitives.ReadUInt32LittleEndian(crcs[(4 * i)..])));
    }

    /// <summary>Replays one journaled operation onto the catalog.</summary>
    public void Replay(in Op op, ref long nextId)
    {
        switch (op.Kind)
        {
            case OpKind.MapExtent:
                ApplyRecord(Head(op.LayerId).Map, op.Block, op.Count, op.Pba, op.Crcs);
                return;
            case OpKind.Unmap:
            case OpKind.Tombstone:
                Head(op.LayerId).Map.UnmapRange(op.Block, op.Count >= long.MaxValue - op.Block ? long.MaxValue : op.Block + op.Count);
                return;
            case OpKind.CreateVolume:
            {
                SnapshotState? origin = op.SnapshotId == 0 ? null : Snapshot(op.SnapshotId);
                var state = new VolumeState(op.VolumeId, op.Name, op.SizeBytes, new DateTimeOffset(op.CreatedTicks, TimeSpan.Zero), op.LayerId, origin);
                if (origin is not null) state.Map = origin.Map.CloneMutable();
                origin?.Clones.Add(state);
                Volumes[state.Id] = state;
                _byLayer[state.LayerId] = state;
                nextId = Math.Max(nextId, Math.Max(op.VolumeId, op.LayerId) + 1);
                return;
            }
        }
        var volume = Volumes.GetValueOrDefault(op.VolumeId)
            ?? throw new StorageException(StorageError.BadStore, $"the journal names volume {op.VolumeId}, which the catalog does not hold");
        switch (op.Kind)
        {
            case OpKind.DeleteVolume:
                foreach (var s in volume.Snapshots) Snapshots.Remove(s.Id);
                volume.Origin?.Clones.Remove(volume);
                Volumes.Remove(volume.Id);
                _byLayer.Remove(volume.LayerId);
                break;
            case OpKind.ResizeVolume:
                volume.SizeBytes = op.SizeBytes;
                break;
            case OpKind.RenameVolume:
                volume.Name = op.Name;
                break;
            case OpKind.CreateSnapshot:
            {
                _byLayer.Remove(volume.LayerId);
                var snap = TakeSnapshot(volume, op.SnapshotId, op.Name, new DateTimeOffset(op.CreatedTicks, TimeSpan.Zero), op.LayerId);
                Snapshots.Add(snap.Id, snap);
                _byLayer[volume.LayerId] = volume;
                nextId = Math.Max(nextId, Math.Max(op.SnapshotId, op.LayerId) + 1);
                break;
            }
            case OpKind.DeleteSnapshot:
            {
                var snap = Snapshot(op.SnapshotId);
                _byLayer.Remove(volume.LayerId);
                RemoveSnapshot(snap);
                Snapshots.Remove(snap.Id);
                _byLayer[volume.LayerId] = volume;
                break;
            }
            case OpKind.Flatten:
                Flatten(volume);
                break;
            case OpKind.Rollback:
            {
                _byLayer.Remove(volume.LayerId);
                foreach (var dropped in RollBack(volume, Snapshot(op.SnapshotId), op.LayerId)) Snapshots.Remove(dropped.Id);
                _byLayer[volume.LayerId] = volume;
                nextId = Math.Max(nextId, op.LayerId + 1);
                break;
            }
        }
    }

    private VolumeState Head(long layerId) => _byLayer.GetValueOrDefault(layerId)
        ?? throw new StorageException(StorageError.BadStore, $"the journal writes to layer {layerId}, which no volume owns");

    private SnapshotState Snapshot(long id) => Snapshots.GetValueOrDefault(id)
        ?? throw new StorageException(StorageError.BadStore, $"the journal names snapshot {id}, which the catalog does not hold");

    // ---- Structural changes shared by live operations and replay (callers hold the volume's lock when live). ----

    /// <summary>Freezes the volume's current map as a new snapshot; the volume continues in a new layer on top of it.</summary>
    public static SnapshotState TakeSnapshot(VolumeState volume, long id, string name, DateTimeOffset created, long newLayerId)
    {
        var snap = new SnapshotState(id, name, volume, volume.Map.Snapshot(), volume.SizeBytes, created, volume.LayerId);
        volume.Snapshots.Add(snap);
        volume.LayerId = newLayerId;
        return snap;
    }

    /// <summary>
    /// Unlinks a snapshot (it must have no clones). The version derived from it takes over its layer (the durable
    /// merge does the same); returns that version.
    /// </summary>
    public static MapOwner RemoveSnapshot(SnapshotState snap)
    {
        var child = snap.Child;
        if (child is SnapshotState next) next.LayerId = snap.LayerId;
        else ((VolumeState)child).LayerId = snap.LayerId;
        snap.Volume.Snapshots.Remove(snap);
        snap.Deleted = true;
        return child;
    }

    /// <summary>
    /// Detaches a clone from its origin snapshot. Its map is unchanged: by now every block it maps is its own copy
    /// (decision 0008), so its layer alone rebuilds it. Callers hold the catalog's and the volume's locks when live.
    /// </summary>
    public static void Flatten(VolumeState volume)
    {
        volume.Origin?.Clones.Remove(volume);
        volume.Origin = null;
    }

    /// <summary>
    /// Makes the volume read as the snapshot again: its map becomes a mutable copy of the snapshot's, its size the
    /// snapshot's, newer snapshots are dropped (returned). The old map is left to the caller (to reclaim).
    /// </summary>
    public static List<SnapshotState> RollBack(VolumeState volume, SnapshotState target, long newLayerId)
    {
        int index = volume.Snapshots.IndexOf(target);
        var dropped = volume.Snapshots.GetRange(index + 1, volume.Snapshots.Count - index - 1);
        volume.Snapshots.RemoveRange(index + 1, dropped.Count);
        foreach (var d in dropped) d.Deleted = true;
        volume.Map = target.Map.CloneMutable();
        volume.SizeBytes = target.SizeBytes;
        volume.LayerId = newLayerId;
        return dropped;
    }
}
