namespace Platter.Storage.Tests.Support;

/// <summary>
/// The oracle: a plain sparse array of 4 KiB blocks for one volume. It tracks three things: what the
/// volume holds now, what is durable (as of the last completed flush), and every version a block went
/// through since, because after a crash each block may show its durable content or any later one.
/// A missing block, or a null version, is zeros.
/// </summary>
internal sealed class VolumeModel(long sizeBytes)
{
    private const int B = Blocks.Size;
    private readonly Dictionary<long, byte[]> _current = new();
    private readonly Dictionary<long, byte[]> _durable = new();
    private readonly Dictionary<long, List<byte[]?>> _since = new();

    public long SizeBytes { get; private set; } = sizeBytes;

    /// <summary>Blocks holding something other than zeros.</summary>
    public IEnumerable<long> NonZeroBlocks => _current.Keys;

    public void Write(long offset, ReadOnlySpan<byte> data)
    {
        long end = offset + data.Length;
        for (long blk = offset / B; blk * B < end; blk++)
        {
            long bStart = blk * B;
            var v = new byte[B];
            if (_current.TryGetValue(blk, out var cur)) cur.CopyTo(v, 0);
            long from = Math.Max(offset, bStart), to = Math.Min(end, bStart + B);
            data.Slice((int)(from - offset), (int)(to - from)).CopyTo(v.AsSpan((int)(from - bStart)));
            Set(blk, v);
        }
    }

    public void Zero(long offset, long length)
    {
        long end = offset + length;
        for (long blk = offset / B; blk * B < end; blk++)
        {
            if (!_current.TryGetValue(blk, out var cur)) continue;
            long bStart = blk * B;
            long from = Math.Max(offset, bStart), to = Math.Min(end, bStart + B);
            var v = (byte[])cur.Clone();
            v.AsSpan((int)(from - bStart), (int)(to - from)).Clear();
            Set(blk, v);
        }
    }

    private void Set(long blk, byte[] v)
    {
        byte[]? stored = Blocks.IsZero(v) ? null : v;
        if (stored is null) _current.Remove(blk); else _current[blk] = stored;
        if (!_since.TryGetValue(blk, out var list)) _since[blk] = list = new List<byte[]?>();
        list.Add(stored);
    }

    /// <summary>A resize is durable on return: blocks past the new end are gone for good, whatever happens next.</summary>
    public void Resize(long newSizeBytes)
    {
        if (newSizeBytes % B != 0) throw new ArgumentException("the model keeps block-aligned sizes");
        long firstGone = newSizeBytes / B;
        foreach (var d in new[] { _current, _durable })
            foreach (var k in d.Keys.Where(k => k >= firstGone).ToList()) d.Remove(k);
        foreach (var k in _since.Keys.Where(k => k >= firstGone).ToList()) _since.Remove(k);
        SizeBytes = newSizeBytes;
    }

    public void Read(long offset, Span<byte> destination)
    {
        destination.Clear();
        long end = offset + destination.Length;
        for (long blk = offset / B; blk * B < end; blk++)
        {
            if (!_current.TryGetValue(blk, out var cur)) continue;
            long bStart = blk * B;
            long from = Math.Max(offset, bStart), to = Math.Min(end, bStart + B);
            cur.AsSpan((int)(from - bStart), (int)(to - from)).CopyTo(destination[(int)(from - offset)..]);
        }
    }

    public bool IsZeroRange(long offset, long length)
    {
        long end = offset + length;
        for (long blk = offset / B; blk * B < end; blk++)
        {
            if (!_current.TryGetValue(blk, out var cur)) continue;
            long bStart = blk * B;
            long from = Math.Max(offset, bStart), to = Math.Min(end, bStart + B);
            if (!Blocks.IsZero(cur.AsSpan((int)(from - bStart), (int)(to - from)))) return false;
        }
        return true;
    }

    /// <summary>A flush completed: everything acknowledged so far is durable.</summary>
    public void MarkDurable()
    {
        _durable.Clear();
        foreach (var (k, v) in _current) _durable[k] = v;
        _since.Clear();
    }

    /// <summary>Blocks whose content after a crash is not known exactly.</summary>
    public IEnumerable<long> UncertainBlocks => _since.Keys;

    /// <summary>
    /// After a crash: is <paramref name="actual"/> an allowed content for block <paramref name="blk"/>?
    /// Allowed are the durable version and every version acknowledged since; never a mix, never garbage.
    /// </summary>
    public bool IsAllowedAfterCrash(long blk, ReadOnlySpan<byte> actual, out string explanation)
    {
        bool zero = Blocks.IsZero(actual);
        var durable = _durable.GetValueOrDefault(blk);
        if (durable is null ? zero : actual.SequenceEqual(durable))
        {
            explanation = "durable version";
            return true;
        }
        if (_since.TryGetValue(blk, out var versions))
        {
            for (int i = 0; i < versions.Count; i++)
            {
                var v = versions[i];
                if (v is null ? zero : actual.SequenceEqual(v))
                {
                    explanation = $"version {i + 1} of {versions.Count} written since the last flush";
                    return true;
                }
            }
        }
        explanation = $"read {Blocks.Describe(actual)}; durable is {(durable is null ? "zeros" : Blocks.Describe(durable))}; "
            + $"{versions?.Count ?? 0} newer versions: {string.Join(", ", (versions ?? []).Select(v => v is null ? "zeros" : Blocks.Describe(v)))}";
        return false;
    }

    /// <summary>After a crash, once the block was verified: what it holds is now both current and durable.</summary>
    public void AcceptRecovered(long blk, ReadOnlySpan<byte> actual)
    {
        if (Blocks.IsZero(actual)) { _current.Remove(blk); _durable.Remove(blk); }
        else { _current[blk] = actual.ToArray(); _durable[blk] = _current[blk]; }
        _since.Remove(blk);
    }

    /// <summary>After a failed write: the block may hold either what it held or what the write carried.</summary>
    public void AddPossibleVersion(long blk, byte[]? v)
    {
        if (!_since.TryGetValue(blk, out var list)) _since[blk] = list = new List<byte[]?>();
        list.Add(v is null || Blocks.IsZero(v) ? null : v);
    }

    /// <summary>Every block that may hold data now or after a crash (for full verification).</summary>
    public IEnumerable<long> BlocksOfInterest => _current.Keys.Concat(_durable.Keys).Concat(_since.Keys).Distinct();

    /// <summary>A copy holding the current content as durable: a snapshot taken now, or a clone made from one.</summary>
    public VolumeModel CopyDurable()
    {
        var copy = new VolumeModel(SizeBytes);
        foreach (var (k, v) in _current)
        {
            copy._current[k] = v;
            copy._durable[k] = v;
        }
        return copy;
    }
}
