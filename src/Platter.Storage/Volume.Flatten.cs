using System.Buffers;
using Platter.Storage.Internal;

namespace Platter.Storage;

// The copy phase of flatten (decision 0008): a clone's inherited blocks are copied, one run at a time, into blocks of
// its own, mapped in its own layer by ordinary MapExtent records. Each copy holds the same bytes as the block it
// replaces, so every intermediate state, durable or not, is the same clone with the same content: a crash or a full
// disk at any point leaves a valid clone, and flattening again continues where the copy stopped.
public sealed partial class Volume
{
    /// <summary>
    /// Copies every block this clone still inherits from <paramref name="origin"/> into new space of its own and
    /// returns how many it copied. Runs beside guest I/O: the volume's lock is held only to look up a run and to
    /// install its copy, and a copy is installed only where the clone still maps the origin's block (a guest write
    /// that landed meanwhile wins; the copy's space goes straight back). Throws NoSpace (the clone is unchanged in
    /// content, partly copied), Closed (deleted meanwhile), HasDependents (a snapshot of it was taken meanwhile).
    /// </summary>
    internal long CopyInherited(SnapshotState origin)
    {
        var state = Writable;
        var source = new Volume(_parts, origin);
        var buffer = ArrayPool<byte>.Shared.Rent(EngineLimits.ExtentBlocksMax << EngineLimits.BlockShift);
        var mine = new BlockEntry[EngineLimits.ExtentBlocksMax];
        var theirs = new BlockEntry[EngineLimits.ExtentBlocksMax];
        long copied = 0;
        try
        {
            long limit = origin.SizeBlocks;
            for (long block = origin.Map.NextMapped(0, limit); block >= 0;)
            {
                _parts.Committer.ThrowIfFailed();
                // One run of the origin's mapped blocks, at most one extent record long (the origin is frozen).
                long runEnd = origin.Map.NextUnmapped(block + 1, Math.Min(limit, block + EngineLimits.ExtentBlocksMax));
                int count = (int)(runEnd - block);
                origin.Map.Get(block, theirs.AsSpan(0, count));
                lock (state.Lock)
                {
                    ThrowIfFlattenStopped(state, origin);
                    long size = state.SizeBlocks;
                    count = (int)Math.Clamp(size - block, 0, count);
                    state.Map.Get(block, mine.AsSpan(0, count));
                }
                // Copy each sub-run the clone still inherits (same physical block as the origin's).
                int i = 0;
                while (i < count)
                {
                    if (mine[i].PbaPlusOne != theirs[i].PbaPlusOne)
                    {
                        i++;
                        continue;
                    }
                    int j = i + 1;
                    while (j < count && mine[j].PbaPlusOne == theirs[j].PbaPlusOne) j++;
                    var data = buffer.AsSpan(0, (j - i) << EngineLimits.BlockShift);
                    // Through the origin's verified read path: a damaged origin block fails the flatten, never copies.
                    source.ReadBlocks(block + i, data);
                    copied += CopyUp(origin, block + i, data, mine.AsSpan(i, j - i));
                    i = j;
                }
                block = runEnd >= limit ? -1 : origin.Map.NextMapped(runEnd, limit);
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
        return copied;
    }

    private static void ThrowIfFlattenStopped(VolumeState state, SnapshotState origin)
    {
        if (state.Deleted) throw new StorageException(StorageError.Closed, $"volume '{state.Name}' was deleted");
        if (state.Origin != origin) throw new StorageException(StorageError.InvalidArgument, $"volume '{state.Name}' is no longer a clone of '{origin.DisplayName}'");
        if (state.Snapshots.Count > 0)
            throw new StorageException(StorageError.HasDependents,
                $"a snapshot of '{state.Name}' was taken during its flatten; delete its snapshots and flatten again (it continues where it stopped)");
    }

    /// <summary>
    /// Writes <paramref name="data"/> to new space and maps each block of it where the clone still maps
    /// <paramref name="expected"/>; returns the blocks installed. Like <see cref="WriteBlocks"/>, but conditional.
    /// </summary>
    private int CopyUp(SnapshotState origin, long firstBlock, ReadOnlySpan<byte> data, ReadOnlySpan<BlockEntry> expected)
    {
        var state = Writable;
        int blocks = data.Length >> EngineLimits.BlockShift;
        Span<uint> crcs = stackalloc uint[EngineLimits.ExtentBlocksMax];
        int done = 0, installed = 0;
        while (done < blocks)
        {
            long pba = _parts.Space.Allocate(state, firstBlock + done, Math.Min(blocks - done, EngineLimits.ExtentBlocksMax), out int got);
            var piece = data.Slice(done << EngineLimits.BlockShift, got << EngineLimits.BlockShift);
            Crc32C.ComputeBlocks(piece, EngineLimits.BlockBytes, crcs[..got]);
            try
            {
                _parts.Data.Write(pba << EngineLimits.BlockShift, piece);
            }
            catch (IOException e)
            {
                _parts.Space.FreeUnmapped(pba, got);
                throw _parts.DeviceError(e, $"flatten of volume '{state.Name}' at offset {(firstBlock + done) << EngineLimits.BlockShift}");
            }
            int opBytes = 0;
            lock (state.Lock)
            {
                try
                {
                    ThrowIfFlattenStopped(state, origin);
                }
                catch
                {
                    _parts.Space.FreeUnmapped(pba, got);
                    throw;
                }
                var parent = state.Parent;
                try
                {
                    // Leaves dropped by the map cache are rebuilt before anything changes (decision 0019).
                    long inRange = Math.Min(got, state.SizeBlocks - (firstBlock + done));
                    if (inRange > 0)
                    {
                        state.Map.PrepareSet(firstBlock + done, (int)inRange);
                        parent?.Map.FetchLeaves(firstBlock + done, (int)inRange);
                    }
                }
                catch (StorageException)
                {
                    _parts.Space.FreeUnmapped(pba, got);
                    throw;
                }
                int before = state.PendingOps.Length;
                // Install maximal sub-runs the clone still inherits; a block a guest rewrote (or a shrink dropped)
                // meanwhile keeps the guest's version and its copy is given back unmapped.
                int i = 0;
                try
                {
                    while (i < got)
                    {
                        long block = firstBlock + done + i;
                        if (block >= state.SizeBlocks || state.Map.Get(block).PbaPlusOne != expected[done + i].PbaPlusOne)
                        {
                            _parts.Space.FreeUnmapped(pba + i, 1);
                            i++;
                            continue;
                        }
                        int j = i;
                        while (j < got && firstBlock + done + j < state.SizeBlocks && state.Map.Get(firstBlock + done + j).PbaPlusOne == expected[done + j].PbaPlusOne)
                        {
                            var old = state.Map.Set(firstBlock + done + j, BlockEntry.Mapped(pba + j, crcs[j]));
                            // The replaced block is the origin's (the parent maps it): never freed here.
                            FreeIfUnshared(state, parent, firstBlock + done + j, old);
                            j++;
                        }
                        state.PendingOps.AppendMapExtent(state.LayerId, firstBlock + done + i, crcs[i..j], pba + i);
                        _parts.Space.NoteMapped(state, j - i);
                        installed += j - i;
                        i = j;
                    }
                }
                catch (StorageException e)
                {
                    throw MapChangedHalfway(state, e);
                }
                opBytes = state.PendingOps.Length - before;
                _parts.Ring.Append(state, state.PendingOps.Span[before..]);
            }
            // Counted like writes: enough pending bytes or data start a commit, and past the hard bound this waits
            // for one (the copy cannot outrun the journal).
            if (opBytes > 0) _parts.Committer.NotePendingBytes(opBytes, (long)got << EngineLimits.BlockShift);
            done += got;
        }
        return installed;
    }
}
