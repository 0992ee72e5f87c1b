using System.Buffers.Binary;

namespace Platter.Storage.Internal;

/// <summary>
/// What the verification at open found wrong with the durable metadata: one line per problem, and the layers the
/// damage can be pinned on. LMDB keeps no checksums of its own, so a damaged page can read as well-formed records,
/// as records of a layer nobody owns, or as a page that ends early; the verifier catches each of these by a rule
/// the intact store always keeps (see <see cref="MetadataVerifier"/>).
/// </summary>
internal sealed class MetadataDamage
{
    private const int ProblemsMax = 100;
    private readonly List<string> _problems = new();
    private int _count;

    /// <summary>The problems found (the first <see cref="ProblemsMax"/>).</summary>
    public IReadOnlyList<string> Problems => _problems;

    /// <summary>How many problems were found (more than <see cref="Problems"/> lists when many).</summary>
    public int Count => _count;

    /// <summary>Layers whose records are damaged, missing or out of place: their versions cannot be trusted.</summary>
    public HashSet<long> Layers { get; } = new();

    /// <summary>Extent records <see cref="Catalog.Load"/> applied per layer (the verifier compares them with a full walk).</summary>
    public Dictionary<long, long> RecordsLoaded { get; } = new();

    /// <summary>Damage that belongs to no known layer (lost records, a damaged catalog record): any volume may miss data.</summary>
    public bool Unattributed { get; private set; }

    public bool Any => _count > 0;

    /// <summary>Records a problem in the records of <paramref name="layer"/>.</summary>
    public void Add(long layer, string problem)
    {
        Layers.Add(layer);
        Note(problem);
    }

    /// <summary>Records a problem that cannot be pinned on one layer.</summary>
    public void AddUnattributed(string problem)
    {
        Unattributed = true;
        Note(problem);
    }

    private void Note(string problem)
    {
        if (_count++ < ProblemsMax) _problems.Add(problem);
    }

    /// <summary>One line for an error message: the first problem and how many more.</summary>
    public string Summary() => _count == 1 ? _problems[0] : $"{_problems[0]} (and {_count - 1} more problems)";
}

/// <summary>
/// The rules an intact store's metadata always keeps, checked at open before anything is served (the same rules
/// <c>platter check</c> reports). LMDB's B-tree is trusted for what it returns but not for what it might silently
/// leave out or garble: every extent record decodes, keys come in strictly increasing order, records of one layer
/// never overlap, every record belongs to a version the catalog holds, every extent lies inside the data file, the
/// number of records a cursor walk finds equals the count LMDB keeps in each database's root (a damaged branch or
/// leaf page that hides records shows up here), layer ids are unique, names are unique, ids are below next-id.
/// </summary>
internal static class MetadataVerifier
{
    /// <summary>Checks the durable records behind <paramref name="catalog"/> (as loaded from <paramref name="view"/>).</summary>
    public static void Verify(MetadataStore.View view, Catalog catalog, long dataBlocks, MetadataDamage damage)
    {
        var walk = new RecordWalk(VerifyCatalog(catalog, view.NextId, damage), dataBlocks, damage);
        view.ScanRaw((key, value) => walk.Visit(key, value));
        walk.Finish(view);
    }

    /// <summary>
    /// The rules on the catalog itself (layer owners, ids below next-id, unique names). Returns each layer's owner by
    /// name, for <see cref="RecordWalk"/>.
    /// </summary>
    public static Dictionary<long, string> VerifyCatalog(Catalog catalog, long nextId, MetadataDamage damage)
    {
        var owners = new Dictionary<long, string>();
        foreach (var v in catalog.Volumes.Values)
        {
            AddOwner(owners, v.LayerId, v.DisplayName, damage);
            foreach (var s in v.Snapshots) AddOwner(owners, s.LayerId, s.DisplayName, damage);
        }
        foreach (var v in catalog.Volumes.Values)
        {
            if (v.Id >= nextId || v.LayerId >= nextId)
                damage.Add(v.LayerId, $"volume '{v.Name}' has id {v.Id} and layer {v.LayerId}, but ids below {nextId} only were ever handed out");
            foreach (var s in v.Snapshots)
                if (s.Id >= nextId || s.LayerId >= nextId)
                    damage.Add(s.LayerId, $"snapshot '{s.DisplayName}' has id {s.Id} and layer {s.LayerId}, but ids below {nextId} only were ever handed out");
        }
        foreach (var group in catalog.Volumes.Values.GroupBy(v => v.Name, StringComparer.Ordinal).Where(g => g.Count() > 1))
            foreach (var v in group) damage.Add(v.LayerId, $"two volumes are named '{group.Key}' (ids {string.Join(", ", group.Select(x => x.Id))})");
        return owners;
    }

    /// <summary>
    /// The rules on the extent records, checked one record at a time in key order: by the verification's own walk
    /// (<see cref="Verify"/>), or by the walk that loads the maps (<see cref="Catalog.LoadInOneWalk"/>), so open
    /// reads every record once. <see cref="Finish"/> then compares what was walked with what LMDB counts and with
    /// what each layer loaded.
    /// </summary>
    public sealed class RecordWalk(Dictionary<long, string> owners, long dataBlocks, MetadataDamage damage)
    {
        // The previous record's key as two big-endian words: keys are compared as LMDB orders them (memcmp).
        private ulong _previousKeyLayer, _previousKeyBlock;
        private ulong _firstKeyLayer, _firstKeyBlock; // the first record's key (where a slice of the walk starts)
        private readonly Dictionary<long, long> _perLayer = new();
        private long _records;
        private bool _first = true, _blameNext;
        private long _previousLayer = -1, _previousEnd;
        // The layer of the run of records being walked, whether an owner holds it, and its records so far (counted
        // here and added to _perLayer when the layer changes: one dictionary update per layer, not per record).
        private long _runLayer = -1, _runRecords;
        private bool _runOwned;

        /// <summary>Checks the next record in key order; false when it does not decode (it must not be loaded).</summary>
        public bool Visit(ReadOnlySpan<byte> key, ReadOnlySpan<byte> value)
        {
            _records++;
            if (!MetadataStore.IsWellFormed(key, value))
            {
                // A garbled record sits where the intact one was: between its neighbours in key order. Its own key
                // cannot be trusted, so the damage is pinned on the layers of the records on either side.
                _blameNext = false;
                damage.AddUnattributed(MetadataStore.DescribeDamage(key, value));
                Blame();
                return false;
            }
            var (layer, block, pba, count) = MetadataStore.DecodeFields(key, value);
            if (_blameNext) damage.Layers.Add(layer);
            _blameNext = false;
            if (layer != _runLayer)
            {
                EndRun();
                _runLayer = layer;
                _runOwned = owners.ContainsKey(layer);
            }
            _runRecords++;
            ulong keyLayer = (ulong)layer, keyBlock = (ulong)block;
            if (!_first && (keyLayer < _previousKeyLayer || (keyLayer == _previousKeyLayer && keyBlock <= _previousKeyBlock)))
            {
                // A key smaller than the one before it was garbled in place: the B-tree no longer finds its neighbours.
                damage.Add(layer, $"extent records out of order at {Owner(layer)} block {block} (a damaged metadata page)");
                Blame();
            }
            if (!_runOwned)
            {
                damage.AddUnattributed($"extent record at block {block} belongs to layer {layer}, which no volume or snapshot owns");
                Blame();
            }
            if (layer == _previousLayer && block < _previousEnd)
                damage.Add(layer, $"'{Owner(layer)}': extent records overlap at block {block}");
            if (pba != MetadataStore.TombstonePba && pba + count > dataBlocks)
                damage.Add(layer, $"'{Owner(layer)}': extent at block {block} points at physical [{pba}, {pba + count}), outside the data file ({dataBlocks} blocks)");
            if (_first) (_firstKeyLayer, _firstKeyBlock) = (keyLayer, keyBlock);
            (_previousKeyLayer, _previousKeyBlock) = (keyLayer, keyBlock);
            _first = false;
            _previousLayer = layer;
            _previousEnd = block + count;
            return true;
        }

        /// <summary>
        /// Takes in the walk of the slice of the table that follows this one in key order (decision 0020): its counts,
        /// and the rules at the seam between the two (keys still increasing, no overlap across it). Then this walk
        /// continues from where <paramref name="next"/> ended.
        /// </summary>
        public void Absorb(RecordWalk next)
        {
            EndRun();
            next.EndRun();
            _records += next._records;
            foreach (var (layer, found) in next._perLayer) _perLayer[layer] = _perLayer.GetValueOrDefault(layer) + found;
            if (next._first) return; // an empty slice
            if (!_first)
            {
                if (next._firstKeyLayer < _previousKeyLayer || (next._firstKeyLayer == _previousKeyLayer && next._firstKeyBlock <= _previousKeyBlock))
                    damage.Add((long)next._firstKeyLayer, $"extent records out of order at {Owner((long)next._firstKeyLayer)} block {(long)next._firstKeyBlock} (a damaged metadata page)");
                if ((long)next._firstKeyLayer == _previousLayer && (long)next._firstKeyBlock < _previousEnd)
                    damage.Add(_previousLayer, $"'{Owner(_previousLayer)}': extent records overlap at block {(long)next._firstKeyBlock}");
            }
            _first = false;
            (_previousKeyLayer, _previousKeyBlock, _previousLayer, _previousEnd) = (next._previousKeyLayer, next._previousKeyBlock, next._previousLayer, next._previousEnd);
        }

        /// <summary>After the walk: the counts LMDB keeps against what was walked, and what each layer loaded.</summary>
        public void Finish(MetadataStore.View view)
        {
            EndRun();
            // A damaged page can misdirect the B-tree's searches, which load each layer when it is loaded by layer:
            // the walk reads every record in order without searching, so each layer must have loaded exactly the
            // records the walk found for it.
            foreach (var (layer, found) in _perLayer)
            {
                long loaded = damage.RecordsLoaded.GetValueOrDefault(layer);
                if (owners.TryGetValue(layer, out var owner) && loaded != found)
                    damage.Add(layer, $"'{owner}': {found} extent records are stored but {loaded} were found by layer (a damaged metadata page)");
            }
            var (volumes, snapshots, extents) = view.CountEntries();
            var (walkedVolumes, walkedSnapshots) = view.CountCatalogRecords();
            if (walkedVolumes != volumes) damage.AddUnattributed($"the volumes table counts {volumes} records but {walkedVolumes} can be read (a damaged metadata page)");
            if (walkedSnapshots != snapshots) damage.AddUnattributed($"the snapshots table counts {snapshots} records but {walkedSnapshots} can be read (a damaged metadata page)");
            if (_records != extents) damage.AddUnattributed($"the extents table counts {extents} records but {_records} can be read (a damaged metadata page)");
        }

        private void EndRun()
        {
            if (_runRecords > 0) _perLayer[_runLayer] = _perLayer.GetValueOrDefault(_runLayer) + _runRecords;
            _runRecords = 0;
        }

        private string Owner(long layer) => owners.GetValueOrDefault(layer) ?? $"layer {layer}";

        private void Blame()
        {
            if (_previousLayer >= 0) damage.Layers.Add(_previousLayer);
            _blameNext = true;
        }
    }

    private static void AddOwner(Dictionary<long, string> owners, long layer, string name, MetadataDamage damage)
    {
        if (!owners.TryAdd(layer, name)) damage.Add(layer, $"'{name}' and '{owners[layer]}' both own layer {layer}");
    }

    /// <summary>
    /// The rule on the versions rebuilt (after replay): nothing mapped past a version's end, and each physical block
    /// referenced by one version only and inside the data file. Returns the referenced blocks as sorted, disjoint,
    /// coalesced runs, and how many blocks they hold. Works on runs, not blocks, so a sequentially written TiB is a
    /// million entries here, not 256 million.
    /// </summary>
    public static (List<(long Start, long Length)> Runs, long Blocks) VerifyVersions(IReadOnlyCollection<VolumeState> volumes, long dataBlocks,
        MetadataDamage damage, Action<VolumeState, List<PbaRun>> referenced)
    {
        var all = new List<PbaRun>();
        var owners = new Dictionary<long, string>();
        foreach (var v in volumes)
        {
            owners[v.LayerId] = v.DisplayName;
            foreach (var s in v.Snapshots) owners[s.LayerId] = s.DisplayName;
            if (v.Map.NextMapped(v.SizeBlocks, long.MaxValue) is var past and >= 0)
                damage.Add(v.LayerId, $"'{v.Name}': block {past} is mapped past the end ({v.SizeBlocks} blocks)");
            foreach (var s in v.Snapshots)
                if (s.Map.NextMapped(s.SizeBlocks, long.MaxValue) is var sp and >= 0)
                    damage.Add(s.LayerId, $"'{s.DisplayName}': block {sp} is mapped past the end ({s.SizeBlocks} blocks)");
            referenced(v, all);
        }
        // Usually in order already (the allocator hands out space in order): checked in one pass before sorting.
        var span = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(all);
        for (int i = 1; i < span.Length; i++)
        {
            if (span[i].Pba >= span[i - 1].Pba) continue;
            span.Sort(static (a, b) => a.Pba.CompareTo(b.Pba));
            break;
        }
        var used = new List<(long Start, long Length)>();
        long blocks = 0;
        long coveredEnd = long.MinValue, coveredLayer = 0; // the furthest block end of the runs so far, and whose
        foreach (var run in span)
        {
            long start = run.Pba, end = run.Pba + run.Length;
            if (start < coveredEnd)
            {
                damage.Add(run.Layer, $"physical block {start} is mapped by '{owners.GetValueOrDefault(coveredLayer)}' and by '{owners.GetValueOrDefault(run.Layer)}'");
                damage.Layers.Add(coveredLayer);
                start = coveredEnd; // the rest of the run, past what is already counted
            }
            if (end > dataBlocks)
            {
                damage.Add(run.Layer, $"'{owners.GetValueOrDefault(run.Layer)}': physical block {Math.Max(start, dataBlocks)} is past the end of the data file ({dataBlocks} blocks)");
                end = Math.Max(start, dataBlocks);
            }
            if (run.Pba + run.Length > coveredEnd)
            {
                coveredEnd = run.Pba + run.Length;
                coveredLayer = run.Layer;
            }
            if (end <= start) continue;
            if (used.Count > 0 && used[^1].Start + used[^1].Length == start) used[^1] = (used[^1].Start, used[^1].Length + end - start);
            else used.Add((start, end - start));
            blocks += end - start;
        }
        return (used, blocks);
    }

    /// <summary>
    /// The volumes a damaged layer reaches: a version's content is its parent's overlaid with its own layer, so a
    /// damaged layer spoils its own version and every version built on it (later snapshots, the volume, clones).
    /// </summary>
    public static HashSet<VolumeState> DamagedVolumes(IEnumerable<VolumeState> volumes, MetadataDamage damage)
    {
        var damaged = new HashSet<VolumeState>();
        foreach (var v in volumes)
        {
            if (Chain(v).Any(damage.Layers.Contains)) damaged.Add(v);
        }
        return damaged;
    }

    // Every layer a volume's content is built from: its origin's chain, its snapshots, its own layer.
    private static IEnumerable<long> Chain(VolumeState v)
    {
        foreach (var s in v.Snapshots) yield return s.LayerId;
        yield return v.LayerId;
        for (var origin = v.Origin; origin is not null; origin = origin.Volume.Origin)
        {
            foreach (var s in origin.Volume.Snapshots)
            {
                yield return s.LayerId;
                if (s == origin) break;
            }
        }
    }
}
