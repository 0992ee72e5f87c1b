using System.Globalization;
using Platter.Storage;

namespace Platter.CrashWorker;

/// <summary>Runs <see cref="SnapshotWorkload"/> against an open store until the deadline (or the kill).</summary>
public static class SnapshotRunner
{
    /// <summary>Returns 0 when the deadline passed, 3 when the engine did something the workload's model forbids.</summary>
    public static async Task<int> RunAsync(VolumeStore store, int seed, string mode, Action<string> log, DateTime deadline)
    {
        var catalog = SnapshotWorkload.Catalog.Read(store);
        log(CrashWorkload.OpenedLine);
        // Handles stay open across rollbacks on purpose: the engine promises they see the rolled-back content at once.
        var handles = new Dictionary<string, Volume>(StringComparer.Ordinal);
        Volume Handle(string name)
        {
            if (!handles.TryGetValue(name, out var h)) handles[name] = h = store.OpenVolume(name);
            return h;
        }
        void Drop(string name)
        {
            if (handles.Remove(name, out var h)) h.Dispose();
        }

        var buffer = new byte[4 * CrashWorkload.BlockSize + 200];
        foreach (var op in SnapshotWorkload.Ops(seed, catalog, mode))
        {
            if ((op.Index & 15) == 0 && DateTime.UtcNow > deadline) break;
            string index = "0 " + op.Index.ToString(CultureInfo.InvariantCulture);
            log(CrashWorkload.IntentPrefix + index);
            try
            {
                switch (op.Kind)
                {
                    case SnapshotWorkload.OpKind.Flush:
                        await Handle(op.Volume).FlushAsync();
                        log(CrashWorkload.FlushedPrefix + index);
                        continue;
                    case SnapshotWorkload.OpKind.Write:
                        if (buffer.Length < op.Length) buffer = new byte[op.Length];
                        CrashWorkload.Content(seed, 0, op.Index, op.Offset, buffer.AsSpan(0, op.Length));
                        Handle(op.Volume).Write(op.Offset, buffer.AsSpan(0, op.Length));
                        continue;
                    case SnapshotWorkload.OpKind.Trim:
                        Handle(op.Volume).Trim(op.Offset, op.Length);
                        continue;
                    case SnapshotWorkload.OpKind.WriteZeroes:
                        Handle(op.Volume).WriteZeroes(op.Offset, op.Length);
                        continue;
                }
                if (op.Refused)
                {
                    var refusal = Refusal(() => RunCatalogOp(store, op, Drop));
                    if (refusal is null) return Fail(op, "the engine accepted it");
                    if (refusal.Error != StorageError.HasDependents) return Fail(op, $"refused with {refusal.Error} instead of HasDependents: {refusal.Message}");
                    if (op.Kind == SnapshotWorkload.OpKind.DeleteSnapshot)
                    {
                        foreach (var clone in catalog.ClonesOf(op.Volume, op.Snapshot!))
                            if (!refusal.Message.Contains(clone, StringComparison.Ordinal))
                                return Fail(op, $"the refusal does not name clone '{clone}': {refusal.Message}");
                    }
                }
                else
                {
                    RunCatalogOp(store, op, Drop);
                    Apply(catalog, op);
                }
                log(SnapshotWorkload.DonePrefix + index);
            }
            catch (StorageException e)
            {
                return Fail(op, $"{e.Error}: {e}");
            }
        }
        foreach (var h in handles.Values) h.Dispose();
        return 0;
    }

    private static void RunCatalogOp(VolumeStore store, SnapshotWorkload.Op op, Action<string> drop)
    {
        switch (op.Kind)
        {
            case SnapshotWorkload.OpKind.CreateVolume:
                store.CreateVolume(op.Target!, SnapshotWorkload.VolumeSizeBytes);
                break;
            case SnapshotWorkload.OpKind.CreateSnapshot:
                store.CreateSnapshot(op.Volume, op.Snapshot!);
                break;
            case SnapshotWorkload.OpKind.Clone:
                store.CloneSnapshot(op.Volume, op.Snapshot!, op.Target!);
                break;
            case SnapshotWorkload.OpKind.Rollback:
                store.RollbackVolume(op.Volume, op.Snapshot!, op.Recursive);
                break;
            case SnapshotWorkload.OpKind.DeleteSnapshot:
                store.DeleteSnapshot(op.Volume, op.Snapshot!);
                break;
            case SnapshotWorkload.OpKind.DeleteVolume:
                store.DeleteVolume(op.Volume, op.Recursive);
                drop(op.Volume);
                break;
            case SnapshotWorkload.OpKind.Resize:
                store.ResizeVolume(op.Volume, op.SizeBytes, allowShrink: true);
                break;
            case SnapshotWorkload.OpKind.Flatten:
                store.FlattenVolume(op.Volume);
                break;
            default:
                throw new InvalidOperationException($"not a catalog op: {op}");
        }
    }

    /// <summary>The worker's own copy of the catalog, kept only to name the clones a refusal must mention.</summary>
    private static void Apply(SnapshotWorkload.Catalog catalog, SnapshotWorkload.Op op)
    {
        switch (op.Kind)
        {
            case SnapshotWorkload.OpKind.CreateVolume:
                catalog.Volumes.Add(op.Target!, new SnapshotWorkload.Catalog.VolumeEntry());
                break;
            case SnapshotWorkload.OpKind.CreateSnapshot:
                catalog.Volumes[op.Volume].AddSnapshot(op.Snapshot!, catalog.Volumes[op.Volume].SizeBytes);
                break;
            case SnapshotWorkload.OpKind.Clone:
                catalog.Volumes.Add(op.Target!, new SnapshotWorkload.Catalog.VolumeEntry { Origin = op.Volume + "@" + op.Snapshot });
                break;
            case SnapshotWorkload.OpKind.Rollback:
            {
                var entry = catalog.Volumes[op.Volume];
                int at = entry.Snapshots.IndexOf(op.Snapshot!);
                foreach (var newer in entry.Snapshots.Skip(at + 1).ToList()) entry.RemoveSnapshot(newer);
                break;
            }
            case SnapshotWorkload.OpKind.DeleteSnapshot:
                catalog.Volumes[op.Volume].RemoveSnapshot(op.Snapshot!);
                break;
            case SnapshotWorkload.OpKind.DeleteVolume:
                catalog.RemoveVolume(op.Volume);
                break;
            case SnapshotWorkload.OpKind.Flatten:
                catalog.Volumes[op.Volume].Origin = null;
                break;
        }
    }

    private static StorageException? Refusal(Action action)
    {
        try
        {
            action();
            return null;
        }
        catch (StorageException e)
        {
            return e;
        }
    }

    private static int Fail(SnapshotWorkload.Op op, string why)
    {
        Console.Error.WriteLine($"{op}: {why}");
        return 3;
    }
}
