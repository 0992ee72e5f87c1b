using System.Buffers.Binary;

namespace Platter.Storage.Internal;

/// <summary>
/// Holders of CRCs that <see cref="MapCrcPager"/> may drop and fetch again, one set of a leaf's CRCs per slot: a
/// <see cref="PagedCrcs"/> holds one leaf's (one slot), the run leaves of a map region (decision 0018) up to 256.
/// </summary>
internal interface IPagedCrcs
{
    /// <summary>The CRCs of the leaf in <paramref name="slot"/> in slot order, or null while paged out.</summary>
    uint[]? Values(int slot);

    /// <summary>Sets (the pager, under its lock) or drops the CRCs of <paramref name="slot"/>.</summary>
    void SetValues(int slot, uint[]? values);

    /// <summary>The slot's second chance in the pager's clock (read since the hand last passed it).</summary>
    bool Referenced(int slot);

    void SetReferenced(int slot, bool referenced);

    /// <summary>The layer whose records the slot's leaf was loaded from: the lookup looks there first.</summary>
    long Layer(int slot);

    /// <summary>First block of the slot's leaf.</summary>
    long LeafBase(int slot);
}

/// <summary>
/// The CRCs of one packed leaf loaded from the metadata store (decision 0013), shared by every copy of the leaf (path
/// copies, snapshots, clones): the pager may drop them and fetch them again from the records they were loaded from.
/// </summary>
internal sealed class PagedCrcs(MapCrcPager pager, long layer, long leafBase, uint[] values) : IPagedCrcs
{
    public readonly MapCrcPager Pager = pager;

    /// <summary>The layer whose records the leaf was loaded from: the lookup looks there first.</summary>
    public readonly long LoadLayer = layer;

    /// <summary>First block of the leaf.</summary>
    public readonly long First = leafBase;

    /// <summary>The CRCs of the leaf's mapped slots in slot order, or null while paged out. Written under the pager's lock, read without it.</summary>
    public uint[]? Current = values;

    /// <summary>Read since the pager's clock last passed it (its second chance).</summary>
    public bool WasRead;

    public uint[]? Values(int slot) => Volatile.Read(ref Current);
    public void SetValues(int slot, uint[]? values) => Volatile.Write(ref Current, values);
    public bool Referenced(int slot) => WasRead;
    public void SetReferenced(int slot, bool referenced) => WasRead = referenced;
    public long Layer(int slot) => LoadLayer;
    public long LeafBase(int slot) => First;
}

/// <summary>
/// Keeps the CRCs of packed leaves loaded from the metadata store within a budget (decision 0013; the CRCs are ~4 of
/// the ~4.3 bytes a sequentially mapped block costs in a packed leaf, decision 0010). The leaves' runs stay in memory;
/// past the budget the CRCs of the leaves read longest ago are dropped (a clock: a FIFO in which a leaf read since the
/// hand last passed gets a second chance) and fetched again from LMDB when something needs them: a read that
/// verifies, scrub, the relocator, a write that unpacks the leaf.
/// <para>
/// Why a fetched CRC is right: only leaves built at open straight from one layer's records are paged, and such a leaf
/// is never changed (a write makes the volume's copy dense, with its own entries; the paged CRCs stay with the copies
/// that did not change). So every block the leaf maps, logical block L at physical block P, was mapped so by a record in
/// LMDB when the store opened, and P has stayed referenced since (the leaf still maps it), so it was never freed and
/// never written again. Any record that LMDB holds now mapping L to P is therefore that same write (or a copy of it made
/// by a checkpoint that merged a deleted snapshot's layer), with its CRC. The lookup takes, for each slot, a record
/// covering L whose physical block is P — from the leaf's own layer first, then from any layer (a deleted snapshot's
/// layer takes over its next version's records when the checkpoint merges them, so a leaf's records may have moved to
/// another layer) — and refuses to guess: a slot no record covers with the leaf's physical block fails the read with an
/// I/O error, which never happens on an intact store.
/// </para>
/// Lock order: the pager's lock is a leaf lock (taken inside a volume's lock by a read; takes nothing). The LMDB lookup
/// runs outside it, inside the volume's lock of the reader (a cold fetch: one read transaction and a few cursor seeks).
/// </summary>
internal sealed class MapCrcPager(MetadataStore metadata, long budgetBytes)
{
    private const int LeafBlocks = 256;
    // What an array of CRCs costs besides its elements (object header, method table, length), and its place in the
    // clock (a holder and a slot): the budget bounds the cache's bookkeeping too.
    private const int ArrayOverheadBytes = 24;
    private const int QueueEntryBytes = 16;

    private readonly object _lock = new();
    private readonly Queue<(IPagedCrcs Holder, int Slot)> _resident = new();
    private long _bytes, _fetches, _evictions;

    /// <summary>Largest number of bytes the resident CRC arrays take (one leaf's may exceed it, so a read can always proceed).</summary>
    public long BudgetBytes => budgetBytes;

    /// <summary>Bytes the resident CRC arrays (and their places in the clock) take now.</summary>
    public long ResidentBytes => Interlocked.Read(ref _bytes);

    /// <summary>Leaves whose CRCs were fetched again from the metadata store (tests and benchmarks observe paging; not a timing).</summary>
    public long Fetches => Interlocked.Read(ref _fetches);

    /// <summary>Leaves whose CRCs were dropped.</summary>
    public long Evictions => Interlocked.Read(ref _evictions);

    /// <summary>The CRCs of <paramref name="paged"/>, fetched from the metadata store when they were dropped. <paramref name="runs"/>: the leaf's runs.</summary>
    public uint[] Crcs(PagedCrcs paged, ulong[] runs)
    {
        var values = Volatile.Read(ref paged.Current);
        if (values is null) return Fetch(paged, 0, runs);
        if (!paged.WasRead) paged.WasRead = true; // a plain write: a lost one only costs the leaf its second chance
        return values;
    }

    /// <summary>The CRCs of the leaf in <paramref name="slot"/> of <paramref name="holder"/>, fetched when they were dropped. <paramref name="runs"/>: the leaf's runs.</summary>
    public uint[] Crcs(IPagedCrcs holder, int slot, ulong[] runs)
    {
        var values = holder.Values(slot);
        if (values is null) return Fetch(holder, slot, runs);
        if (!holder.Referenced(slot)) holder.SetReferenced(slot, true);
        return values;
    }

    /// <summary>Takes in a leaf whose CRCs were just loaded, dropping others' CRCs past the budget.</summary>
    public void Admit(IPagedCrcs holder, int slot = 0)
    {
        lock (_lock) AdmitLocked(holder, slot);
    }

    private void AdmitLocked(IPagedCrcs holder, int slot)
    {
        long size = Bytes(holder.Values(slot)!);
        while (_bytes + size > budgetBytes && _resident.TryDequeue(out var oldest))
        {
            if (oldest.Holder.Referenced(oldest.Slot))
            {
                oldest.Holder.SetReferenced(oldest.Slot, false);
                _resident.Enqueue(oldest);
                continue;
            }
            _bytes -= Bytes(oldest.Holder.Values(oldest.Slot)!);
            oldest.Holder.SetValues(oldest.Slot, null);
            _evictions++;
        }
        _resident.Enqueue((holder, slot));
        _bytes += size;
    }

    private static long Bytes(uint[] values) => ArrayOverheadBytes + QueueEntryBytes + 4L * values.Length;

    private uint[] Fetch(IPagedCrcs holder, int slot, ulong[] runs)
    {
        var values = Lookup(holder.Layer(slot), holder.LeafBase(slot), runs);
        lock (_lock)
        {
            // Another reader may have fetched them meanwhile: keep one copy.
            if (holder.Values(slot) is { } other) return other;
            holder.SetValues(slot, values);
            holder.SetReferenced(slot, false); // earned by a second read: a one-off scan (relocator, scrub) must not push out the leaves in use
            AdmitLocked(holder, slot);
            _fetches++;
        }
        return values;
    }

    // Finds the CRC of every slot the runs map in the records LMDB holds (see the class comment for why any record
    // mapping the slot's block to the slot's physical block will do).
    private uint[] Lookup(long loadLayer, long leafBase, ulong[] runs)
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
