using Platter.Nbd;
using Platter.Storage;

namespace Platter.Server;

/// <summary>
/// QEMU's <c>qemu</c> metadata namespace (qemu docs/interop/nbd.rst) for volume exports:
/// <list type="bullet">
/// <item><c>qemu:dirty-bitmap:SNAP</c>, one per snapshot the export may compare against
/// (<see cref="IVolumeHandle.DirtyBitmapSnapshots"/>): flag bit 0 (NBD_STATE_DIRTY) is set where the content differs from
/// snapshot SNAP. Backup tools read it to copy only what changed since their last snapshot.</item>
/// <item><c>qemu:allocation-depth</c>: the whole 32-bit value is the layer the data comes from: 0 unallocated,
/// 1 the volume itself, 2 the snapshot it was cloned from, and so on.</item>
/// </list>
/// LIST_META_CONTEXT with <c>qemu:</c> lists all of them, with <c>qemu:dirty-bitmap:</c> every dirty bitmap.
/// </summary>
public sealed class QemuMetaContextProvider : INbdMetaContextProvider
{
    /// <summary>The allocation-depth context's name.</summary>
    public const string AllocationDepth = "qemu:allocation-depth";

    /// <summary>Prefix of the dirty-bitmap contexts; the snapshot's name follows.</summary>
    public const string DirtyBitmapPrefix = "qemu:dirty-bitmap:";

    // Engine runs fetched per call: a block-status reply stops where the runs stop and the client asks again
    // from there, so a small stack batch bounds the work per request without losing anything.
    private const int RunsPerCallMax = 64;

    /// <summary>The provider; it holds no state.</summary>
    public static QemuMetaContextProvider Instance { get; } = new();

    /// <inheritdoc />
    public string Namespace => "qemu";

    /// <inheritdoc />
    public IEnumerable<string> List(INbdExport export, string? query)
    {
        if (export is not VolumeExport volumeExport) return [];
        var names = new List<string>();
        if (query is null || query == "qemu:" || query == AllocationDepth) names.Add(AllocationDepth);
        if (query is null || query == "qemu:" || query == DirtyBitmapPrefix)
        {
            foreach (var snapshot in volumeExport.Volume.DirtyBitmapSnapshots) names.Add(DirtyBitmapPrefix + snapshot);
        }
        else if (query.StartsWith(DirtyBitmapPrefix, StringComparison.Ordinal) && query.Length > DirtyBitmapPrefix.Length
                 && HasSnapshot(volumeExport.Volume, query[DirtyBitmapPrefix.Length..]))
        {
            names.Add(query);
        }
        return names;
    }

    /// <inheritdoc />
    public INbdMetaContext? Open(INbdExport export, string name)
    {
        if (export is not VolumeExport volumeExport) return null;
        if (name == AllocationDepth) return new DepthContext(volumeExport);
        if (name.StartsWith(DirtyBitmapPrefix, StringComparison.Ordinal) && name.Length > DirtyBitmapPrefix.Length)
        {
            var snapshot = name[DirtyBitmapPrefix.Length..];
            if (HasSnapshot(volumeExport.Volume, snapshot)) return new DirtyBitmapContext(volumeExport, name, snapshot);
        }
        return null;
    }

    private static bool HasSnapshot(IVolumeHandle volume, string snapshot)
    {
        foreach (var s in volume.DirtyBitmapSnapshots)
            if (s == snapshot) return true;
        return false;
    }

    private sealed class DirtyBitmapContext(VolumeExport export, string name, string snapshot) : INbdMetaContext
    {
        // NBD_STATE_DIRTY in qemu's dirty-bitmap contexts.
        private const uint Dirty = 1;

        public string Name => name;

        public int GetStatus(long offset, long length, Span<NbdStatusExtent> destination)
        {
            if (length <= 0 || destination.IsEmpty) return 0;
            Span<VolumeExtent> runs = stackalloc VolumeExtent[Math.Min(destination.Length, RunsPerCallMax)];
            int count;
            try
            {
                count = export.Volume.GetChangedExtents(snapshot, offset, length, runs);
            }
            catch (StorageException e)
            {
                // E.g. the snapshot was deleted after the client selected the context: EIO with the engine's reason.
                throw VolumeExport.Map(e);
            }
            return Convert(runs[..count], offset, destination, static r => (r.Offset, r.Length, r.Allocated ? Dirty : 0u), export.Name);
        }
    }

    private sealed class DepthContext(VolumeExport export) : INbdMetaContext
    {
        public string Name => AllocationDepth;

        public int GetStatus(long offset, long length, Span<NbdStatusExtent> destination)
        {
            if (length <= 0 || destination.IsEmpty) return 0;
            Span<DepthExtent> runs = stackalloc DepthExtent[Math.Min(destination.Length, RunsPerCallMax)];
            int count;
            try
            {
                count = export.Volume.GetAllocationDepth(offset, length, runs);
            }
            catch (StorageException e)
            {
                throw VolumeExport.Map(e);
            }
            return Convert(runs[..count], offset, destination, static r => (r.Offset, r.Length, (uint)Math.Max(r.Depth, 0)), export.Name);
        }
    }

    // Engine runs -> NBD descriptors: the runs must continue each other from `offset`; equal neighbours merge.
    private static int Convert<TRun>(ReadOnlySpan<TRun> runs, long offset, Span<NbdStatusExtent> destination,
        Func<TRun, (long Offset, long Length, uint Flags)> describe, string exportName)
    {
        int written = 0;
        long expected = offset;
        foreach (var item in runs)
        {
            var run = describe(item);
            if (run.Length <= 0) continue;
            CheckContiguous(run.Offset, expected, exportName);
            expected += run.Length;
            written = Append(destination, written, run.Length, run.Flags);
        }
        return written;
    }

    private static void CheckContiguous(long runOffset, long expected, string exportName)
    {
        if (runOffset != expected)
            throw new NbdErrorException(NbdError.IoError, $"export '{exportName}': extent map has a gap at {expected}");
    }

    // Adjacent descriptors with equal flags waste reply space and some clients reject them; the engine's runs may
    // be split (e.g. a dirty run made of blocks from two layers), so equal neighbours are merged here.
    private static int Append(Span<NbdStatusExtent> destination, int written, long length, uint flags)
    {
        if (written > 0 && destination[written - 1].Flags == flags)
        {
            destination[written - 1] = new NbdStatusExtent(destination[written - 1].Length + length, flags);
            return written;
        }
        destination[written] = new NbdStatusExtent(length, flags);
        return written + 1;
    }
}
