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
        var owners = new Dictionary<long, string>();
        foreach (var v in catalog.Volumes.Values)
        {
            AddOwner(owners, v.LayerId, v.DisplayName, damage);
            foreach (var s in v.Snapshots) AddOwner(owners, s.LayerId, s.DisplayName, damage);
        }
        long nextId = view.NextId;
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

        long records = 0;
        var previousKey = new byte[16];
        bool first = true, blameNext = false;
        long previousLayer = -1, previousEnd = 0;
        var perLayer = new Dictionary<long, long>();
        view.ScanRaw((key, value) =>
        {
            records++;
            bool wellFormed = MetadataStore.IsWellFormed(key, value);
            long layer = wellFormed ? MetadataStore.DecodeFields(key, value).Layer : -1;
            // A garbled record sits where the intact one was: between its neighbours in key order. Its own key cannot
            // be trusted, so the damage is pinned on the layers of the records on either side.
            if (blameNext && wellFormed) damage.Layers.Add(layer);
            blameNext = false;
            if (!wellFormed)
            {
                damage.AddUnattributed(MetadataStore.DescribeDamage(key, value));
                Blame(previousLayer);
                return;
            }
            var (_, block, pba, count) = MetadataStore.DecodeFields(key, value);
            perLayer[layer] = perLayer.GetValueOrDefault(layer) + 1;
            string owner = owners.GetValueOrDefault(layer) ?? $"layer {layer}";
            if (!first && key.SequenceCompareTo(previousKey) <= 0)
            {
                // A key smaller than the one before it was garbled in place: the B-tree no longer finds its neighbours.
                damage.Add(layer, $"extent records out of order at {owner} block {block} (a damaged metadata page)");
                Blame(previousLayer);
            }
            if (!owners.ContainsKey(layer))
            {
                damage.AddUnattributed($"extent record at block {block} belongs to layer {layer}, which no volume or snapshot owns");
                Blame(previousLayer);
            }
            if (layer == previousLayer && block < previousEnd)
                damage.Add(layer, $"'{owner}': extent records overlap at block {block}");
            if (pba != MetadataStore.TombstonePba && pba + count > dataBlocks)
                damage.Add(layer, $"'{owner}': extent at block {block} points at physical [{pba}, {pba + count}), outside the data file ({dataBlocks} blocks)");
            key.CopyTo(previousKey);
            first = false;
            previousLayer = layer;
            previousEnd = block + count;
        });
        // A damaged page can misdirect the B-tree's searches, which load each layer: the walk above reads every record
        // in order without searching, so each layer must have loaded exactly the records the walk found for it.
        foreach (var (layer, found) in perLayer)
        {
            long loaded = damage.RecordsLoaded.GetValueOrDefault(layer);
            if (owners.TryGetValue(layer, out var owner) && loaded != found)
                damage.Add(layer, $"'{owner}': {found} extent records are stored but {loaded} were found by layer (a damaged metadata page)");
        }

        void Blame(long previous)
        {
            if (previous >= 0) damage.Layers.Add(previous);
            blameNext = true;
        }

        var (volumes, snapshots, extents) = view.CountEntries();
        var (walkedVolumes, walkedSnapshots) = view.CountCatalogRecords();
        if (walkedVolumes != volumes) damage.AddUnattributed($"the volumes table counts {volumes} records but {walkedVolumes} can be read (a damaged metadata page)");
        if (walkedSnapshots != snapshots) damage.AddUnattributed($"the snapshots table counts {snapshots} records but {walkedSnapshots} can be read (a damaged metadata page)");
        if (records != extents) damage.AddUnattributed($"the extents table counts {extents} records but {records} can be read (a damaged metadata page)");
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
