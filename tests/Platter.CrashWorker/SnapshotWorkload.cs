using System.Globalization;
using System.Text;
using Platter.Storage;

namespace Platter.CrashWorker;

/// <summary>
/// The snapshot variant of the crash workload: one thread mixes data ops on several small volumes with snapshot
/// create, clone, flatten, rollback, snapshot delete and recursive volume delete (and requests the engine must refuse).
/// Its op sequence is a pure function of the seed and of the catalog the run starts from (which the worker and the
/// test both read from the store with <see cref="Catalog.Read"/>), so the test can replay it. One thread keeps the
/// content of every snapshot exact: a snapshot holds precisely the writes issued before its create call.
/// </summary>
public static class SnapshotWorkload
{
    /// <summary>The volume the test creates before the first run.</summary>
    public const string FirstVolumeName = "base";

    /// <summary>Volumes start this small (and are resized among <see cref="Sizes"/>), so a run can verify many volumes and snapshots block by block after each kill.</summary>
    public const long VolumeSizeBytes = 4L << 20;

    /// <summary>The sizes a resize picks from: rollback and clone must bring back the snapshot's size, not the volume's.</summary>
    public static readonly long[] Sizes = [2L << 20, 4L << 20, 6L << 20];

    /// <summary>
    /// The "reclaim" mode's one big volume, filled with <see cref="BulkContent"/> before the first run. Deleting a
    /// snapshot of it compares more blocks than the engine reclaims inline, so the reclaim runs in the background
    /// while the workload goes on, and kills land in it.
    /// </summary>
    public const string BulkVolumeName = "bulk";
    public const long BulkSizeBytes = 168L << 20;

    /// <summary>The seed of the bulk volume's initial content (see <see cref="CrashWorkload.Content"/>, op 0).</summary>
    public const int BulkSeed = 0x5eed;

    private const int B = CrashWorkload.BlockSize;

    // Bounds keep the per-kill verification (every block of every volume and snapshot) cheap.
    private const int LiveVolumesMax = 5;
    private const int SnapshotsPerVolumeMax = 3;
    private const int SnapshotsMax = 8;

    public enum OpKind { Write, Trim, WriteZeroes, Flush, CreateVolume, CreateSnapshot, Clone, Rollback, DeleteSnapshot, DeleteVolume, Resize, Flatten }

    /// <summary>
    /// One op. Volume is the volume it acts on; Snapshot the snapshot (create, clone, rollback, delete); Target the
    /// new volume's name (create, clone); Length the new size (resize); Refused: the engine must refuse it with
    /// HasDependents and change nothing.
    /// </summary>
    public sealed record Op(int Index, OpKind Kind, string Volume, long Offset = 0, int Length = 0, string? Snapshot = null,
        string? Target = null, bool Recursive = false, bool Refused = false)
    {
        public bool IsData => Kind is OpKind.Write or OpKind.Trim or OpKind.WriteZeroes;
        public bool IsCatalog => !IsData && Kind != OpKind.Flush;

        /// <summary>The new size of a resize.</summary>
        public long SizeBytes => Offset;

        public override string ToString() => Kind switch
        {
            OpKind.Write or OpKind.Trim or OpKind.WriteZeroes => $"op {Index} {Kind} {Volume} [{Offset}, +{Length})",
            OpKind.Flush => $"op {Index} Flush",
            OpKind.CreateVolume => $"op {Index} CreateVolume {Target}",
            OpKind.Resize => $"op {Index} Resize {Volume} to {SizeBytes}",
            OpKind.Clone => $"op {Index} Clone {Volume}@{Snapshot} -> {Target}{(Refused ? " (must be refused)" : "")}",
            _ => $"op {Index} {Kind} {Volume}{(Snapshot is null ? "" : "@" + Snapshot)}{(Recursive ? " recursive" : "")}{(Refused ? " (must be refused)" : "")}",
        };
    }

    /// <summary>
    /// What the store's catalog holds, in a canonical order: volumes by name (with the snapshot each was cloned
    /// from), each with its snapshots oldest first. Clones of a snapshot are the volumes whose origin names it.
    /// </summary>
    public sealed class Catalog
    {
        public SortedDictionary<string, VolumeEntry> Volumes { get; } = new(StringComparer.Ordinal);

        public sealed class VolumeEntry
        {
            public long SizeBytes { get; set; } = VolumeSizeBytes;
            public string? Origin { get; set; }
            public List<string> Snapshots { get; } = [];
            public Dictionary<string, long> SnapshotSizes { get; } = new(StringComparer.Ordinal);

            public void AddSnapshot(string name, long sizeBytes)
            {
                Snapshots.Add(name);
                SnapshotSizes[name] = sizeBytes;
            }

            public void RemoveSnapshot(string name)
            {
                Snapshots.Remove(name);
                SnapshotSizes.Remove(name);
            }

            public VolumeEntry Copy()
            {
                var copy = new VolumeEntry { SizeBytes = SizeBytes, Origin = Origin };
                foreach (var s in Snapshots) copy.AddSnapshot(s, SnapshotSizes[s]);
                return copy;
            }
        }

        public static Catalog Read(VolumeStore store)
        {
            var catalog = new Catalog();
            foreach (var v in store.ListVolumes())
            {
                var entry = new VolumeEntry { SizeBytes = v.SizeBytes, Origin = v.Origin };
                foreach (var s in store.ListSnapshots(v.Name)) entry.AddSnapshot(s.Name, s.SizeBytes);
                catalog.Volumes.Add(v.Name, entry);
            }
            return catalog;
        }

        public Catalog Copy()
        {
            var copy = new Catalog();
            foreach (var (name, e) in Volumes) copy.Volumes.Add(name, e.Copy());
            return copy;
        }

        public IEnumerable<string> ClonesOf(string volume, string snapshot)
        {
            string full = volume + "@" + snapshot;
            return Volumes.Where(v => v.Value.Origin == full).Select(v => v.Key);
        }

        public int SnapshotCount => Volumes.Values.Sum(v => v.Snapshots.Count);

        /// <summary>Removes the volume and its snapshots (the model of a successful recursive delete).</summary>
        public void RemoveVolume(string volume) => Volumes.Remove(volume);

        /// <summary>One line per volume: <c>name size (origin) [snap1 size, snap2 size]</c>; equal text means equal catalogs.</summary>
        public string Describe()
        {
            var sb = new StringBuilder();
            foreach (var (name, e) in Volumes)
            {
                sb.Append(name).Append(' ').Append(e.SizeBytes).Append(e.Origin is null ? "" : $" (clone of {e.Origin})").Append(" [")
                    .AppendJoin(", ", e.Snapshots.Select(s => $"{s} {e.SnapshotSizes[s]}")).Append("]\n");
            }
            return sb.Length == 0 ? "(no volumes)\n" : sb.ToString();
        }
    }

    /// <summary>The endless op sequence of a run of <paramref name="mode"/> ("snapshots" or "reclaim") that starts from <paramref name="initial"/>.</summary>
    public static IEnumerable<Op> Ops(int seed, Catalog initial, string mode) => mode switch
    {
        "snapshots" => Ops(seed, initial),
        "reclaim" => ReclaimOps(seed, initial),
        _ => throw new ArgumentException($"unknown mode '{mode}'", nameof(mode)),
    };

    /// <summary>
    /// The "reclaim" mode: snapshots of the bulk volume taken and deleted over and over with a few writes between
    /// (each delete starts a background reclaim), now and then a clone (written to, flattened or not, then deleted)
    /// or a rollback.
    /// </summary>
    public static IEnumerable<Op> ReclaimOps(int seed, Catalog initial)
    {
        var rng = new Random(seed * 31 + 11);
        var catalog = initial.Copy();
        string tag = ((uint)seed).ToString("x8", CultureInfo.InvariantCulture);
        for (int i = 0; ; i++)
        {
            string NewName(char kind) => $"{kind}{tag}-{i.ToString(CultureInfo.InvariantCulture)}";
            var bulk = catalog.Volumes[BulkVolumeName];
            string? clone = catalog.Volumes.Keys.FirstOrDefault(v => v != BulkVolumeName);
            int dice = rng.Next(100);
            if (bulk.Snapshots.Count == 0 || (dice < 10 && bulk.Snapshots.Count < 2))
            {
                string snap = NewName('s');
                bulk.AddSnapshot(snap, bulk.SizeBytes);
                yield return new Op(i, OpKind.CreateSnapshot, BulkVolumeName, Snapshot: snap);
            }
            else if (dice < 60)
            {
                string target = clone is not null && rng.Next(4) == 0 ? clone : BulkVolumeName;
                long blocks = catalog.Volumes[target].SizeBytes / B;
                int count = rng.Next(1, 17);
                yield return new Op(i, OpKind.Write, target, rng.NextInt64(0, blocks - count + 1) * B, count * B);
            }
            else if (dice < 68)
            {
                yield return new Op(i, OpKind.Flush, BulkVolumeName);
            }
            else if (dice < 88)
            {
                string snap = bulk.Snapshots[0];
                bool refused = catalog.ClonesOf(BulkVolumeName, snap).Any();
                if (!refused) bulk.RemoveSnapshot(snap);
                yield return new Op(i, OpKind.DeleteSnapshot, BulkVolumeName, Snapshot: snap, Refused: refused);
            }
            else if (dice < 93)
            {
                if (clone is not null) continue;
                string snap = bulk.Snapshots[^1];
                string name = NewName('c');
                catalog.Volumes.Add(name, new Catalog.VolumeEntry { Origin = BulkVolumeName + "@" + snap, SizeBytes = bulk.SnapshotSizes[snap] });
                yield return new Op(i, OpKind.Clone, BulkVolumeName, Snapshot: snap, Target: name);
            }
            else if (dice < 97)
            {
                if (clone is null) continue;
                // Half the time flatten the clone first: its copy of up to the whole bulk volume is long, so kills
                // land inside it (a partly copied clone must read as before and still be a clone).
                if (catalog.Volumes[clone].Origin is not null && rng.Next(2) == 0)
                {
                    catalog.Volumes[clone].Origin = null;
                    yield return new Op(i, OpKind.Flatten, clone);
                    continue;
                }
                catalog.RemoveVolume(clone);
                yield return new Op(i, OpKind.DeleteVolume, clone, Recursive: true);
            }
            else
            {
                // The newest snapshot, so no newer ones are in the way.
                yield return new Op(i, OpKind.Rollback, BulkVolumeName, Snapshot: bulk.Snapshots[^1]);
            }
        }
    }

    /// <summary>The bulk volume's initial content at <paramref name="offset"/>.</summary>
    public static void BulkContent(long offset, Span<byte> destination) => CrashWorkload.Content(BulkSeed, 0, 0, offset, destination);

    private static IEnumerable<Op> Ops(int seed, Catalog initial)
    {
        var rng = new Random(seed * 31 + 7);
        var catalog = initial.Copy();
        string tag = ((uint)seed).ToString("x8", CultureInfo.InvariantCulture);
        const long hotBlocksMax = 128;
        for (int i = 0; ; i++)
        {
            string NewName(char kind) => $"{kind}{tag}-{i.ToString(CultureInfo.InvariantCulture)}";

            if (catalog.Volumes.Count == 0)
            {
                string name = NewName('v');
                catalog.Volumes.Add(name, new Catalog.VolumeEntry());
                yield return new Op(i, OpKind.CreateVolume, name, Target: name);
                continue;
            }
            var volumes = catalog.Volumes.Keys.ToList();
            string vol = volumes[rng.Next(volumes.Count)];
            var entry = catalog.Volumes[vol];
            long blocks = entry.SizeBytes / B;
            long hotBlocks = Math.Min(hotBlocksMax, blocks);
            var allSnapshots = catalog.Volumes.SelectMany(v => v.Value.Snapshots.Select(s => (Volume: v.Key, Snapshot: s))).ToList();
            int dice = rng.Next(100);

            if (dice < 10)
            {
                yield return new Op(i, OpKind.Flush, vol);
            }
            else if (dice < 60)
            {
                long regionBlocks = rng.Next(4) == 0 ? blocks : hotBlocks;
                int kind = rng.Next(100);
                if (kind < 50)
                {
                    int count = rng.Next(1, 17);
                    long first = rng.NextInt64(0, regionBlocks - count + 1);
                    yield return new Op(i, OpKind.Write, vol, first * B, count * B);
                }
                else if (kind < 80)
                {
                    int len = rng.Next(1, 3 * B + 200);
                    yield return new Op(i, OpKind.Write, vol, rng.NextInt64(0, regionBlocks * B - len + 1), len);
                }
                else
                {
                    bool aligned = rng.Next(2) == 0;
                    int len = aligned ? rng.Next(1, 17) * B : rng.Next(1, 5 * B);
                    long off = aligned ? rng.NextInt64(0, regionBlocks - len / B + 1) * B : rng.NextInt64(0, regionBlocks * B - len + 1);
                    yield return new Op(i, kind < 92 ? OpKind.Trim : OpKind.WriteZeroes, vol, off, len);
                }
            }
            else if (dice < 71)
            {
                if (entry.Snapshots.Count >= SnapshotsPerVolumeMax || catalog.SnapshotCount >= SnapshotsMax) continue;
                string snap = NewName('s');
                entry.AddSnapshot(snap, entry.SizeBytes);
                yield return new Op(i, OpKind.CreateSnapshot, vol, Snapshot: snap);
            }
            else if (dice < 78)
            {
                // Now and then flatten a clone instead (refused while the clone has snapshots of its own): afterwards
                // its origin snapshot has one clone fewer and may be deleted.
                var clones = catalog.Volumes.Where(v => v.Value.Origin is not null).Select(v => v.Key).ToList();
                if (clones.Count > 0 && rng.Next(3) == 0)
                {
                    string flattened = clones[rng.Next(clones.Count)];
                    var cloneEntry = catalog.Volumes[flattened];
                    bool refused = cloneEntry.Snapshots.Count > 0;
                    if (!refused) cloneEntry.Origin = null;
                    yield return new Op(i, OpKind.Flatten, flattened, Refused: refused);
                    continue;
                }
                if (allSnapshots.Count == 0 || catalog.Volumes.Count >= LiveVolumesMax) continue;
                var (origin, snap) = allSnapshots[rng.Next(allSnapshots.Count)];
                string clone = NewName('c');
                catalog.Volumes.Add(clone, new Catalog.VolumeEntry { Origin = origin + "@" + snap, SizeBytes = catalog.Volumes[origin].SnapshotSizes[snap] });
                yield return new Op(i, OpKind.Clone, origin, Snapshot: snap, Target: clone);
            }
            else if (dice < 84)
            {
                if (entry.Snapshots.Count == 0) continue;
                int at = rng.Next(entry.Snapshots.Count);
                var newer = entry.Snapshots.Skip(at + 1).ToList();
                bool recursive = newer.Count == 0 ? rng.Next(2) == 0 : rng.Next(3) != 0;
                bool refused = newer.Count > 0 && (!recursive || newer.Any(s => catalog.ClonesOf(vol, s).Any()));
                if (!refused)
                {
                    foreach (var s in newer) entry.RemoveSnapshot(s);
                    entry.SizeBytes = entry.SnapshotSizes[entry.Snapshots[at]];
                }
                yield return new Op(i, OpKind.Rollback, vol, Snapshot: entry.Snapshots[at], Recursive: recursive, Refused: refused);
            }
            else if (dice < 91)
            {
                if (allSnapshots.Count == 0) continue;
                var (owner, snap) = allSnapshots[rng.Next(allSnapshots.Count)];
                bool refused = catalog.ClonesOf(owner, snap).Any();
                if (!refused) catalog.Volumes[owner].RemoveSnapshot(snap);
                yield return new Op(i, OpKind.DeleteSnapshot, owner, Snapshot: snap, Refused: refused);
            }
            else if (dice < 93)
            {
                long size = Sizes[rng.Next(Sizes.Length)];
                if (size == entry.SizeBytes) continue;
                entry.SizeBytes = size;
                yield return new Op(i, OpKind.Resize, vol, Offset: size);
            }
            else if (dice < 97)
            {
                bool recursive = entry.Snapshots.Count == 0 ? rng.Next(2) == 0 : rng.Next(4) != 0;
                bool refused = entry.Snapshots.Count > 0 && (!recursive || entry.Snapshots.Any(s => catalog.ClonesOf(vol, s).Any()));
                if (!refused) catalog.RemoveVolume(vol);
                yield return new Op(i, OpKind.DeleteVolume, vol, Recursive: recursive, Refused: refused);
            }
            else
            {
                if (catalog.Volumes.Count >= LiveVolumesMax) continue;
                string name = NewName('v');
                catalog.Volumes.Add(name, new Catalog.VolumeEntry());
                yield return new Op(i, OpKind.CreateVolume, name, Target: name);
            }
        }
    }

    /// <summary>Progress log lines: "I 0 op" before an op starts, "F 0 op" after a flush returns, "D 0 op" after a catalog op returns.</summary>
    public const string DonePrefix = "D ";
}
