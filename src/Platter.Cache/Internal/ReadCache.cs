using System.IO.Hashing;
using Microsoft.Win32.SafeHandles;

namespace Platter.Cache.Internal;

/// <summary>
/// A read cache of 4 KiB blocks in a file on local disk: a fixed number of slots, an index in memory, CLOCK
/// replacement. It holds only copies of what the backend has, so losing it loses nothing; it starts empty on every open.
/// </summary>
/// <remarks>
/// <para>No lock is held across I/O. A slot can be reused while a reader still reads it; the reader compares the bytes
/// it got with the hash the index held when it looked, and a mismatch is a miss (the block is read from the backend),
/// never data. The same check turns a damaged slot into a miss.</para>
/// <para>Writes must not leave stale copies: a writer calls <see cref="Invalidate"/> before and after its backend write,
/// each bumping the block's stripe generation; a reader that missed records the generation before its backend read and
/// inserts only if it has not moved (<see cref="Insert"/>), so a read that raced a write never caches the old data.</para>
/// </remarks>
internal sealed class ReadCache : IDisposable
{
    private const int BlockBytes = LogFormat.BlockBytes;

    // Generations are kept per stripe of blocks, not per block: bounded memory, and a false conflict only costs one
    // skipped insert. 4096 stripes keep that rare at NBD queue depths.
    private const int Stripes = 4096;

    // _slotBlock values that are not block numbers: an empty slot, and a slot an insert is filling (no one else takes it).
    private const long Free = -1;
    private const long Filling = -2;

    private readonly SafeFileHandle _file;
    private readonly string _path;
    private readonly object _lock = new();
    private readonly Dictionary<long, int> _index = new();
    private readonly long[] _slotBlock;
    private readonly ulong[] _slotHash;
    private readonly bool[] _slotUsed;
    private readonly long[] _generations = new long[Stripes];
    private int _hand;
    private long _hits;
    private long _misses;

    /// <summary>Creates (or truncates) the cache file at <paramref name="path"/> with room for <paramref name="bytes"/> of blocks.</summary>
    public ReadCache(string path, long bytes)
    {
        _path = path;
        int slots = (int)Math.Clamp(bytes / BlockBytes, 16, int.MaxValue / 2);
        _file = File.OpenHandle(path, FileMode.Create, FileAccess.ReadWrite, FileShare.None);
        RandomAccess.SetLength(_file, (long)slots * BlockBytes);
        _slotBlock = new long[slots];
        _slotHash = new ulong[slots];
        _slotUsed = new bool[slots];
        Array.Fill(_slotBlock, Free);
    }

    /// <summary>Slots (blocks) the cache can hold.</summary>
    public int Capacity => _slotBlock.Length;

    /// <summary>Reads served from the cache.</summary>
    public long Hits => Interlocked.Read(ref _hits);

    /// <summary>Reads that went to the backend.</summary>
    public long Misses => Interlocked.Read(ref _misses);

    /// <summary>The generation a reader records before a backend read of <paramref name="block"/>.</summary>
    public long Generation(long block) => Volatile.Read(ref _generations[(int)(block & (Stripes - 1))]);

    /// <summary>Reads <paramref name="block"/> into <paramref name="destination"/> when cached and intact.</summary>
    public bool TryRead(long block, Span<byte> destination)
    {
        int slot;
        ulong hash;
        lock (_lock)
        {
            if (!_index.TryGetValue(block, out slot))
            {
                _misses++;
                return false;
            }
            hash = _slotHash[slot];
            _slotUsed[slot] = true;
        }
        var target = destination[..BlockBytes];
        if (RandomAccess.Read(_file, target, (long)slot * BlockBytes) != BlockBytes || XxHash3.HashToUInt64(target) != hash)
        {
            Interlocked.Increment(ref _misses);
            return false;
        }
        Interlocked.Increment(ref _hits);
        return true;
    }

    /// <summary>
    /// Caches <paramref name="data"/> (whole blocks from <paramref name="firstBlock"/>) unless a write to one of them
    /// happened since <paramref name="generations"/> were recorded.
    /// </summary>
    public void Insert(long firstBlock, ReadOnlySpan<byte> data, ReadOnlySpan<long> generations)
    {
        int blocks = data.Length / BlockBytes;
        for (int i = 0; i < blocks; i++)
        {
            long block = firstBlock + i;
            var bytes = data.Slice(i * BlockBytes, BlockBytes);
            ulong hash = XxHash3.HashToUInt64(bytes);
            int slot;
            lock (_lock)
            {
                if (Generation(block) != generations[i] || _index.ContainsKey(block)) continue;
                slot = Evict();
            }
            RandomAccess.Write(_file, bytes, (long)slot * BlockBytes);
            lock (_lock)
            {
                // A write may have come in while the slot was being filled: then the copy is not cached.
                if (Generation(block) != generations[i] || _index.ContainsKey(block))
                {
                    _slotBlock[slot] = Free;
                    continue;
                }
                _index[block] = slot;
                _slotBlock[slot] = block;
                _slotHash[slot] = hash;
                _slotUsed[slot] = false;
            }
        }
    }

    // CLOCK: the hand skips slots read since it last passed and takes the first one that was not. Called under _lock;
    // the slot leaves the index at once, so no new reader finds it while it is refilled.
    private int Evict()
    {
        while (true)
        {
            int slot = _hand;
            _hand = (_hand + 1) % _slotBlock.Length;
            if (_slotBlock[slot] == Filling) continue;
            if (_slotUsed[slot])
            {
                _slotUsed[slot] = false;
                continue;
            }
            if (_slotBlock[slot] >= 0) _index.Remove(_slotBlock[slot]);
            _slotBlock[slot] = Filling;
            return slot;
        }
    }

    /// <summary>Forgets blocks [<paramref name="firstBlock"/>, +<paramref name="blocks"/>) and moves their generations on.</summary>
    public void Invalidate(long firstBlock, long blocks)
    {
        lock (_lock)
        {
            if (blocks >= Stripes)
            {
                for (int s = 0; s < Stripes; s++) _generations[s]++;
            }
            else
            {
                for (long b = firstBlock; b < firstBlock + blocks; b++) _generations[(int)(b & (Stripes - 1))]++;
            }
            if (blocks <= _index.Count)
            {
                for (long b = firstBlock; b < firstBlock + blocks; b++)
                    if (_index.Remove(b, out int slot)) _slotBlock[slot] = Free;
            }
            else
            {
                foreach (var (block, slot) in _index.Where(e => e.Key >= firstBlock && e.Key < firstBlock + blocks).ToList())
                {
                    _index.Remove(block);
                    _slotBlock[slot] = Free;
                }
            }
        }
    }

    /// <summary>Forgets everything (after the backend's content changed under the cache: a rollback).</summary>
    public void Clear()
    {
        lock (_lock)
        {
            _index.Clear();
            for (int slot = 0; slot < _slotBlock.Length; slot++)
                if (_slotBlock[slot] != Filling) _slotBlock[slot] = Free;
            for (int s = 0; s < Stripes; s++) _generations[s]++;
        }
    }

    public void Dispose()
    {
        _file.Dispose();
        try { File.Delete(_path); }
        catch (IOException) { }
    }
}
