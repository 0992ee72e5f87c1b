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
/// Not thread-safe: the owner of a mutable tree guards it; a frozen tree is immutable and may be read freely.
/// </summary>
internal sealed class MapTree
{
    // 8 bits per level: leaves hold bits 0..7 of the block number, five interior levels bits 8..47 (blocks < 2^44).
    private const int Fanout = 256;
    private const int LevelBits = 8;
    private const int InteriorLevels = 5;

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

        public override Node CopyFor(object owner) => new Interior(owner) { Children = Children, Count = Count };
    }

    private sealed class Leaf(object owner) : Node(owner)
    {
        public EntrySlots Entries;

        public override Node CopyFor(object owner) => new Leaf(owner) { Entries = Entries, Count = Count };
    }

    // The level says which kind a node is (0 = leaf), so casts need no type check.
    private static Interior AsInterior(Node node) => Unsafe.As<Interior>(node);
    private static Leaf AsLeaf(Node node) => Unsafe.As<Leaf>(node);

    [InlineArray(InteriorLevels + 1)]
    private struct NodePath
    {
        private Node _node;
    }

    private Node? _root;
    private object? _owner; // null: frozen

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
        var leaf = FindLeaf(block);
        return leaf is null ? default : leaf.Entries[(int)(block & (Fanout - 1))];
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
            var leaf = FindLeaf(block);
            if (leaf is not null) ((ReadOnlySpan<BlockEntry>)leaf.Entries).Slice(inLeaf, n).CopyTo(destination.Slice(done, n));
            else destination.Slice(done, n).Clear();
            done += n;
        }
    }

    private Leaf? FindLeaf(long block)
    {
        var node = _root;
        for (int level = InteriorLevels; level > 0 && node is not null; level--)
            node = AsInterior(node).Children[(int)((block >> (level * LevelBits)) & (Fanout - 1))];
        return node is null ? null : AsLeaf(node);
    }

    /// <summary>Sets one block and returns what was there before.</summary>
    public BlockEntry Set(long block, BlockEntry entry)
    {
        var owner = _owner ?? throw new InvalidOperationException("a frozen map cannot change");
        if ((ulong)block >= 1UL << (LevelBits * (InteriorLevels + 1))) throw new ArgumentOutOfRangeException(nameof(block));
        if (!entry.IsMapped && FindLeaf(block) is null) return default;

        // Walk down, copying every node this tree does not own (path copy), creating missing ones.
        Span<int> slots = stackalloc int[InteriorLevels];
        var path = new NodePath();
        ref Node? link = ref _root;
        for (int level = InteriorLevels; level >= 0; level--)
        {
            var node = link;
            if (node is null)
            {
                node = level == 0 ? new Leaf(owner) : new Interior(owner);
                link = node;
                if (level < InteriorLevels) path[level + 1].Count++;
            }
            else if (!ReferenceEquals(node.Owner, owner))
            {
                node = node.CopyFor(owner);
                link = node;
            }
            path[level] = node;
            if (level == 0) break;
            int slot = (int)((block >> (level * LevelBits)) & (Fanout - 1));
            slots[level - 1] = slot;
            link = ref AsInterior(node).Children[slot];
        }

        var leafNode = AsLeaf(path[0]);
        ref var target = ref leafNode.Entries[(int)(block & (Fanout - 1))];
        var old = target;
        target = entry;
        int delta = (entry.IsMapped ? 1 : 0) - (old.IsMapped ? 1 : 0);
        leafNode.Count += delta;
        MappedBlocks += delta;
        // Prune emptied nodes so scans skip them.
        for (int level = 0; level < InteriorLevels && path[level].Count == 0; level++)
        {
            AsInterior(path[level + 1]).Children[slots[level]] = null;
            path[level + 1].Count--;
        }
        if (path[InteriorLevels].Count == 0) _root = null;
        return old;
    }

    /// <summary>First mapped block at or after <paramref name="block"/> and before <paramref name="limit"/>, or -1.</summary>
    public long NextMapped(long block, long limit) => block >= limit ? -1 : NextMapped(_root, InteriorLevels, 0, block, limit);

    private static long NextMapped(Node? node, int level, long nodeBase, long from, long limit)
    {
        if (node is null) return -1;
        int shift = level * LevelBits;
        long span = 1L << shift;
        int first = from <= nodeBase ? 0 : (int)((from - nodeBase) >> shift);
        for (int i = first; i < Fanout; i++)
        {
            long childBase = nodeBase + i * span;
            if (childBase >= limit) return -1;
            if (level == 0)
            {
                if (AsLeaf(node).Entries[i].IsMapped && childBase >= from) return childBase;
                continue;
            }
            var found = NextMapped(AsInterior(node).Children[i], level - 1, childBase, from, limit);
            if (found >= 0) return found;
        }
        return -1;
    }

    /// <summary>First unmapped block at or after <paramref name="block"/> and before <paramref name="limit"/>, or <paramref name="limit"/>.</summary>
    public long NextUnmapped(long block, long limit)
    {
        while (block < limit)
        {
            var leaf = FindLeaf(block);
            if (leaf is null) return block;
            ref var entries = ref leaf.Entries;
            long leafBase = block & ~(long)(Fanout - 1);
            for (int i = (int)(block - leafBase); i < Fanout; i++)
            {
                long b = leafBase + i;
                if (b >= limit) return limit;
                if (!entries[i].IsMapped) return b;
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

    // Returns false when the visitor asked to stop.
    private static bool Walk(Node? a, Node? b, int level, long nodeBase, long from, long to, MapDiffUntilVisitor visitor)
    {
        if (ReferenceEquals(a, b)) return true;
        int shift = level * LevelBits;
        long span = 1L << shift;
        int first = from <= nodeBase ? 0 : (int)((from - nodeBase) >> shift);
        for (int i = first; i < Fanout; i++)
        {
            long childBase = nodeBase + i * span;
            if (childBase >= to) return true;
            if (level == 0)
            {
                if (childBase < from) continue;
                var ea = a is null ? default : AsLeaf(a).Entries[i];
                var eb = b is null ? default : AsLeaf(b).Entries[i];
                if (ea.PbaPlusOne != eb.PbaPlusOne && !visitor(childBase, ea, eb)) return false;
                continue;
            }
            if (!Walk(a is null ? null : AsInterior(a).Children[i], b is null ? null : AsInterior(b).Children[i], level - 1, childBase, from, to, visitor))
                return false;
        }
        return true;
    }
}
