namespace Platter.Storage.Internal;

/// <summary>
/// The one place a block's content is compared with the CRC32C its map entry carries: the read path
/// (<see cref="Volume"/>) and the scrubber (<see cref="Scrubber"/>) both call it, so they can never disagree on what a
/// good block is.
/// </summary>
internal static class BlockVerify
{
    // CRCs computed per call of Crc32C.ComputeBlocks: a stack buffer of 256 bytes.
    private const int CrcsPerPass = 64;

    /// <summary>
    /// Index of the first block of <paramref name="run"/> at or after <paramref name="from"/> whose CRC32C differs from
    /// <paramref name="entries"/>[i].Crc, or -1 when every one matches. <paramref name="run"/> holds
    /// <paramref name="entries"/>.Length blocks.
    /// </summary>
    public static int FirstMismatch(ReadOnlySpan<byte> run, ReadOnlySpan<BlockEntry> entries, int from = 0)
    {
        Span<uint> actual = stackalloc uint[CrcsPerPass];
        for (int b = from; b < entries.Length; b += CrcsPerPass)
        {
            int n = Math.Min(CrcsPerPass, entries.Length - b);
            Crc32C.ComputeBlocks(run.Slice(b << EngineLimits.BlockShift, n << EngineLimits.BlockShift), EngineLimits.BlockBytes, actual[..n]);
            for (int j = 0; j < n; j++)
            {
                if (actual[j] != entries[b + j].Crc) return b + j;
            }
        }
        return -1;
    }
}
