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

/// <summary>
/// The in-memory copy of one volume's extent map: a sparse array of <see cref="BlockEntry"/> in chunks of
/// <see cref="Layout.ChunkBlocks"/>. Reads find a block in O(1); an ordered index of chunk numbers lets allocation
/// scans skip unmapped space of a 1 PiB volume. The KV store holds the same map as coalesced extent records.
/// Not thread-safe: the owning volume's lock guards it.
/// </summary>
internal sealed class BlockMap
{
    private sealed class Chunk
    {
        public readonly BlockEntry[] Entries = new BlockEntry[Layout.ChunkBlocks];
        public int MappedCount;
    }

    private readonly Dictionary<long, Chunk> _chunks = new();
    private readonly SortedSet<long> _chunkOrder = new();

    /// <summary>Number of mapped blocks.</summary>
    public long MappedBlocks { get; private set; }

    public BlockEntry Get(long block)
    {
        return _chunks.TryGetValue(block >> Layout.ChunkShift, out var chunk)
            ? chunk.Entries[block & (Layout.ChunkBlocks - 1)]
            : default;
    }

    /// <summary>Copies the entries of <paramref name="destination"/>.Length blocks starting at <paramref name="firstBlock"/>.</summary>
    public void Get(long firstBlock, Span<BlockEntry> destination)
    {
        int done = 0;
        while (done < destination.Length)
        {
            long block = firstBlock + done;
            int inChunk = (int)(block & (Layout.ChunkBlocks - 1));
            int n = Math.Min(Layout.ChunkBlocks - inChunk, destination.Length - done);
            if (_chunks.TryGetValue(block >> Layout.ChunkShift, out var chunk))
                chunk.Entries.AsSpan(inChunk, n).CopyTo(destination.Slice(done, n));
            else
                destination.Slice(done, n).Clear();
            done += n;
        }
    }

    /// <summary>Sets one block and returns what was there before.</summary>
    public BlockEntry Set(long block, BlockEntry entry)
    {
        long c = block >> Layout.ChunkShift;
        if (!_chunks.TryGetValue(c, out var chunk))
        {
            if (!entry.IsMapped) return default;
            chunk = new Chunk();
            _chunks.Add(c, chunk);
            _chunkOrder.Add(c);
        }
        ref var slot = ref chunk.Entries[block & (Layout.ChunkBlocks - 1)];
        var old = slot;
        slot = entry;
        int delta = (entry.IsMapped ? 1 : 0) - (old.IsMapped ? 1 : 0);
        chunk.MappedCount += delta;
        MappedBlocks += delta;
        if (chunk.MappedCount == 0)
        {
            _chunks.Remove(c);
            _chunkOrder.Remove(c);
        }
        return old;
    }

    /// <summary>
    /// First mapped block at or after <paramref name="block"/> and before <paramref name="limit"/>, or -1.
    /// </summary>
    public long NextMapped(long block, long limit)
    {
        while (block < limit)
        {
            long c = block >> Layout.ChunkShift;
            if (_chunks.TryGetValue(c, out var chunk))
            {
                var entries = chunk.Entries;
                for (int i = (int)(block & (Layout.ChunkBlocks - 1)); i < Layout.ChunkBlocks; i++)
                {
                    long b = (c << Layout.ChunkShift) + i;
                    if (b >= limit) return -1;
                    if (entries[i].IsMapped) return b;
                }
                block = (c + 1) << Layout.ChunkShift;
                continue;
            }
            // Jump to the next chunk that has anything mapped.
            long lastChunk = (limit - 1) >> Layout.ChunkShift;
            if (c + 1 > lastChunk) return -1;
            // Min of a view is O(log n) (Count would walk it); an empty view answers 0, below the range.
            long next = _chunkOrder.GetViewBetween(c + 1, lastChunk).Min;
            if (next < c + 1) return -1;
            block = next << Layout.ChunkShift;
        }
        return -1;
    }

    /// <summary>First unmapped block at or after <paramref name="block"/> and before <paramref name="limit"/>, or <paramref name="limit"/>.</summary>
    public long NextUnmapped(long block, long limit)
    {
        while (block < limit)
        {
            long c = block >> Layout.ChunkShift;
            if (!_chunks.TryGetValue(c, out var chunk)) return block;
            var entries = chunk.Entries;
            for (int i = (int)(block & (Layout.ChunkBlocks - 1)); i < Layout.ChunkBlocks; i++)
            {
                long b = (c << Layout.ChunkShift) + i;
                if (b >= limit) return limit;
                if (!entries[i].IsMapped) return b;
            }
            block = (c + 1) << Layout.ChunkShift;
        }
        return limit;
    }

    /// <summary>Every mapped block, in logical order.</summary>
    public IEnumerable<(long Block, BlockEntry Entry)> EnumerateMapped()
    {
        foreach (long c in _chunkOrder)
        {
            var entries = _chunks[c].Entries;
            for (int i = 0; i < Layout.ChunkBlocks; i++)
                if (entries[i].IsMapped)
                    yield return ((c << Layout.ChunkShift) + i, entries[i]);
        }
    }

    /// <summary>Unmaps everything at or after <paramref name="block"/>, reporting each freed physical block.</summary>
    public void UnmapFrom(long block, Action<long> freed)
    {
        long b = NextMapped(block, long.MaxValue);
        while (b >= 0)
        {
            var old = Set(b, default);
            freed(old.Pba);
            b = NextMapped(b + 1, long.MaxValue);
        }
    }
}
