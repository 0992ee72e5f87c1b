using System.Buffers;

namespace Platter.Cache.Internal;

/// <summary>Reads whole blocks from the backend through a read cache: hits from the cache, runs of misses in one backend read each, then cached.</summary>
internal static class ReadThrough
{
    private const int BlockBytes = LogFormat.BlockBytes;

    // Longest run of misses read from the backend in one call (and cached from one pooled generations array).
    private const int RunBlocksMax = 256;

    public static async ValueTask ReadAsync(ReadCache? cache, IVolumeHandle backend, long firstBlock, Memory<byte> destination, CancellationToken cancellationToken)
    {
        if (cache is null)
        {
            await backend.ReadAsync(firstBlock * BlockBytes, destination, cancellationToken).ConfigureAwait(false);
            return;
        }
        int blocks = destination.Length / BlockBytes;
        var generations = ArrayPool<long>.Shared.Rent(RunBlocksMax);
        try
        {
            int i = 0;
            while (i < blocks)
            {
                if (cache.TryRead(firstBlock + i, destination.Span.Slice(i * BlockBytes, BlockBytes)))
                {
                    i++;
                    continue;
                }
                int start = i;
                generations[0] = cache.Generation(firstBlock + i);
                i++;
                while (i < blocks && i - start < RunBlocksMax && !cache.TryRead(firstBlock + i, destination.Span.Slice(i * BlockBytes, BlockBytes)))
                {
                    generations[i - start] = cache.Generation(firstBlock + i);
                    i++;
                }
                // The loop above stops either at a hit (block i was read into place: keep it) or at the run's end.
                var run = destination[(start * BlockBytes)..(i * BlockBytes)];
                await backend.ReadAsync((firstBlock + start) * BlockBytes, run, cancellationToken).ConfigureAwait(false);
                cache.Insert(firstBlock + start, run.Span, generations.AsSpan(0, i - start));
                if (i < blocks && i - start < RunBlocksMax) i++; // the hit that ended the run is already in place
            }
        }
        finally
        {
            ArrayPool<long>.Shared.Return(generations);
        }
    }
}
