using System.Buffers.Binary;

namespace Platter.Storage.Internal;

/// <summary>
/// Something whose parts <see cref="MapCrcPager"/> keeps within its budget, one part per slot: the CRCs of a full-run
/// slot of a map region (decision 0018), or a whole paged leaf (decision 0019, one slot).
/// </summary>
internal interface IPagedPart
{
    /// <summary>Bytes the slot's resident part takes (its array's elements), 0 while it is paged out.</summary>
    long ResidentBytes(int slot);

    /// <summary>Drops the slot's part (the pager, under its lock).</summary>
    void Drop(int slot);

    /// <summary>The slot's second chance in the pager's clock (read since the hand last passed it).</summary>
    bool Referenced(int slot);

    void SetReferenced(int slot, bool referenced);
}

/// <summary>The CRCs of full-run leaves (decision 0018) that <see cref="MapCrcPager"/> may drop and fetch again.</summary>
internal interface IPagedCrcs : IPagedPart
{
    /// <summary>The CRCs of the leaf in <paramref name="slot"/> in slot order, or null while paged out.</summary>
    uint[]? Values(int slot);

    /// <summary>Sets the CRCs of <paramref name="slot"/> (the pager, under its lock).</summary>
    void SetValues(int slot, uint[] values);

    /// <summary>The layer whose records the slot's leaf was loaded from: the lookup looks there first.</summary>
    long Layer(int slot);

    /// <summary>First block of the slot's leaf.</summary>
    long LeafBase(int slot);
}

/// <summary>
/// A leaf built at open from one layer's records over nothing (decision 0019): its packed form (runs and CRCs) may be
/// dropped and rebuilt from the records; the stub keeps where to look and a digest of the content to check it against.
/// </summary>
internal interface IPagedLeaf : IPagedPart
{
    /// <summary>The packed form (<see cref="MapTree"/>'s runs and CRCs), or null while paged out.</summary>
    ulong[]? Packed { get; }

    /// <summary>Installs the rebuilt packed form (the pager, under its lock).</summary>
    void Install(ulong[] packed);

    /// <summary>The layer whose records rebuilt the leaf last (loaded it, at first): a rebuild looks there first.</summary>
    long Layer { get; set; }

    long LeafBase { get; }

    /// <summary><see cref="MapTree.Digest"/> of the packed form.</summary>
    ulong Digest { get; }
}

/// <summary>
/// Keeps the map parts loaded from the metadata store within one budget (<c>platter serve --map-cache</c>): whole
/// packed leaves built at open (decision 0019) and the CRCs of full-run leaves (decisions 0013, 0018). Past the budget
/// the parts read longest ago are dropped (a clock: a FIFO in which a part read since the hand last passed gets a
/// second chance) and rebuilt from LMDB when something needs them: a read, a range read, block status, a diff, scrub,
/// the relocator, the unpack before a write.
/// <para>
/// <b>Why a fetched CRC is right</b> (full-run slots, 0013): such a slot is filled once from one layer's records at open
/// and never changes (a write makes the writer's copy an ordinary leaf). So every block it maps, logical block L at
/// physical block P, was mapped so by a record in LMDB when the store opened, and P has stayed referenced since (the
/// slot still maps it), so it was never freed and never written again. Any record that LMDB holds now mapping L to P is
/// therefore that same write (or a copy of it made by a checkpoint that merged a deleted snapshot's layer), with its
/// CRC. The lookup takes, for each block, a record covering L whose physical block is P — from the slot's own layer
/// first, then from any layer — and refuses to guess: a block no record covers so fails the read with an I/O error.
/// </para>
/// <para>
/// <b>Why a rebuilt leaf is right</b> (0019). Only leaves built at open straight from one
/// layer's records over nothing (the map held no leaf there) are paged, and they never change: no tree owns them, so
/// a write, a trim or a load over one copies it into an ordinary leaf of the writer first. The leaf is exactly that
/// layer's extent records in its 256 blocks. The rebuild gathers a layer's extent records in the range into the same
/// canonical packed form and accepts it only when its digest equals the stub's; it tries the layer that built the leaf
/// last, then every other layer (a checkpoint that merges a deleted snapshot's layer moves the child's records into the
/// snapshot's layer, which held no extent in that range, since the child's leaf was built over nothing). No layer whose
/// records give the digest: the I/O fails with an error naming the range and nothing is installed.
/// </para>
/// Lock order: the pager's lock is a leaf lock (taken inside a volume's lock by a read; takes nothing). The LMDB
/// lookup runs outside it, inside the volume's lock of the reader (a cold fetch: one read transaction and a few cursor
/// seeks).
/// </summary>
internal sealed class MapCrcPager(MetadataStore metadata, long budgetBytes)
{
    private const int LeafBlocks = 256;
    // What an array costs besides its elements (object header, method table, length), and its place in the clock (a
    // holder and a slot): the budget bounds the cache's bookkeeping too.
    private const int ArrayOverheadBytes = 24;
    private const int QueueEntryBytes = 16;

    private readonly object _lock = new();
    private readonly Queue<(IPagedPart Holder, int Slot)> _resident = new();
    private long _bytes, _fetches, _evictions, _leafFetches, _rebuildFailures;

    /// <summary>Largest number of bytes the resident parts take (one part may exceed it, so a read can always proceed).</summary>
    public long BudgetBytes => budgetBytes;

    /// <summary>Bytes the resident parts (and their places in the clock) take now.</summary>
    public long ResidentBytes => Interlocked.Read(ref _bytes);

    /// <summary>Parts fetched again from the metadata store, leaves and CRCs (tests and benchmarks observe paging; not a timing).</summary>
    public long Fetches => Interlocked.Read(ref _fetches);

    /// <summary>Whole leaves rebuilt from the metadata store (part of <see cref="Fetches"/>).</summary>
    public long LeafFetches => Interlocked.Read(ref _leafFetches);

    /// <summary>Parts dropped.</summary>
    public long Evictions => Interlocked.Read(ref _evictions);

    /// <summary>Leaves no layer's records rebuilt with the stub's digest (a broken invariant: each failed that I/O).</summary>
    public long RebuildFailures => Interlocked.Read(ref _rebuildFailures);

    /// <summary>The CRCs of the leaf in <paramref name="slot"/> of <paramref name="holder"/>, fetched when they were dropped. <paramref name="runs"/>: the leaf's runs.</summary>
    public uint[] Crcs(IPagedCrcs holder, int slot, ulong[] runs)
    {
        var values = holder.Values(slot);
        if (values is null) return FetchCrcs(holder, slot, runs);
        if (!holder.Referenced(slot)) holder.SetReferenced(slot, true);
        return values;
    }

    /// <summary>Takes in a part just loaded, dropping others past the budget.</summary>
    public void Admit(IPagedPart holder, int slot = 0)
    {
        lock (_lock) AdmitLocked(holder, slot);
    }

    private void AdmitLocked(IPagedPart holder, int slot)
    {
        long size = Bytes(holder.ResidentBytes(slot));
        while (_bytes + size > budgetBytes && _resident.TryDequeue(out var oldest))
        {
            if (oldest.Holder.Referenced(oldest.Slot))
            {
                oldest.Holder.SetReferenced(oldest.Slot, false);
                _resident.Enqueue(oldest);
                continue;
            }
            _bytes -= Bytes(oldest.Holder.ResidentBytes(oldest.Slot));
            oldest.Holder.Drop(oldest.Slot);
            _evictions++;
        }
        _resident.Enqueue((holder, slot));
        _bytes += size;
    }

    private static long Bytes(long elementBytes) => ArrayOverheadBytes + QueueEntryBytes + elementBytes;

    private uint[] FetchCrcs(IPagedCrcs holder, int slot, ulong[] runs)
    {
        var values = LookupCrcs(holder.Layer(slot), holder.LeafBase(slot), runs);
        lock (_lock)
        {
            // Another reader may have fetched them meanwhile: keep one copy.
            if (holder.Values(slot) is { } other) return other;
            holder.SetValues(slot, values);
            holder.SetReferenced(slot, false); // earned by a second read: a one-off scan (relocator, scrub) must not push out the parts in use
            AdmitLocked(holder, slot);
            _fetches++;
        }
        return values;
    }

    /// <summary>The packed form of a paged leaf, rebuilt from the metadata store when it was dropped (decision 0019).</summary>
    public ulong[] Leaf(IPagedLeaf leaf)
    {
        var (packed, layer) = Rebuild(leaf);
        lock (_lock)
        {
            if (leaf.Packed is { } other) return other;
            leaf.Install(packed);
            leaf.Layer = layer;
            leaf.SetReferenced(0, false);
            AdmitLocked(leaf, 0);
            _fetches++;
            _leafFetches++;
        }
        return packed;
    }

    // Gathers a layer's extent records in the leaf's range into the packed form, and accepts the first layer (the one
    // that built the leaf last, then the others in order) whose form has the stub's digest.
    private (ulong[] Packed, long Layer) Rebuild(IPagedLeaf leaf)
    {
        long first = leaf.Layer, leafBase = leaf.LeafBase;
        var runs = new MapTree.LeafRuns();
        using (var view = metadata.OpenLookupView())
        {
            if (TryLayer(view, first) is { } found) return (found, first);
            for (long layer = view.NextLayer(1); layer > 0; layer = layer == long.MaxValue ? -1 : view.NextLayer(layer + 1))
                if (layer != first && TryLayer(view, layer) is { } other) return (other, layer);
        }
        Interlocked.Increment(ref _rebuildFailures);
        throw new StorageException(StorageError.IoError,
            $"the map of blocks {leafBase}..{leafBase + LeafBlocks - 1} cannot be rebuilt from the metadata store: no layer's " +
            $"records give the content the map held (layer {first}); the I/O that needs it fails and nothing is guessed; run `platter check`");

        ulong[]? TryLayer(MetadataStore.View view, long layer)
        {
            runs.Clear();
            bool ordered = true;
            view.VisitLayerRange(layer, leafBase, leafBase + LeafBlocks, (_, block, count, pba, _, crcs) =>
            {
                if (pba == MetadataStore.TombstonePba || !ordered) return;
                long from = Math.Max(block, leafBase), to = Math.Min(block + count, leafBase + LeafBlocks);
                if (from >= to) return;
                int skip = (int)(from - block);
                ordered = runs.TryAdd((int)(from - leafBase), (int)(to - from), pba + skip, crcs[(4 * skip)..]);
            });
            if (!ordered || runs.Mapped == 0) return null;
            var packed = runs.Pack();
            return MapTree.Digest(packed) == leaf.Digest ? packed : null;
        }
    }

    // Finds the CRC of every slot the runs map in the records LMDB holds (see the class comment for why any record
    // mapping the slot's block to the slot's physical block will do).
    private uint[] LookupCrcs(long loadLayer, long leafBase, ulong[] runs)
    {
        var slots = new Slots(leafBase, runs);
        using (var view = metadata.OpenLookupView())
        {
            slots.Search(view, loadLayer);
            for (long layer = view.NextLayer(1); slots.Missing > 0 && layer > 0; layer = layer == long.MaxValue ? -1 : view.NextLayer(layer + 1))
                if (layer != loadLayer) slots.Search(view, layer);
        }
        if (slots.Missing > 0)
            throw new StorageException(StorageError.IoError,
                $"the metadata store holds no record of blocks {leafBase}..{leafBase + LeafBlocks - 1} as the map has them " +
                $"({slots.Missing} of {slots.Values.Length} checksums not found; layer {loadLayer}); run `platter check`");
        return slots.Values;
    }

    // What a lookup expects of each slot (the physical block the runs map it to, and where its CRC goes) and has found.
    private sealed class Slots
    {
        private readonly long _leafBase;
        private readonly long[] _pba = new long[LeafBlocks]; // -1: not mapped, or found already
        private readonly int[] _index = new int[LeafBlocks];
        public readonly uint[] Values;
        public int Missing;

        public Slots(long leafBase, ulong[] runs)
        {
            _leafBase = leafBase;
            Array.Fill(_pba, -1L);
            int mapped = 0;
            for (int r = 0; r < (int)runs[0]; r++)
            {
                ulong run = runs[1 + r];
                int start = MapTree.RunStart(run), length = MapTree.RunLength(run);
                long pba = MapTree.RunPba(run);
                for (int i = 0; i < length; i++)
                {
                    _pba[start + i] = pba + i;
                    _index[start + i] = mapped++;
                }
            }
            Values = new uint[mapped];
            Missing = mapped;
        }

        public void Search(MetadataStore.View view, long layer) =>
            view.VisitLayerRange(layer, _leafBase, _leafBase + LeafBlocks, (_, block, count, pba, _, crcs) =>
            {
                if (pba == MetadataStore.TombstonePba) return;
                long from = Math.Max(block, _leafBase), to = Math.Min(block + count, _leafBase + LeafBlocks);
                for (long b = from; b < to; b++)
                {
                    int slot = (int)(b - _leafBase);
                    if (_pba[slot] != pba + (b - block)) continue;
                    Values[_index[slot]] = BinaryPrimitives.ReadUInt32LittleEndian(crcs[(int)(4 * (b - block))..]);
                    _pba[slot] = -1;
                    Missing--;
                }
            });
    }
}
