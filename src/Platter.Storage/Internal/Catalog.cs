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

    /// <summary>Threads that walked the extent records in slices to build this catalog (decision 0020); 0 when one thread walked them.</summary>
    public int Walkers { get; private set; }

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
    /// <paramref name="damage"/>, and the caller loads and verifies the old way, two walks. With
    /// <paramref name="walkers"/> (<see cref="WalkersAtOpen"/>) that many threads walk slices of the table while this
    /// one builds the versions (<see cref="TryWalkInSlices"/>); with none, this thread walks and builds. Both build the
    /// same versions and report the same damage (the walk in slices, finding any, leaves the report to a walk on one
    /// thread).
    /// </summary>
    public static Catalog? LoadInOneWalk(MetadataStore.View view, long dataBlocks, MetadataDamage damage, MapCrcPager? pager = null,
        int walkers = 0, WalkLimits? limits = null)
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

        var owners = MetadataVerifier.VerifyCatalog(catalog, view.NextId, damage);
        steps.Sort(static (a, b) => a.Layer.CompareTo(b.Layer));
        if (walkers > 0 && !damage.Any)
        {
            if (TryWalkInSlices(view, owners, dataBlocks, layers, new VersionBuilder(steps, pager), walkers, limits ?? WalkLimits.Engine, damage))
            {
                catalog.Walkers = walkers;
                return catalog;
            }
            // Something is damaged: the walk on one thread finds and reports it, the same way whatever the slices.
            return LoadInOneWalk(view, dataBlocks, damage, pager, walkers: 0);
        }
        var walk = new MetadataVerifier.RecordWalk(owners, dataBlocks, damage);
        var builder = new VersionBuilder(steps, pager);
        view.ScanRaw((key, value) =>
        {
            if (!Check(walk, layers, damage, key, value)) return;
            var (layer, block, pba, count) = MetadataStore.DecodeFields(key, value);
            builder.Apply(layer, block, count, pba, MetadataStore.CrcsOf(value));
        });
        builder.Complete(damage);
        walk.Finish(view);
        return catalog;
    }

    /// <summary>
    /// Threads that walk slices of the extents table at open while the opening thread builds the maps (decision 0020):
    /// one per core up to <see cref="EngineLimits.OpenWalkersMax"/>; none on one core (the walk and the build then share
    /// the opening thread, as handing records between threads would only add work there).
    /// </summary>
    public static int WalkersAtOpen => Environment.ProcessorCount <= 1 ? 0 : Math.Min(Environment.ProcessorCount, EngineLimits.OpenWalkersMax);

    // The record rules for one record of the walk; false when it does not decode (it must not be loaded).
    private static bool Check(MetadataVerifier.RecordWalk walk, HashSet<long> layers, MetadataDamage damage, ReadOnlySpan<byte> key, ReadOnlySpan<byte> value)
    {
        if (walk.Visit(key, value)) return true;
        // Loading by layer reported a record that does not decode on the layer it was found in: so does this.
        long prefix = key.Length >= 8 ? BinaryPrimitives.ReadInt64BigEndian(key) : -1;
        if (layers.Contains(prefix)) damage.Add(prefix, $"layer {prefix}: {MetadataStore.DescribeDamage(key, value)}");
        return false;
    }

    /// <summary>
    /// The walk in slices (decision 0020). The key space between the table's first and last keys is cut into slices;
    /// <paramref name="walkers"/> threads, each with its own LMDB read transaction (nothing writes while the store
    /// opens), take the slices in key order, check every record by the same rules as the single walk
    /// (<see cref="MetadataVerifier.RecordWalk"/>, one per slice, joined at the seams by
    /// <see cref="MetadataVerifier.RecordWalk.Absorb"/>) and hand the decoded records over in chunks; this thread
    /// applies them slice after slice, so the maps are built from the same records in the same order as by one walk.
    /// Returns false when anything is found damaged, or a walker fails: the caller then walks again on one thread,
    /// which reports the damage (or fails) exactly as before; the maps built here are dropped. The chunks pass through
    /// a <see cref="ChunkHand"/>.
    /// </summary>
    private static bool TryWalkInSlices(MetadataStore.View view, Dictionary<long, string> owners, long dataBlocks, HashSet<long> layers,
        VersionBuilder builder, int walkers, WalkLimits limits, MetadataDamage damage)
    {
        var slices = Slice.Cut(view.ExtentKeyBounds(), walkers == 1 ? 1 : walkers * limits.SlicesPerWalker);
        var hand = new ChunkHand(slices.Length, limits.Chunks, limits.ChunkRecords, reserve: walkers);
        Exception? failed = null;
        int next = 0;
        var threads = new Thread[walkers];
        for (int t = 0; t < walkers; t++)
        {
            threads[t] = new Thread(() =>
            {
                try
                {
                    using var own = view.Sibling();
                    for (int s; (s = Interlocked.Increment(ref next) - 1) < slices.Length;)
                        slices[s].Walk(own, s, owners, dataBlocks, layers, hand);
                }
                catch (OperationCanceledException) when (hand.Stopped)
                {
                    // Another thread failed, or this walk is over.
                }
                catch (Exception e)
                {
                    Interlocked.CompareExchange(ref failed, e, null);
                    hand.Stop();
                }
            }) { IsBackground = true, Name = "platter open: walk" };
            threads[t].Start();
        }
        try
        {
            for (int s = 0; s < slices.Length; s++)
                while (hand.Next(s) is { } chunk)
                {
                    for (int i = 0; i < chunk.Records; i++)
                        builder.Apply(chunk.Layer[i], chunk.Block[i], chunk.Count[i], chunk.Pba[i], chunk.CrcsOf(i));
                    hand.Return(chunk);
                }
        }
        catch (OperationCanceledException) when (Volatile.Read(ref failed) is not null)
        {
            // A walker failed: see below.
        }
        finally
        {
            hand.Stop(); // walkers still at work (this thread failed) stop at their next chunk
            foreach (var thread in threads) thread.Join();
        }
        // A walker that failed (LMDB refusing a page of a damaged store, say) leaves it to the walk on one thread too:
        // that one fails, or reports, exactly as it always did.
        if (failed is not null) return false;

        var scratch = slices[0].Damage;
        builder.Complete(scratch);
        var walk = slices[0].RecordWalk!;
        for (int s = 1; s < slices.Length; s++) walk.Absorb(slices[s].RecordWalk!);
        walk.Finish(view);
        if (slices.Any(s => s.Damage.Any)) return false;
        foreach (var (layer, records) in scratch.RecordsLoaded) damage.RecordsLoaded[layer] = records;
        return true;
    }

    /// <summary>
    /// The sizes of the walk in slices: the engine's (<see cref="Engine"/>, from <see cref="EngineLimits"/>), or tiny
    /// ones with which tests make the walkers wait for chunks all the time.
    /// </summary>
    internal sealed record WalkLimits(int SlicesPerWalker, int Chunks, int ChunkRecords)
    {
        public static readonly WalkLimits Engine = new(EngineLimits.OpenWalkSlicesPerWalker, EngineLimits.OpenWalkChunks, EngineLimits.OpenWalkChunkRecords);
    }

    /// <summary>One slice of the walk in slices: keys from <see cref="From"/> to <see cref="Until"/> (empty: the table's start or end).</summary>
    private sealed class Slice(byte[] from, byte[] until)
    {
        public readonly byte[] From = from, Until = until;
        public readonly MetadataDamage Damage = new();
        public MetadataVerifier.RecordWalk? RecordWalk;

        /// <summary>
        /// Cuts the keys between the table's first and last into <paramref name="count"/> slices of equal width (keys
        /// as 128-bit numbers: layer, then block). Records are spread unevenly in general; a slice that holds more
        /// only takes longer. A table without two well-formed bounds is one slice.
        /// </summary>
        public static Slice[] Cut((byte[]? First, byte[]? Last) bounds, int count)
        {
            if (bounds is not ({ Length: 16 } first, { Length: 16 } last) || count <= 1) return [new Slice([], [])];
            UInt128 low = Key(first), high = Key(last);
            if (high <= low) return [new Slice([], [])];
            UInt128 step = (high - low) / (ulong)count;
            var cuts = new byte[count + 1][];
            cuts[0] = cuts[count] = [];
            for (int i = 1; i < count; i++)
            {
                var cut = new byte[16];
                UInt128 at = low + step * (ulong)i;
                BinaryPrimitives.WriteUInt64BigEndian(cut, (ulong)(at >> 64));
                BinaryPrimitives.WriteUInt64BigEndian(cut.AsSpan(8), (ulong)at);
                cuts[i] = cut;
            }
            var slices = new Slice[count];
            for (int i = 0; i < count; i++) slices[i] = new Slice(cuts[i], cuts[i + 1]);
            return slices;

            static UInt128 Key(byte[] key) => new(BinaryPrimitives.ReadUInt64BigEndian(key), BinaryPrimitives.ReadUInt64BigEndian(key.AsSpan(8)));
        }

        /// <summary>Walks the slice (on a walker thread, <paramref name="view"/> its own), handing its records over in chunks.</summary>
        public void Walk(MetadataStore.View view, int index, Dictionary<long, string> owners, long dataBlocks, HashSet<long> layers, ChunkHand hand)
        {
            var walk = RecordWalk = new MetadataVerifier.RecordWalk(owners, dataBlocks, Damage);
            var chunk = hand.Take(index);
            view.ScanRaw(From, Until, (key, value) =>
            {
                if (!Check(walk, layers, Damage, key, value)) return;
                var (layer, block, pba, count) = MetadataStore.DecodeFields(key, value);
                var crcs = MetadataStore.CrcsOf(value);
                if (chunk.TryAdd(layer, block, count, pba, crcs)) return;
                hand.Give(index, chunk);
                chunk = hand.Take(index);
                if (!chunk.TryAdd(layer, block, count, pba, crcs)) throw new InvalidOperationException("an empty chunk holds any well-formed record");
            });
            hand.Give(index, chunk, last: true);
        }
    }

    /// <summary>
    /// Passes chunks from the walkers to the builder, slice by slice, under one lock (a chunk is ~0.3 ms of walking:
    /// a lock per chunk costs nothing, and a waiting thread sleeps rather than spins, leaving the cores to the walk).
    /// A fixed number of chunks circulate. A walker takes an empty one for the slice it walks; the slice being applied
    /// (the front) may take the last ones, a slice ahead of it only while more than <c>reserve</c> are free, so the
    /// front's walker always finds one and the builder never waits for a walker that waits for the builder.
    /// </summary>
    private sealed class ChunkHand
    {
        private readonly object _lock = new();
        private readonly Stack<RecordChunk> _free = new();
        private readonly Queue<RecordChunk>[] _walked;
        private readonly bool[] _ended;
        private readonly int _reserve;
        private int _front;
        private volatile bool _stopped;

        public ChunkHand(int slices, int chunks, int chunkRecords, int reserve)
        {
            _walked = new Queue<RecordChunk>[slices];
            for (int i = 0; i < slices; i++) _walked[i] = new Queue<RecordChunk>();
            _ended = new bool[slices];
            for (int i = 0; i < chunks; i++) _free.Push(new RecordChunk(chunkRecords));
            _reserve = reserve;
        }

        public bool Stopped => _stopped;

        /// <summary>An empty chunk for a walker of <paramref name="slice"/>; waits while the rule above says so.</summary>
        public RecordChunk Take(int slice)
        {
            lock (_lock)
            {
                while (!_stopped && !(_free.Count > 0 && (slice <= _front || _free.Count > _reserve))) Monitor.Wait(_lock);
                if (_stopped) throw new OperationCanceledException();
                return _free.Pop();
            }
        }

        /// <summary>A walker's chunk of <paramref name="slice"/>, in walk order; <paramref name="last"/> when the slice is walked.</summary>
        public void Give(int slice, RecordChunk chunk, bool last = false)
        {
            lock (_lock)
            {
                if (chunk.Records > 0) _walked[slice].Enqueue(chunk);
                else _free.Push(chunk);
                _ended[slice] |= last;
                Monitor.PulseAll(_lock);
            }
        }

        /// <summary>The builder's next chunk of <paramref name="slice"/> (which becomes the front), or null when the slice has no more.</summary>
        public RecordChunk? Next(int slice)
        {
            lock (_lock)
            {
                if (_front != slice)
                {
                    _front = slice;
                    Monitor.PulseAll(_lock);
                }
                while (!_stopped && _walked[slice].Count == 0 && !_ended[slice]) Monitor.Wait(_lock);
                if (_stopped) throw new OperationCanceledException();
                return _walked[slice].TryDequeue(out var chunk) ? chunk : null;
            }
        }

        /// <summary>A chunk the builder has applied.</summary>
        public void Return(RecordChunk chunk)
        {
            chunk.Clear();
            lock (_lock)
            {
                _free.Push(chunk);
                Monitor.PulseAll(_lock);
            }
        }

        /// <summary>Wakes every waiter to give up (a thread failed, or the walk is over).</summary>
        public void Stop()
        {
            lock (_lock)
            {
                _stopped = true;
                Monitor.PulseAll(_lock);
            }
        }
    }

    /// <summary>
    /// Decoded records on their way from a walker to the thread that builds the versions (<see cref="TryWalkInSlices"/>):
    /// up to <see cref="WalkLimits.ChunkRecords"/> records, and their CRCs copied out of LMDB's pages.
    /// </summary>
    private sealed class RecordChunk(int recordsMax)
    {
        private const int CrcBytesMax = 64 << 10; // 4 bytes a block: 4,096 one-block records, or 64 of ExtentBlocksMax blocks
        public readonly long[] Layer = new long[recordsMax], Block = new long[recordsMax], Pba = new long[recordsMax];
        public readonly int[] Count = new int[recordsMax];
        private readonly int[] _crcEnd = new int[recordsMax];
        private readonly byte[] _crcs = new byte[CrcBytesMax];
        public int Records { get; private set; }

        public bool TryAdd(long layer, long block, int count, long pba, ReadOnlySpan<byte> crcs)
        {
            int from = Records == 0 ? 0 : _crcEnd[Records - 1];
            if (Records == recordsMax || from + crcs.Length > _crcs.Length) return false;
            crcs.CopyTo(_crcs.AsSpan(from));
            (Layer[Records], Block[Records], Count[Records], Pba[Records]) = (layer, block, count, pba);
            _crcEnd[Records++] = from + crcs.Length;
            return true;
        }

        public ReadOnlySpan<byte> CrcsOf(int record)
        {
            int from = record == 0 ? 0 : _crcEnd[record - 1];
            return _crcs.AsSpan(from, _crcEnd[record] - from);
        }

        public void Clear() => Records = 0;
    }

    /// <summary>
    /// The second half of <see cref="LoadInOneWalk"/>: applies the records, in key order, to the versions of
    /// <paramref name="steps"/> (sorted by layer), a layer at a time. Runs on one thread, the walk's or its own.
    /// </summary>
    private sealed class VersionBuilder(List<LayerStep> steps, MapCrcPager? pager)
    {
        private int _at;
        private bool _started;
        private LeafLoader _loader = null!;
        private long _records;
        private readonly Dictionary<long, long> _loaded = new();

        public void Apply(long layer, long block, long count, long pba, ReadOnlySpan<byte> crcs)
        {
            while (_at < steps.Count && steps[_at].Layer < layer) Finish();
            if (_at == steps.Count || steps[_at].Layer != layer) return; // a layer nobody owns: the walk reported it
            if (!_started) Start();
            _loader.Apply(block, count, pba, crcs);
            _records++;
        }

        /// <summary>After the last record: completes the layers left (those without records too), and tells <paramref name="damage"/> what each loaded.</summary>
        public void Complete(MetadataDamage damage)
        {
            while (_at < steps.Count) Finish();
            foreach (var (layer, records) in _loaded) damage.RecordsLoaded[layer] = damage.RecordsLoaded.GetValueOrDefault(layer) + records;
        }

        private void Start()
        {
            var step = steps[_at];
            // The volume's map is its working map while its layers load; the snapshots take frozen copies of it.
            if (step.First && step.Volume.Origin is { } origin) step.Volume.Map = origin.Map.CloneMutable();
            _loader = new LeafLoader(step.Volume.Map, pager, step.Layer);
            _records = 0;
            _started = true;
        }

        private void Finish()
        {
            if (!_started) Start();
            var step = steps[_at];
            _loader.Flush();
            _loaded[step.Layer] = _loaded.GetValueOrDefault(step.Layer) + _records;
            if (step.Snapshot is { } snap) snap.Map = step.Volume.Map.Snapshot();
            _at++;
            _started = false;
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
