using System.Buffers.Binary;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Platter.Storage.Internal;

/// <summary>Where one logical block lives: physical block + 1 (0 = unmapped) and its CRC32C.</summary>
[StructLayout(LayoutKind.Sequential, Pack = 4)]
internal struct BlockEntry
{
    public long PbaPlusOne;
    public uint Crc;

    public readonly bool IsMapped => PbaPlusOne != 0;
    public readonly long Pba => PbaPlusOne - 1;

    public static BlockEntry Mapped(long pba, uint crc) => new() { PbaPlusOne = pba + 1, Crc = crc };
}

/// <summary>Receives each block where two maps differ, with both entries (one may be unmapped).</summary>
internal delegate void MapDiffVisitor(long block, BlockEntry older, BlockEntry newer);

/// <summary>Like <see cref="MapDiffVisitor"/>; returns false to stop the walk.</summary>
internal delegate bool MapDiffUntilVisitor(long block, BlockEntry older, BlockEntry newer);

/// <summary>
/// One version of a block map: a persistent radix tree (256-way interior nodes over leaves of
/// 256 entries). Versions share every node they have not changed, so a snapshot is a
/// new reference to the same root (O(1) whatever the size), a clone of a snapshot starts from that root (reads walk
/// the same depth however deep the clone chain) and two versions can be compared by skipping shared subtrees (time
/// proportional to what differs). A node may be changed in place only by the tree whose owner token it carries; any
/// other tree copies the path first ("transient" persistent structures).
/// <para>
/// A leaf is held in one of two forms (decision 0010). <b>Dense</b>: 256 entries of 12 bytes, changed in place; the
/// form of leaves being written. <b>Packed</b>: an immutable array of runs (first slot, length, first physical block)
/// followed by the CRCs of the mapped slots, 8 bytes per run and 4 per mapped block: a leaf written sequentially costs
/// about 1.1 KiB instead of 3 KiB, a leaf with 16 scattered blocks about 230 bytes. Leaves loaded at open are packed;
/// a write to a packed leaf unpacks it, and each mutable tree packs again the leaves it unpacked longest ago once more
/// than <see cref="EngineLimits.DenseLeavesPerMapMax"/> are dense, so the dense (fast to change) part is bounded per
/// volume whatever its size. The two forms hold the same content: readers never see the difference.
/// </para>
/// <para>
/// A leaf that is one run of 256 blocks (1 MiB at consecutive physical blocks: what sequential writes make) is kept
/// above the leaf level (decision 0018): the interior slot that would point to it points instead to a
/// <see cref="RunLeaves"/> node shared by the full-run leaves of that interior, which holds each one's first physical
/// block and CRCs (paged like a packed leaf's, decision 0013, when they were loaded at open). Such a leaf costs about
/// 26 bytes of RAM besides its CRCs instead of ~150, and no object of its own. A write into it turns it into an
/// ordinary leaf of the writer's tree; open loads full-run leaves in this form, and a dense leaf that packs into one
/// full run takes it when its parent belongs to the tree packing it.
/// </para>
/// <para>
/// A packed leaf that open builds from one layer's records over nothing is a <see cref="PagedLeaf"/> (decision 0019):
/// a stub (count, layer, digest) whose packed form the store-wide <see cref="MapCrcPager"/> keeps within the map cache's
/// budget and rebuilds from LMDB when a reader needs it, checked against the digest. No tree owns a paged leaf, so it
/// never changes; a write copies it into an ordinary leaf first.
/// </para>
/// Not thread-safe: the owner of a mutable tree guards it; a frozen tree is immutable and may be read freely.
/// </summary>
internal sealed class MapTree
{
    // 8 bits per level: leaves hold bits 0..7 of the block number, five interior levels bits 8..47 (blocks < 2^44).
    private const int Fanout = 256;
    private const int LevelBits = 8;
    private const int InteriorLevels = 5;

    // Packed run word: bits 0..7 first slot, 8..15 length - 1, 16..63 first physical block (< 2^48 blocks = 1 EiB).
    private const int PbaShift = 16;
    private const long PackedPbaLimit = 1L << (64 - PbaShift);
    // A packed leaf is kept only when it is smaller than the dense one (words: count + runs + CRCs two per word).
    private const int DenseLeafBytes = Fanout * 12;
    // A packed leaf loaded at open is paged whole (decision 0019) only when it maps at least this many blocks: its stub
    // costs ~32 bytes more than an ordinary leaf node, and the packed array of one or two blocks little more than that.
    private const int PagedLeafMinBlocks = 4;

    // Slots live inline in the node object, so each level of a lookup is one dependent load, not two.
    [InlineArray(Fanout)]
    private struct ChildSlots
    {
        private Node? _child;
    }

    [InlineArray(Fanout)]
    private struct EntrySlots
    {
        private BlockEntry _entry;
    }

    private abstract class Node(object owner)
    {
        public readonly object Owner = owner;
        public int Count; // leaf: mapped entries; interior: non-null children
        public abstract Node CopyFor(object owner);
    }

    private sealed class Interior(object owner) : Node(owner)
    {
        public ChildSlots Children;

        // Level 1 only: the run leaves new full-run children of this node take a slot in (copies share it).
        public RunLeaves? Runs;

        public override Node CopyFor(object owner) => new Interior(owner) { Children = Children, Count = Count, Runs = Runs };
    }

    /// <summary>
    /// The full-run leaves of one level-1 region (256 leaves, 65,536 blocks; decision 0018), each in the slot of its
    /// position, so a child slot of an interior pointing here means "leaf i of this region is 256 blocks at physical
    /// block <c>PbaPlusOne[i] - 1</c>". Shared by every tree whose interior points to it (snapshots, clones, path
    /// copies). A slot is set once, claimed by a compare-and-swap, before any interior points to it, and never changes
    /// after (a tree that writes into such a leaf replaces its pointer with an ordinary leaf); only the CRCs of a slot
    /// loaded from the metadata store come and go with the pager. Never owned by a tree: a change always copies.
    /// </summary>
    private sealed class RunLeaves(long regionBase, MapCrcPager? pager) : Node(s_noOwner), IPagedCrcs
    {
        public readonly long RegionBase = regionBase;
        public readonly MapCrcPager? Pager = pager;
        public readonly long[] PbaPlusOne = new long[Fanout];
        // The 256 CRCs of each slot's leaf (null while paged out), and the layer they were loaded from (0: not paged,
        // kept in memory: a leaf made by a write, whose records may be only in the journal).
        private readonly uint[]?[] _crcs = new uint[]?[Fanout];
        private readonly long[] _layers = new long[Fanout];
        private readonly bool[] _referenced = new bool[Fanout];

        public override Node CopyFor(object owner) => throw new InvalidOperationException("run leaves are never copied");

        /// <summary>Claims a free slot and fills it; false when it is taken (by this tree or another sharing it).</summary>
        public bool TryFill(int slot, long pba, uint[] crcs, long layer)
        {
            if (Interlocked.CompareExchange(ref PbaPlusOne[slot], pba + 1, 0) != 0) return false;
            _layers[slot] = layer;
            Volatile.Write(ref _crcs[slot], crcs);
            return true;
        }

        /// <summary>The 256 CRCs of the slot's leaf, fetched from the metadata store when the pager dropped them.</summary>
        public uint[] Crcs(int slot)
        {
            var values = Volatile.Read(ref _crcs[slot]);
            if (values is null) return Pager!.Crcs(this, slot, [1, RunWord(0, Fanout, PbaPlusOne[slot] - 1)]);
            if (_layers[slot] != 0 && !_referenced[slot]) _referenced[slot] = true;
            return values;
        }

        public uint[]? Values(int slot) => Volatile.Read(ref _crcs[slot]);
        public void SetValues(int slot, uint[] values) => Volatile.Write(ref _crcs[slot], values);
        public long ResidentBytes(int slot) => Volatile.Read(ref _crcs[slot]) is { } values ? 4L * values.Length : 0;
        public void Drop(int slot) => Volatile.Write(ref _crcs[slot], null);
        public bool Referenced(int slot) => _referenced[slot];
        public void SetReferenced(int slot, bool referenced) => _referenced[slot] = referenced;
        public long Layer(int slot) => _layers[slot];
        public long LeafBase(int slot) => RegionBase + (long)slot * Fanout;
    }

    private static readonly object s_noOwner = new();

    private sealed class DenseEntries
    {
        public EntrySlots Entries;
    }

    // Exactly one of Dense and Packed is set, except in a PagedLeaf, which is never dense and whose Packed is null while
    // the pager has dropped it. Packed arrays are immutable (copies share them); dense entries change in place, by the
    // owner only. A frozen leaf may go from dense to packed while unlocked readers look at it: Packed is written before
    // Dense is cleared, and readers read Dense first, so they see one complete form or the other.
    private class Leaf(object owner) : Node(owner)
    {
        public DenseEntries? Dense;
        public ulong[]? Packed;

        // Read since the pager's clock last passed it (its second chance): meaningful for a PagedLeaf only, but kept
        // here (in the node's padding) so a read marks it without a type check.
        public bool WasRead;

        public override Node CopyFor(object owner)
        {
            var copy = new Leaf(owner) { Count = Count };
            var dense = Volatile.Read(ref Dense);
            if (dense is not null) copy.Dense = new DenseEntries { Entries = dense.Entries };
            else copy.Packed = Packed;
            return copy;
        }
    }

    /// <summary>
    /// A leaf built at open straight from one layer's records over nothing (decision 0019): the stub that stays in the
    /// tree (its count, where its records were, and a digest of its packed form) while the pager may drop the packed
    /// form and rebuild it from the records. It never changes: no tree owns it, so a write, a trim or a load over it
    /// copies it into an ordinary leaf of the writer's tree first (as a full-run leaf, decision 0018). Copies, snapshots
    /// and clones share it.
    /// </summary>
    private sealed class PagedLeaf(MapCrcPager pager, long layer, long leafBase, ulong digest) : Leaf(s_noOwner), IPagedLeaf
    {
        public readonly MapCrcPager Pager = pager;
        private readonly long _leafBase = leafBase;
        private readonly ulong _digest = digest;
        private long _layer = layer;

        public override Node CopyFor(object owner) => new Leaf(owner) { Count = Count, Packed = PackedOf(this) };

        public ulong[] Fetch() => Pager.Leaf(this);

        ulong[]? IPagedLeaf.Packed => Volatile.Read(ref Packed);
        public void Install(ulong[] packed) => Volatile.Write(ref Packed, packed);
        public long Layer { get => Volatile.Read(ref _layer); set => Volatile.Write(ref _layer, value); }
        public long LeafBase => _leafBase;
        public ulong Digest => _digest;
        public long ResidentBytes(int slot) => Volatile.Read(ref Packed) is { } packed ? 8L * packed.Length : 0;
        public void Drop(int slot) => Volatile.Write(ref Packed, null);
        public bool Referenced(int slot) => WasRead;
        public void SetReferenced(int slot, bool referenced) => WasRead = referenced;
    }

    // The packed form of a leaf that is not dense: its array, or a paged leaf's, rebuilt from the metadata store when
    // the pager dropped it (only a PagedLeaf has neither form). A caller keeps the array it got even if it is dropped
    // meanwhile.
    private static ulong[] PackedOf(Leaf leaf)
    {
        var packed = Volatile.Read(ref leaf.Packed);
        if (packed is null) return ((PagedLeaf)leaf).Fetch(); // the cold path: a checked cast
        if (!leaf.WasRead) leaf.WasRead = true; // a plain write: a lost one only costs a paged leaf its second chance
        return packed;
    }

    /// <summary>A 64-bit digest of a packed leaf (decision 0019: a rebuilt leaf is accepted only with its stub's digest).</summary>
    internal static ulong Digest(ulong[] packed)
    {
        ulong h = 0x9E37_79B9_7F4A_7C15UL ^ (ulong)packed.Length;
        foreach (ulong word in packed)
        {
            h ^= word;
            h *= 0xBF58_476D_1CE4_E5B9UL;
            h ^= h >> 31;
            h = BitOperations.RotateLeft(h, 27) * 0x94D0_49BB_1331_11EBUL;
        }
        return h ^ (h >> 29);
    }

    // The level says which kind a node is (0 = a leaf or run leaves), so casts need no type check above level 0.
    private static Interior AsInterior(Node node) => Unsafe.As<Interior>(node);
    private static Leaf AsLeaf(Node node) => Unsafe.As<Leaf>(node);
    private static RunLeaves AsRuns(Node node) => Unsafe.As<RunLeaves>(node);

    // The slot of a leaf among its level-1 region's 256 (where run leaves keep it).
    private static int RegionSlot(long block) => (int)((block >> LevelBits) & (Fanout - 1));

    internal static ulong RunWord(int start, int length, long pba) => (uint)start | ((ulong)(length - 1) << 8) | ((ulong)pba << PbaShift);

    [InlineArray(InteriorLevels + 1)]
    private struct NodePath
    {
        private Node _node;
    }

    private Node? _root;
    private object? _owner; // null: frozen

    // Leaves this tree unpacked (or created dense) with their first blocks, oldest first; packed again past
    // DenseLeavesPerMapMax. Only a mutable tree has one.
    private Queue<(Leaf Leaf, long Base)>? _denseLeaves;

    private MapTree(Node? root, long mapped, bool frozen)
    {
        _root = root;
        MappedBlocks = mapped;
        _owner = frozen ? null : new object();
    }

    /// <summary>An empty, mutable map.</summary>
    public MapTree() : this(null, 0, frozen: false) { }

    /// <summary>Number of mapped blocks.</summary>
    public long MappedBlocks { get; private set; }

    /// <summary>Leaves packed so far by any map (a test observes that packing happened; not a timing).</summary>
    public static long LeavesPacked => Interlocked.Read(ref s_leavesPacked);
    private static long s_leavesPacked;

    /// <summary>Leaves packed into run leaves so far by any map (part of <see cref="LeavesPacked"/>; tests observe it).</summary>
    public static long LeavesPackedAsRuns => Interlocked.Read(ref s_leavesPackedAsRuns);
    private static long s_leavesPackedAsRuns;

    /// <summary>Full-run leaves stored as run leaves by <see cref="TrySetNewLeaf"/> so far (open's loader; tests observe it).</summary>
    public static long RunLeavesLoaded => Interlocked.Read(ref s_runLeavesLoaded);
    private static long s_runLeavesLoaded;

    /// <summary>This version's leaves by form: ordinary ones, and full runs kept in run leaves (tests observe forms).</summary>
    public (long Leaves, long FullRuns) CountLeafForms()
    {
        long leaves = 0, runs = 0;
        Count(_root, InteriorLevels);
        return (leaves, runs);

        void Count(Node? node, int level)
        {
            if (node is null) return;
            if (level == 0)
            {
                if (node is RunLeaves) runs++;
                else leaves++;
                return;
            }
            for (int i = 0; i < Fanout; i++) Count(AsInterior(node).Children[i], level - 1);
        }
    }

    /// <summary>
    /// Returns a frozen version holding the current content, in O(1). This tree stays mutable but no longer owns its
    /// nodes, so its next change to any of them copies that node's path.
    /// </summary>
    public MapTree Snapshot()
    {
        if (_owner is not null) _owner = new object();
        return new MapTree(_root, MappedBlocks, frozen: true);
    }

    /// <summary>A new mutable map with this map's content, sharing every node (O(1)).</summary>
    public MapTree CloneMutable()
    {
        if (_owner is not null) _owner = new object();
        return new MapTree(_root, MappedBlocks, frozen: false);
    }

    public BlockEntry Get(long block)
    {
        var node = FindLeaf(block);
        if (node is null) return default;
        int slot = (int)(block & (Fanout - 1));
        if (node is RunLeaves runs) return RunGet(runs, block);
        var leaf = AsLeaf(node);
        var dense = Volatile.Read(ref leaf.Dense);
        return dense is not null ? dense.Entries[slot] : PackedGet(leaf, slot);
    }

    private static BlockEntry RunGet(RunLeaves runs, long block)
    {
        int region = RegionSlot(block), slot = (int)(block & (Fanout - 1));
        return BlockEntry.Mapped(runs.PbaPlusOne[region] - 1 + slot, runs.Crcs(region)[slot]);
    }

    // Writes the entries of slots [from, from + destination.Length) of the full-run leaf holding `block`; without
    // `crcs`, the CRCs are left 0 (see Unpack).
    private static void RunUnpack(RunLeaves runs, long block, int from, Span<BlockEntry> destination, bool crcs)
    {
        int region = RegionSlot(block);
        long pba = runs.PbaPlusOne[region] - 1 + from;
        var values = crcs ? runs.Crcs(region) : null;
        for (int i = 0; i < destination.Length; i++)
            destination[i] = BlockEntry.Mapped(pba + i, values is null ? 0 : values[from + i]);
    }

    /// <summary>Copies the entries of <paramref name="destination"/>.Length blocks starting at <paramref name="firstBlock"/>.</summary>
    public void Get(long firstBlock, Span<BlockEntry> destination)
    {
        int done = 0;
        while (done < destination.Length)
        {
            long block = firstBlock + done;
            int inLeaf = (int)(block & (Fanout - 1));
            int n = Math.Min(Fanout - inLeaf, destination.Length - done);
            var node = FindLeaf(block);
            if (node is null) destination.Slice(done, n).Clear();
            else if (node is RunLeaves runs) RunUnpack(runs, block, inLeaf, destination.Slice(done, n), crcs: true);
            else if (Volatile.Read(ref AsLeaf(node).Dense) is { } dense) ((ReadOnlySpan<BlockEntry>)dense.Entries).Slice(inLeaf, n).CopyTo(destination.Slice(done, n));
            else Unpack(AsLeaf(node), inLeaf, destination.Slice(done, n), crcs: true);
            done += n;
        }
    }

    // The leaf level's node for `block`: a Leaf, or the RunLeaves holding its leaf as a full run.
    private Node? FindLeaf(long block)
    {
        var node = _root;
        for (int level = InteriorLevels; level > 0 && node is not null; level--)
            node = AsInterior(node).Children[(int)((block >> (level * LevelBits)) & (Fanout - 1))];
        return node;
    }

    /// <summary>Sets one block and returns what was there before.</summary>
    public BlockEntry Set(long block, BlockEntry entry)
    {
        var owner = _owner ?? throw new InvalidOperationException("a frozen map cannot change");
        if ((ulong)block >= 1UL << (LevelBits * (InteriorLevels + 1))) throw new ArgumentOutOfRangeException(nameof(block));
        if (!entry.IsMapped && FindLeaf(block) is null) return default;

        Span<int> slots = stackalloc int[InteriorLevels];
        var path = new NodePath();
        WalkDown(owner, block, slots, ref path);

        var leafNode = AsLeaf(path[0]);
        var dense = leafNode.Dense ?? Unpack(leafNode, block & ~(long)(Fanout - 1));
        ref var target = ref dense.Entries[(int)(block & (Fanout - 1))];
        var old = target;
        target = entry;
        int delta = (entry.IsMapped ? 1 : 0) - (old.IsMapped ? 1 : 0);
        leafNode.Count += delta;
        MappedBlocks += delta;
        Prune(slots, ref path);
        return old;
    }

    /// <summary>
    /// Makes the leaves holding [<paramref name="firstBlock"/>, + <paramref name="count"/>) this tree's own, rebuilding
    /// a paged leaf from the metadata store if it was dropped (decision 0019), so that the <see cref="Set"/> calls that
    /// follow need nothing from the store: a leaf that cannot be rebuilt fails here, before anything changed, rather
    /// than halfway through a write of several blocks.
    /// </summary>
    public void PrepareSet(long firstBlock, int count)
    {
        var owner = _owner ?? throw new InvalidOperationException("a frozen map cannot change");
        Span<int> slots = stackalloc int[InteriorLevels];
        for (long leafBase = firstBlock & ~(long)(Fanout - 1); leafBase < firstBlock + count; leafBase += Fanout)
        {
            if (FindLeaf(leafBase) is not PagedLeaf) continue;
            var path = new NodePath();
            WalkDown(owner, leafBase, slots, ref path, createDense: false);
        }
    }

    /// <summary>
    /// Rebuilds now any dropped paged leaf holding [<paramref name="firstBlock"/>, + <paramref name="count"/>) (decision
    /// 0019), without changing the tree: a writer calls it on its parent's map before changing its own, so that a leaf
    /// that cannot be rebuilt fails the write before anything changed. (The cache may drop the leaf again before it is
    /// read; its rebuild then succeeds unless the metadata file was damaged in that instant.)
    /// </summary>
    public void FetchLeaves(long firstBlock, long count)
    {
        // NextMapped reads each leaf that maps anything in the range (rebuilding a dropped one) and skips empty space
        // through the interiors, so a trim of a huge thin range costs what the tree holds there, not its length.
        long end = firstBlock + count;
        for (long b = NextMapped(firstBlock, end); b >= 0; b = NextMapped((b | (Fanout - 1)) + 1, end)) { }
    }

    // Walks down to the leaf of `block` (or to its level-1 interior when `toLevel` is 1), copying every node this tree
    // does not own (path copy) and creating missing ones; a created leaf is empty, dense (for Set) or with no form yet
    // (for SetLeaf, which gives it one). A full-run leaf (RunLeaves) becomes an ordinary dense leaf of this tree.
    private void WalkDown(object owner, long block, Span<int> slots, ref NodePath path, bool createDense = true, int toLevel = 0)
    {
        ref Node? link = ref _root;
        long leafBase = block & ~(long)(Fanout - 1);
        for (int level = InteriorLevels; level >= toLevel; level--)
        {
            var node = link;
            if (node is null)
            {
                node = level != 0 ? new Interior(owner) : createDense ? NewDenseLeaf(owner, leafBase) : new Leaf(owner);
                link = node;
                if (level < InteriorLevels) path[level + 1].Count++;
            }
            else if (level == 0 && node is RunLeaves runs)
            {
                var leaf = new Leaf(owner) { Count = Fanout, Dense = new DenseEntries() };
                RunUnpack(runs, block, 0, leaf.Dense.Entries, crcs: true);
                node = leaf;
                link = node;
                NoteDense(leaf, leafBase);
            }
            else if (!ReferenceEquals(node.Owner, owner))
            {
                node = node.CopyFor(owner);
                link = node;
                if (level == 0 && AsLeaf(node).Dense is not null) NoteDense(AsLeaf(node), leafBase);
            }
            path[level] = node;
            if (level == toLevel) break;
            int slot = (int)((block >> (level * LevelBits)) & (Fanout - 1));
            slots[level - 1] = slot;
            link = ref AsInterior(node).Children[slot];
        }
    }

    // Prunes emptied nodes along the path so scans skip them.
    private void Prune(Span<int> slots, ref NodePath path)
    {
        for (int level = 0; level < InteriorLevels && path[level].Count == 0; level++)
        {
            AsInterior(path[level + 1]).Children[slots[level]] = null;
            path[level + 1].Count--;
        }
        if (path[InteriorLevels].Count == 0) _root = null;
    }

    private Leaf NewDenseLeaf(object owner, long leafBase)
    {
        var leaf = new Leaf(owner) { Dense = new DenseEntries() };
        NoteDense(leaf, leafBase);
        return leaf;
    }

    // Turns an owned packed leaf into its dense form (the owner holds the tree's lock, so no reader looks at it).
    private DenseEntries Unpack(Leaf leaf, long leafBase)
    {
        var dense = new DenseEntries();
        Unpack(leaf, 0, dense.Entries, crcs: true);
        leaf.Dense = dense;
        leaf.Packed = null;
        NoteDense(leaf, leafBase);
        return dense;
    }

    // Remembers a dense leaf of this tree; past the limit, packs the one made dense longest ago. That leaf may since
    // have been frozen by a snapshot (then unlocked readers may look at it: see Leaf) or dropped (packing it is wasted
    // but harmless); it is never a leaf another mutable tree owns.
    private void NoteDense(Leaf leaf, long leafBase)
    {
        var queue = _denseLeaves ??= new Queue<(Leaf, long)>();
        queue.Enqueue((leaf, leafBase));
        while (queue.Count > EngineLimits.DenseLeavesPerMapMax)
        {
            // A leaf unpacked again is queued twice: never pack the one the caller is about to change.
            var oldest = queue.Dequeue();
            if (!ReferenceEquals(oldest.Leaf, leaf)) TryPack(oldest.Leaf, oldest.Base);
        }
    }

    /// <summary>Packs every dense leaf this tree made dense (a test uses it, and so does a bulk load when done).</summary>
    public void PackAll()
    {
        if (_denseLeaves is null) return;
        while (_denseLeaves.Count > 0)
        {
            var (leaf, leafBase) = _denseLeaves.Dequeue();
            TryPack(leaf, leafBase);
        }
    }

    private void TryPack(Leaf leaf, long leafBase)
    {
        var dense = leaf.Dense;
        if (dense is null) return;
        if (TryPackAsRun(leaf, leafBase, dense.Entries))
        {
            Interlocked.Increment(ref s_leavesPackedAsRuns);
            // A leaf a snapshot shares stays in its tree: pack it there too (the tree packing owns it otherwise, and
            // just dropped it).
            if (ReferenceEquals(leaf.Owner, _owner))
            {
                Interlocked.Increment(ref s_leavesPacked);
                return;
            }
        }
        var packed = Pack(dense.Entries);
        if (packed is null) return;
        Volatile.Write(ref leaf.Packed, packed);
        Volatile.Write(ref leaf.Dense, null);
        Interlocked.Increment(ref s_leavesPacked);
    }

    // A dense leaf that is one full run moves to its region's run leaves when this tree owns its parent (then no frozen
    // tree, hence no unlocked reader, can see the parent) and still holds the leaf there. The leaf's CRCs stay in memory
    // (not paged: its records may be only in the journal).
    private bool TryPackAsRun(Leaf leaf, long leafBase, ReadOnlySpan<BlockEntry> entries)
    {
        var owner = _owner;
        if (owner is null || !IsFullRun(entries)) return false;
        var node = _root;
        for (int level = InteriorLevels; level > 1 && node is not null; level--)
            node = AsInterior(node).Children[(int)((leafBase >> (level * LevelBits)) & (Fanout - 1))];
        if (node is null || !ReferenceEquals(node.Owner, owner)) return false;
        var parent = AsInterior(node);
        int region = RegionSlot(leafBase);
        if (!ReferenceEquals(parent.Children[region], leaf)) return false;
        var crcs = new uint[Fanout];
        for (int i = 0; i < Fanout; i++) crcs[i] = entries[i].Crc;
        parent.Children[region] = ClaimRun(parent, leafBase, entries[0].Pba, crcs, pager: null, layer: 0);
        return true;
    }

    // Fills the slot of `leafBase` in the interior's run leaves (new ones when it has none, they page differently, or
    // the slot is taken) and returns them, for the caller to point the interior's slot at.
    private static RunLeaves ClaimRun(Interior parent, long leafBase, long pba, uint[] crcs, MapCrcPager? pager, long layer)
    {
        int region = RegionSlot(leafBase);
        var runs = parent.Runs;
        if (runs is null || (layer != 0 && !ReferenceEquals(runs.Pager, pager)) || !runs.TryFill(region, pba, crcs, layer))
        {
            runs = new RunLeaves(leafBase & ~((long)Fanout * Fanout - 1), pager);
            runs.TryFill(region, pba, crcs, layer);
            parent.Runs = runs;
        }
        if (layer != 0) pager!.Admit(runs, region);
        return runs;
    }

    // True when all 256 entries are mapped to consecutive physical blocks (one run).
    private static bool IsFullRun(ReadOnlySpan<BlockEntry> entries)
    {
        long first = entries[0].PbaPlusOne;
        if (first == 0 || (ulong)(first - 1 + Fanout) > PackedPbaLimit) return false;
        for (int i = 1; i < Fanout; i++)
            if (entries[i].PbaPlusOne != first + i) return false;
        return true;
    }

    // The packed form of 256 entries, or null when it would not be smaller than the dense one (or a block is beyond
    // what a run word holds).
    private static ulong[]? Pack(ReadOnlySpan<BlockEntry> entries)
    {
        int runs = 0, mapped = 0;
        for (int i = 0; i < Fanout; i++)
        {
            var e = entries[i];
            if (!e.IsMapped) continue;
            if ((ulong)e.Pba >= PackedPbaLimit) return null;
            mapped++;
            if (StartsRun(entries, i)) runs++;
        }
        int words = 1 + runs + (mapped + 1) / 2;
        if (words * 8 >= DenseLeafBytes) return null;
        var packed = new ulong[words];
        packed[0] = (ulong)runs;
        int run = 0, crc = 0;
        for (int i = 0; i < Fanout; i++)
        {
            var e = entries[i];
            if (!e.IsMapped) continue;
            if (StartsRun(entries, i))
                packed[1 + run++] = (uint)i | ((ulong)e.Pba << PbaShift);
            else
                packed[run] += 1UL << 8; // one more block in the current run
            SetCrc(packed, 1 + runs, crc++, e.Crc);
        }
        return packed;
    }

    // Slot i (mapped) starts a run unless the slot before is mapped to the physical block just before.
    private static bool StartsRun(ReadOnlySpan<BlockEntry> entries, int i) =>
        i == 0 || !entries[i - 1].IsMapped || entries[i - 1].PbaPlusOne + 1 != entries[i].PbaPlusOne;

    private static void SetCrc(ulong[] packed, int crcBase, int index, uint crc)
    {
        ref ulong word = ref packed[crcBase + (index >> 1)];
        int shift = (index & 1) * 32;
        word = (word & ~(0xFFFF_FFFFUL << shift)) | ((ulong)crc << shift);
    }

    private static uint GetCrc(ulong[] packed, int crcBase, int index) => (uint)(packed[crcBase + (index >> 1)] >> ((index & 1) * 32));

    internal static int RunStart(ulong run) => (int)(run & 0xFF);
    internal static int RunLength(ulong run) => (int)((run >> 8) & 0xFF) + 1;
    internal static long RunPba(ulong run) => (long)(run >> PbaShift);

    private static BlockEntry PackedGet(Leaf leaf, int slot)
    {
        var packed = PackedOf(leaf);
        int runs = (int)packed[0];
        int crcIndex = 0;
        for (int r = 0; r < runs; r++)
        {
            ulong run = packed[1 + r];
            int start = RunStart(run), length = RunLength(run);
            if (slot < start) break;
            if (slot < start + length)
                return BlockEntry.Mapped(RunPba(run) + (slot - start), GetCrc(packed, 1 + runs, crcIndex + slot - start));
            crcIndex += length;
        }
        return default;
    }

    // Writes the entries of slots [from, from + destination.Length) of a packed leaf; without `crcs`, the CRCs are left 0
    // (a caller that compares physical blocks only does not make the pager fetch paged-out CRCs).
    private static void Unpack(Leaf leaf, int from, Span<BlockEntry> destination, bool crcs)
    {
        destination.Clear();
        var packed = PackedOf(leaf);
        int end = from + destination.Length;
        int runs = (int)packed[0];
        int crcIndex = 0;
        for (int r = 0; r < runs; r++)
        {
            ulong run = packed[1 + r];
            int start = RunStart(run), length = RunLength(run);
            if (start >= end) break;
            long pba = RunPba(run);
            for (int i = Math.Max(start, from); i < Math.Min(start + length, end); i++)
                destination[i - from] = BlockEntry.Mapped(pba + (i - start), crcs ? GetCrc(packed, 1 + runs, crcIndex + i - start) : 0);
            crcIndex += length;
        }
    }

    // The entries of a leaf-level node (at `leafBase`) as one span: the dense entries themselves, or the packed (or
    // full-run) ones unpacked into `scratch`. Without `crcs` the CRCs of a packed or full-run leaf may read as 0.
    private static ReadOnlySpan<BlockEntry> EntriesOf(Node node, long leafBase, Span<BlockEntry> scratch, bool crcs = true)
    {
        if (node is RunLeaves runs) RunUnpack(runs, leafBase, 0, scratch, crcs);
        else if (Volatile.Read(ref AsLeaf(node).Dense) is { } dense) return dense.Entries;
        else Unpack(AsLeaf(node), 0, scratch, crcs);
        return scratch;
    }

    /// <summary>True when some block of the leaf holding <paramref name="block"/> may be mapped (the leaf exists).</summary>
    public bool HasLeaf(long block) => FindLeaf(block) is not null;

    /// <summary>
    /// The runs of one leaf being built, in slot order (open's loader: a layer's records are runs already), so the
    /// leaf can be stored packed (<see cref="TrySetNewLeaf"/>) without the passes over 256 entries that packing
    /// <see cref="SetLeaf"/>'s entries costs. Reused leaf after leaf.
    /// </summary>
    public sealed class LeafRuns
    {
        private readonly ulong[] _runs = new ulong[Fanout];
        private readonly uint[] _crcs = new uint[Fanout];
        private int _runCount, _mapped, _end;

        public void Clear() => _runCount = _mapped = _end = 0;

        /// <summary>
        /// Adds <paramref name="length"/> blocks from <paramref name="slot"/> at physical <paramref name="pba"/> with
        /// their CRCs (4 bytes each, little-endian). False, changing nothing, when they do not follow what the leaf
        /// holds (records out of order: a damaged store) or lie beyond what a run word holds: use entries instead.
        /// </summary>
        public bool TryAdd(int slot, int length, long pba, ReadOnlySpan<byte> crcs)
        {
            if (slot < _end || (ulong)(pba + length) > PackedPbaLimit) return false;
            ref ulong last = ref _runs[Math.Max(_runCount - 1, 0)];
            if (_runCount > 0 && slot == _end && RunPba(last) + RunLength(last) == pba)
                last += (ulong)length << 8; // continues the run before it, physically too
            else
                _runs[_runCount++] = (uint)slot | ((ulong)(length - 1) << 8) | ((ulong)pba << PbaShift);
            for (int i = 0; i < length; i++) _crcs[_mapped + i] = BinaryPrimitives.ReadUInt32LittleEndian(crcs[(4 * i)..]);
            _mapped += length;
            _end = slot + length;
            return true;
        }

        /// <summary>Writes the runs as 256 entries (the fallback to <see cref="SetLeaf"/>).</summary>
        public void CopyTo(Span<BlockEntry> entries)
        {
            entries.Clear();
            int crc = 0;
            for (int r = 0; r < _runCount; r++)
            {
                ulong run = _runs[r];
                for (int i = 0; i < RunLength(run); i++) entries[RunStart(run) + i] = BlockEntry.Mapped(RunPba(run) + i, _crcs[crc++]);
            }
        }

        // True when the packed form (runs and CRCs) is smaller than the dense one.
        internal bool PacksSmaller => (1 + _runCount + (_mapped + 1) / 2) * 8 < DenseLeafBytes;

        internal ulong[] Pack()
        {
            int words = 1 + _runCount + (_mapped + 1) / 2;
            var packed = new ulong[words];
            packed[0] = (ulong)_runCount;
            _runs.AsSpan(0, _runCount).CopyTo(packed.AsSpan(1));
            for (int i = 0; i < _mapped; i++) SetCrc(packed, 1 + _runCount, i, _crcs[i]);
            return packed;
        }

        internal uint[] Crcs() => _crcs.AsSpan(0, _mapped).ToArray();

        // The first physical block when the leaf is one run of all 256 blocks, else null.
        internal long? FullRunPba => _runCount == 1 && _mapped == Fanout ? RunPba(_runs[0]) : null;

        internal int Mapped => _mapped;
    }

    /// <summary>
    /// Stores <paramref name="runs"/> as the leaf holding <paramref name="leafBase"/> (a multiple of 256), packed, when
    /// that leaf holds nothing yet and packed is the smaller form; false, changing nothing, otherwise (then
    /// <see cref="SetLeaf"/> with the entries does it). The result is what <see cref="SetLeaf"/> would store.
    /// <para>
    /// With a <paramref name="pager"/>, the runs came from the records of <paramref name="layer"/> as the metadata store
    /// holds them, over nothing, so the pager may drop the leaf and rebuild it from those records: a full run keeps its
    /// physical block and pages its CRCs (decisions 0013, 0018), another leaf that maps enough blocks for it to save
    /// memory becomes a <see cref="PagedLeaf"/> stub whose whole packed form pages (decision 0019).
    /// </para>
    /// </summary>
    public bool TrySetNewLeaf(long leafBase, LeafRuns runs, MapCrcPager? pager = null, long layer = 0)
    {
        var owner = _owner ?? throw new InvalidOperationException("a frozen map cannot change");
        if ((leafBase & (Fanout - 1)) != 0) throw new ArgumentException("a whole leaf", nameof(leafBase));
        if ((ulong)leafBase >= 1UL << (LevelBits * (InteriorLevels + 1))) throw new ArgumentOutOfRangeException(nameof(leafBase));
        if (runs.Mapped == 0 || FindLeaf(leafBase) is not null || !runs.PacksSmaller) return false;
        Span<int> slots = stackalloc int[InteriorLevels];
        var path = new NodePath();
        if (runs.FullRunPba is long pba)
        {
            WalkDown(owner, leafBase, slots, ref path, toLevel: 1);
            var parent = AsInterior(path[1]);
            parent.Children[RegionSlot(leafBase)] = ClaimRun(parent, leafBase, pba, runs.Crcs(), pager, pager is null ? 0 : layer);
            parent.Count++;
            MappedBlocks += Fanout;
            Interlocked.Increment(ref s_runLeavesLoaded);
            return true;
        }
        MappedBlocks += runs.Mapped;
        if (pager is not null && runs.Mapped >= PagedLeafMinBlocks)
        {
            var packed = runs.Pack();
            var paged = new PagedLeaf(pager, layer, leafBase, Digest(packed)) { Count = runs.Mapped, Packed = packed };
            WalkDown(owner, leafBase, slots, ref path, toLevel: 1);
            AsInterior(path[1]).Children[RegionSlot(leafBase)] = paged;
            path[1].Count++;
            pager.Admit(paged);
            return true;
        }
        WalkDown(owner, leafBase, slots, ref path, createDense: false);
        var leaf = AsLeaf(path[0]);
        leaf.Count = runs.Mapped;
        leaf.Packed = runs.Pack();
        leaf.Dense = null;
        return true;
    }

    /// <summary>
    /// Replaces the leaf holding <paramref name="leafBase"/> (a multiple of 256) with <paramref name="entries"/>, stored
    /// packed when that is smaller. The bulk form of <see cref="Set"/> for building maps at open.
    /// </summary>
    public void SetLeaf(long leafBase, ReadOnlySpan<BlockEntry> entries)
    {
        var owner = _owner ?? throw new InvalidOperationException("a frozen map cannot change");
        if ((leafBase & (Fanout - 1)) != 0 || entries.Length != Fanout) throw new ArgumentException("a whole leaf", nameof(entries));
        if ((ulong)leafBase >= 1UL << (LevelBits * (InteriorLevels + 1))) throw new ArgumentOutOfRangeException(nameof(leafBase));
        int count = 0;
        foreach (var e in entries) if (e.IsMapped) count++;
        if (count == 0 && FindLeaf(leafBase) is null) return;

        Span<int> slots = stackalloc int[InteriorLevels];
        var path = new NodePath();
        WalkDown(owner, leafBase, slots, ref path, createDense: false);
        var leaf = AsLeaf(path[0]);
        MappedBlocks += count - leaf.Count;
        leaf.Count = count;
        if (Pack(entries) is { } packed)
        {
            leaf.Packed = packed;
            leaf.Dense = null;
        }
        else
        {
            var dense = leaf.Dense ?? new DenseEntries();
            entries.CopyTo(dense.Entries);
            if (leaf.Dense is null)
            {
                leaf.Dense = dense;
                leaf.Packed = null;
            }
        }
        Prune(slots, ref path);
    }

    /// <summary>First mapped block at or after <paramref name="block"/> and before <paramref name="limit"/>, or -1.</summary>
    public long NextMapped(long block, long limit) => block >= limit ? -1 : NextMapped(_root, InteriorLevels, 0, block, limit);

    private static long NextMapped(Node? node, int level, long nodeBase, long from, long limit)
    {
        if (node is null) return -1;
        if (level == 0)
        {
            if (node is not RunLeaves) return NextMappedInLeaf(AsLeaf(node), nodeBase, from, limit);
            long found = Math.Max(nodeBase, from); // a full-run leaf maps every block
            return found < limit ? found : -1;
        }
        int shift = level * LevelBits;
        long span = 1L << shift;
        int first = from <= nodeBase ? 0 : (int)((from - nodeBase) >> shift);
        for (int i = first; i < Fanout; i++)
        {
            long childBase = nodeBase + i * span;
            if (childBase >= limit) return -1;
            var found = NextMapped(AsInterior(node).Children[i], level - 1, childBase, from, limit);
            if (found >= 0) return found;
        }
        return -1;
    }

    private static long NextMappedInLeaf(Leaf leaf, long leafBase, long from, long limit)
    {
        int first = from <= leafBase ? 0 : (int)(from - leafBase);
        if (Volatile.Read(ref leaf.Dense) is { } dense)
        {
            for (int i = first; i < Fanout; i++)
            {
                if (leafBase + i >= limit) return -1;
                if (dense.Entries[i].IsMapped) return leafBase + i;
            }
            return -1;
        }
        var packed = PackedOf(leaf);
        int runs = (int)packed[0];
        for (int r = 0; r < runs; r++)
        {
            ulong run = packed[1 + r];
            int start = RunStart(run), end = start + RunLength(run);
            if (end <= first) continue;
            long found = leafBase + Math.Max(start, first);
            return found < limit ? found : -1;
        }
        return -1;
    }

    /// <summary>First unmapped block at or after <paramref name="block"/> and before <paramref name="limit"/>, or <paramref name="limit"/>.</summary>
    public long NextUnmapped(long block, long limit)
    {
        while (block < limit)
        {
            var node = FindLeaf(block);
            if (node is null) return block;
            long leafBase = block & ~(long)(Fanout - 1);
            int slot = (int)(block - leafBase);
            if (node is RunLeaves) { } // a full-run leaf maps every block
            else if (Volatile.Read(ref AsLeaf(node).Dense) is { } dense)
            {
                for (; slot < Fanout; slot++)
                {
                    if (leafBase + slot >= limit) return limit;
                    if (!dense.Entries[slot].IsMapped) return leafBase + slot;
                }
            }
            else
            {
                var packed = PackedOf(AsLeaf(node));
                int runs = (int)packed[0];
                for (int r = 0; r < runs && slot < Fanout; r++)
                {
                    ulong run = packed[1 + r];
                    int start = RunStart(run), end = start + RunLength(run);
                    if (end <= slot) continue;
                    if (start > slot) break; // slot lies in a gap before this run
                    slot = end;
                }
                if (slot < Fanout) return Math.Min(leafBase + slot, limit);
            }
            block = leafBase + Fanout;
        }
        return limit;
    }

    /// <summary>Unmaps every mapped block in [<paramref name="from"/>, <paramref name="end"/>), reporting each block and what it held.</summary>
    public void UnmapRange(long from, long end, Action<long, BlockEntry>? unmapped = null)
    {
        for (long b = NextMapped(from, end); b >= 0; b = NextMapped(b + 1, end))
        {
            var old = Set(b, default);
            unmapped?.Invoke(b, old);
        }
    }

    /// <summary>
    /// Calls <paramref name="visitor"/> for every block in [<paramref name="from"/>, <paramref name="to"/>) whose entry
    /// differs between the two maps, in block order. Shared subtrees are skipped, so the time is proportional to the
    /// number of differing leaves, not to the size. Either map may be null (empty). Both must be stable while this runs.
    /// </summary>
    public static void Diff(MapTree? older, MapTree? newer, long from, long to, MapDiffVisitor visitor) =>
        DiffUntil(older, newer, from, to, (block, a, b) =>
        {
            visitor(block, a, b);
            return true;
        });

    /// <summary>
    /// <see cref="Diff"/> that stops when <paramref name="visitor"/> returns false (a caller that has what it needs,
    /// e.g. a block-status reply that is full, does not walk the rest of the range).
    /// </summary>
    public static void DiffUntil(MapTree? older, MapTree? newer, long from, long to, MapDiffUntilVisitor visitor)
    {
        if (from >= to) return;
        Walk(older?._root, newer?._root, InteriorLevels, 0, from, to, visitor);
    }

    /// <summary>
    /// Calls <paramref name="visitor"/>(first block, first physical block, count) for each run of blocks that
    /// <paramref name="newer"/> maps and <paramref name="older"/> does not map to the same physical block: what
    /// <see cref="Diff"/> reports as mapped in the newer map, a run at a time (within a leaf) rather than a block at a
    /// time. Open uses it to list referenced blocks; a packed leaf over nothing costs one call per run.
    /// </summary>
    public static void AddedRuns(MapTree? older, MapTree? newer, Action<long, long, int> visitor) =>
        WalkAdded(older?._root, newer?._root, InteriorLevels, 0, visitor);

    private static void WalkAdded(Node? a, Node? b, int level, long nodeBase, Action<long, long, int> visitor)
    {
        if (b is null || ReferenceEquals(a, b)) return;
        if (level > 0)
        {
            long span = 1L << (level * LevelBits);
            for (int i = 0; i < Fanout; i++)
                WalkAdded(a is null ? null : AsInterior(a).Children[i], AsInterior(b).Children[i], level - 1, nodeBase + i * span, visitor);
            return;
        }
        if (b is RunLeaves)
        {
            if (a is null)
            {
                visitor(nodeBase, AsRuns(b).PbaPlusOne[RegionSlot(nodeBase)] - 1, Fanout);
                return;
            }
        }
        else
        {
            if (a is null && Volatile.Read(ref AsLeaf(b).Dense) is null)
            {
                var packed = PackedOf(AsLeaf(b));
                for (int r = 0; r < (int)packed[0]; r++)
                    visitor(nodeBase + RunStart(packed[1 + r]), RunPba(packed[1 + r]), RunLength(packed[1 + r]));
                return;
            }
            if (SharePacked(a, b)) return;
        }
        Span<BlockEntry> scratchA = stackalloc BlockEntry[Fanout];
        Span<BlockEntry> scratchB = stackalloc BlockEntry[Fanout];
        if (a is null) scratchA.Clear();
        var ea = a is null ? scratchA : EntriesOf(a, nodeBase, scratchA, crcs: false);
        var eb = EntriesOf(b, nodeBase, scratchB, crcs: false);
        int runStart = -1;
        for (int i = 0; i <= Fanout; i++)
        {
            bool added = i < Fanout && eb[i].IsMapped && ea[i].PbaPlusOne != eb[i].PbaPlusOne;
            if (runStart >= 0 && (!added || eb[i].PbaPlusOne != eb[i - 1].PbaPlusOne + 1))
            {
                visitor(nodeBase + runStart, eb[runStart].Pba, i - runStart);
                runStart = -1;
            }
            if (added && runStart < 0) runStart = i;
        }
    }

    // Returns false when the visitor asked to stop.
    private static bool Walk(Node? a, Node? b, int level, long nodeBase, long from, long to, MapDiffUntilVisitor visitor)
    {
        if (ReferenceEquals(a, b)) return true;
        if (level == 0) return WalkLeaves(a, b, nodeBase, from, to, visitor);
        int shift = level * LevelBits;
        long span = 1L << shift;
        int first = from <= nodeBase ? 0 : (int)((from - nodeBase) >> shift);
        for (int i = first; i < Fanout; i++)
        {
            long childBase = nodeBase + i * span;
            if (childBase >= to) return true;
            if (!Walk(a is null ? null : AsInterior(a).Children[i], b is null ? null : AsInterior(b).Children[i], level - 1, childBase, from, to, visitor))
                return false;
        }
        return true;
    }

    // Copies of a packed leaf share its array: the same content.
    private static bool SharePacked(Node? a, Node? b) =>
        a is not null and not RunLeaves && b is not null and not RunLeaves && Volatile.Read(ref AsLeaf(a).Packed) is { } pa &&
        ReferenceEquals(pa, Volatile.Read(ref AsLeaf(b).Packed));

    private static bool WalkLeaves(Node? a, Node? b, long leafBase, long from, long to, MapDiffUntilVisitor visitor)
    {
        if (SharePacked(a, b)) return true;
        Span<BlockEntry> scratchA = stackalloc BlockEntry[Fanout];
        Span<BlockEntry> scratchB = stackalloc BlockEntry[Fanout];
        if (a is null) scratchA.Clear();
        if (b is null) scratchB.Clear();
        var ea = a is null ? scratchA : EntriesOf(a, leafBase, scratchA);
        var eb = b is null ? scratchB : EntriesOf(b, leafBase, scratchB);
        int first = from <= leafBase ? 0 : (int)(from - leafBase);
        for (int i = first; i < Fanout; i++)
        {
            long block = leafBase + i;
            if (block >= to) return true;
            if (ea[i].PbaPlusOne != eb[i].PbaPlusOne && !visitor(block, ea[i], eb[i])) return false;
        }
        return true;
    }
}
