using System.Diagnostics;
using System.Globalization;
using Platter.CrashWorker;
using Platter.Storage;
using Xunit;
using Xunit.Abstractions;
using static Platter.CrashWorker.SnapshotWorkload;

namespace Platter.Crash.Tests;

/// <summary>
/// The kill loop of <see cref="CrashTests"/> with snapshots: the worker mixes writes on several small volumes with
/// snapshot create, clone, flatten (its copy phase and its detach), rollback, snapshot delete (and the background reclaim that follows), recursive volume
/// delete, resizes (so rollback and clone must bring back the snapshot's size) and requests the engine must refuse,
/// and is killed with SIGKILL at random moments. After each kill:
/// <list type="bullet">
/// <item>the catalog (names, sizes, origins, snapshots) is the one the ops that returned produced, plus or minus the
/// one op in flight;</item>
/// <item>every snapshot reads exactly what its volume held when it was taken;</item>
/// <item>every volume (clones too) holds its content as of its last durability point (a flush, or a snapshot of
/// it, a clone or rollback creating that content) with each block old-or-new since;</item>
/// <item>the consistency check, with checksums and space accounting, passes.</item>
/// </list>
/// At the end every volume is deleted recursively and the store must be back to zero used bytes.
/// PLATTER_TEST_SEED=N replays a run; PLATTER_CRASH_ITERATIONS=N changes how many kills it makes.
/// </summary>
[Collection(nameof(CrashCollection))]
public sealed class SnapshotCrashTests(ITestOutputHelper output)
{
    private const int B = CrashWorkload.BlockSize;
    private static readonly TimeSpan BudgetMax = TimeSpan.FromSeconds(80);
    // Reclaim after deletes runs in the background; this bounds how long the store may take to give it all back.
    private static readonly TimeSpan ReclaimWaitMax = TimeSpan.FromSeconds(60);

    [Fact]
    public void Sigkill_during_snapshot_clone_rollback_and_delete_keeps_every_durable_snapshot_and_write() =>
        KillLoop("snapshots", iterationsDefault: 70, budget: BudgetMax, store =>
        {
            store.CreateVolume(FirstVolumeName, VolumeSizeBytes);
            return new Dictionary<long, byte[]>();
        });

    /// <summary>
    /// The same checks with one big volume whose snapshots are deleted over and over: each delete compares more
    /// blocks than the engine reclaims inline, so reclaim runs in the background while the workload goes on. Every
    /// other kill is aimed at the start of a background reclaim (the worker logs each start and end), and the test
    /// fails unless some kills really landed inside one (and the recovery at open derives free space again).
    /// </summary>
    [Fact]
    public void Sigkill_during_background_reclaim_keeps_snapshots_and_space_accounting_exact() =>
        KillLoop("reclaim", iterationsDefault: 15, budget: TimeSpan.FromSeconds(40), store =>
        {
            // Deleting a snapshot compares its map with the volume's: both map every block of the bulk volume.
            Assert.True(2 * (BulkSizeBytes / B) > Platter.Storage.Internal.EngineLimits.InlineReclaimBlocks,
                "the bulk volume is too small for its snapshot deletes to be reclaimed in the background");
            store.CreateVolume(BulkVolumeName, BulkSizeBytes);
            var content = new Dictionary<long, byte[]>();
            var chunk = new byte[1 << 20];
            using var vol = store.OpenVolume(BulkVolumeName);
            for (long off = 0; off < BulkSizeBytes; off += chunk.Length)
            {
                BulkContent(off, chunk);
                vol.Write(off, chunk);
                for (int i = 0; i < chunk.Length; i += B) content[(off + i) / B] = chunk.AsSpan(i, B).ToArray();
            }
            vol.FlushAsync().AsTask().GetAwaiter().GetResult();
            return content;
        });

    /// <summary>Creates the store with <paramref name="setup"/> (which returns the first volume's content), then kills and checks.</summary>
    private void KillLoop(string mode, int iterationsDefault, TimeSpan budget, Func<VolumeStore, Dictionary<long, byte[]>> setup)
    {
        int baseSeed = CrashHarness.EnvInt("PLATTER_TEST_SEED") ?? Random.Shared.Next();
        int iterations = CrashHarness.EnvInt("PLATTER_CRASH_ITERATIONS") ?? iterationsDefault;
        output.WriteLine($"seed={baseSeed}; replay: PLATTER_TEST_SEED={baseSeed} dotnet test tests/Platter.Crash.Tests --filter {nameof(SnapshotCrashTests)}");
        var rng = new Random(baseSeed);

        string root = Path.Combine(Path.GetTempPath(), $"platter-snapcrash-{Guid.NewGuid():N}");
        string storeDir = Path.Combine(root, "store");
        Directory.CreateDirectory(storeDir);
        try
        {
            var known = new Known();
            using (var store = VolumeStore.Open(storeDir, new StoreOptions { JournalRegionBytes = 1 << 20 }))
            {
                var content = setup(store);
                known.Catalog = Catalog.Read(store);
                known.Volumes[Assert.Single(known.Catalog.Volumes.Keys)] = content;
            }

            var clock = Stopwatch.StartNew();
            var inFlight = new SortedDictionary<string, int>(StringComparer.Ordinal);
            int done = 0, opsSeen = 0, catalogOpsDone = 0, newerSeen = 0, killsInReclaim = 0;
            // Past the budget only while a reclaim run has not yet been killed inside a reclaim (on a loaded machine few
            // kills fit the budget, and the claim below needs one), and never past four budgets.
            bool MoreWanted() => clock.Elapsed < budget || (mode == "reclaim" && killsInReclaim == 0 && clock.Elapsed < 4 * budget);
            for (int it = 0; it < iterations && (it < 5 || MoreWanted()); it++, done++)
            {
                int runSeed = rng.Next();
                string logPath = Path.Combine(root, $"run-{it}.log");
                var kill = mode == "reclaim" && it % 2 == 1 ? KillMoment.DuringReclaim(rng) : KillMoment.Choose(rng);
                string ctx = $"seed={baseSeed} {mode} iteration={it} runSeed={runSeed} kill {kill}";

                CrashHarness.RunAndKill(storeDir, runSeed, logPath, kill, ctx, mode);
                if (CrashHarness.ReclaimRunning(logPath)) killsInReclaim++;
                var (lastIntent, lastCompleted) = ParseLog(logPath);
                var replay = Replay(runSeed, mode, known, lastIntent, lastCompleted);
                opsSeen += lastIntent + 1;
                catalogOpsDone += replay.CatalogOpsCompleted;
                string kind = replay.Last is null ? "nothing started" : lastCompleted ? "between ops" : replay.Last.Kind.ToString();
                inFlight[kind] = inFlight.GetValueOrDefault(kind) + 1;
                ctx += $", killed during {(replay.Last is null ? "start-up" : lastCompleted ? $"nothing ({replay.Last} had returned)" : replay.Last.ToString())}";
                newerSeen += VerifyAndAdopt(storeDir, replay, known, ctx);
            }
            output.WriteLine($"{done} kills in {clock.Elapsed.TotalSeconds:F1} s; {opsSeen} ops started, {catalogOpsDone} catalog ops returned, "
                + $"{newerSeen} blocks recovered newer than their last durability point");
            output.WriteLine("op in flight at the kill: " + string.Join(", ", inFlight.Select(kv => $"{kv.Key} {kv.Value}")) + (mode == "reclaim" ? $"; {killsInReclaim} kills inside a background reclaim" : ""));
            Assert.True(done >= 5, "too few iterations to mean anything");
            Assert.True(catalogOpsDone > 0, $"seed={baseSeed}: no snapshot or catalog op returned before a kill: the test checked nothing of them");
            // Catalog ops commit synchronously, so they take most of the worker's time and most kills land in one; none
            // at all would mean this test no longer exercises what it is named after.
            int killedInCatalogOp = inFlight.Where(kv => Enum.TryParse<OpKind>(kv.Key, out var k) && k is OpKind.CreateSnapshot or OpKind.Clone
                or OpKind.Rollback or OpKind.DeleteSnapshot or OpKind.DeleteVolume or OpKind.Flatten).Sum(kv => kv.Value);
            Assert.True(done < 10 || killedInCatalogOp > 0, $"seed={baseSeed}: none of {done} kills landed during a snapshot, clone, rollback or delete");
            // The reclaim test is named after kills inside a background reclaim: at least five iterations run, so at
            // least two kills are aimed at one; none landing would mean it no longer tests what it claims.
            if (mode == "reclaim")
                Assert.True(killsInReclaim > 0, $"seed={baseSeed}: none of {done} kills landed inside a background reclaim");

            DeleteEverythingAndExpectEmpty(storeDir, $"seed={baseSeed} final clean-up");
        }
        finally
        {
            try { Directory.Delete(root, recursive: true); } catch (IOException) { }
        }
    }

    /// <summary>What the store held after the previous recovery: the starting point of the next run.</summary>
    private sealed class Known
    {
        public Catalog Catalog = new();
        public Dictionary<string, Dictionary<long, byte[]>> Volumes = new(StringComparer.Ordinal);
        public Dictionary<string, Dictionary<long, byte[]>> Snapshots = new(StringComparer.Ordinal);
    }

    /// <summary>One volume's model: acknowledged content, durable content, and every version written since.</summary>
    private sealed class VolumeModel
    {
        public Dictionary<long, byte[]> Current = new();
        public Dictionary<long, byte[]> Durable = new();
        public Dictionary<long, List<(int Op, byte[]? Content)>> Later = new();

        public static VolumeModel DurableAs(Dictionary<long, byte[]> content) => new() { Current = new(content), Durable = new(content) };

        public void MakeDurable()
        {
            Durable = new(Current);
            Later.Clear();
        }

        public VolumeModel Copy() => new()
        {
            Current = new(Current),
            Durable = new(Durable),
            Later = Later.ToDictionary(kv => kv.Key, kv => new List<(int, byte[]?)>(kv.Value)),
        };
    }

    /// <summary>One possible state of the store: the catalog, every volume's model and every snapshot's exact content.</summary>
    private sealed class World(string label)
    {
        public string Label = label;
        public Catalog Catalog = new();
        public Dictionary<string, VolumeModel> Volumes = new(StringComparer.Ordinal);
        public Dictionary<string, Dictionary<long, byte[]>> Snapshots = new(StringComparer.Ordinal);

        public World Copy(string label) => new(label)
        {
            Catalog = Catalog.Copy(),
            Volumes = Volumes.ToDictionary(kv => kv.Key, kv => kv.Value.Copy(), StringComparer.Ordinal),
            Snapshots = new(Snapshots, StringComparer.Ordinal),
        };

        public void RemoveSnapshot(string volume, string snapshot)
        {
            Catalog.Volumes[volume].RemoveSnapshot(snapshot);
            Snapshots.Remove(volume + "@" + snapshot);
        }
    }

    /// <summary>The replayed run: the state before the op in flight at the kill (if a catalog op), and that op.</summary>
    private sealed record ReplayResult(World Before, Op? Uncertain, Op? Last, int CatalogOpsCompleted);

    /// <summary>
    /// The index of the last op that may have started and whether it returned. One thread runs the ops, so every
    /// op before the last started one returned.
    /// </summary>
    private static (int LastIntent, bool LastCompleted) ParseLog(string logPath)
    {
        int lastIntent = -1, lastCompleted = -1;
        if (!File.Exists(logPath)) return (-1, false);
        var text = File.ReadAllText(logPath);
        // A line the kill cut short, without its newline, was never fully written: its op had not started.
        int end = text.LastIndexOf('\n');
        foreach (var line in end < 0 ? [] : text[..end].Split('\n'))
        {
            var parts = line.Split(' ');
            if (parts.Length != 3 || !int.TryParse(parts[2], NumberStyles.None, CultureInfo.InvariantCulture, out int k)) continue;
            string prefix = parts[0] + " ";
            if (prefix == CrashWorkload.IntentPrefix) lastIntent = Math.Max(lastIntent, k);
            else if (prefix == CrashWorkload.FlushedPrefix || prefix == DonePrefix) lastCompleted = Math.Max(lastCompleted, k);
        }
        return (lastIntent, lastIntent >= 0 && lastCompleted == lastIntent);
    }

    private static ReplayResult Replay(int runSeed, string mode, Known known, int lastIntent, bool lastCompleted)
    {
        var world = new World("the op in flight did not happen") { Catalog = known.Catalog.Copy() };
        foreach (var (name, content) in known.Volumes) world.Volumes[name] = VolumeModel.DurableAs(content);
        foreach (var (name, content) in known.Snapshots) world.Snapshots[name] = content;

        int catalogOps = 0;
        Op? last = null;
        var buf = new byte[64 * B];
        foreach (var op in Ops(runSeed, known.Catalog, mode))
        {
            if (op.Index > lastIntent) break;
            last = op;
            bool completed = op.Index < lastIntent || lastCompleted;
            if (op.IsData)
            {
                ApplyData(world.Volumes[op.Volume], op, runSeed, buf);
            }
            else if (op.Kind == OpKind.Flush)
            {
                // Volume.FlushAsync is a store-wide group commit: every volume's acknowledged writes become durable.
                if (completed) foreach (var v in world.Volumes.Values) v.MakeDurable();
            }
            else if (!op.Refused)
            {
                if (!completed) return new ReplayResult(world, op, op, catalogOps);
                ApplyCatalog(world, op);
                catalogOps++;
            }
            else if (completed)
            {
                catalogOps++;
            }
        }
        return new ReplayResult(world, null, last, catalogOps);
    }

    private static void ApplyData(VolumeModel vol, Op op, int runSeed, byte[] buf)
    {
        long end = op.Offset + op.Length;
        if (op.Kind == OpKind.Write) CrashWorkload.Content(runSeed, 0, op.Index, op.Offset, buf.AsSpan(0, op.Length));
        for (long blk = op.Offset / B; blk * B < end; blk++)
        {
            long bStart = blk * B;
            long from = Math.Max(op.Offset, bStart), to = Math.Min(end, bStart + B);
            var v = new byte[B];
            if (vol.Current.TryGetValue(blk, out var cur)) cur.CopyTo(v, 0);
            if (op.Kind == OpKind.Write)
                buf.AsSpan((int)(from - op.Offset), (int)(to - from)).CopyTo(v.AsSpan((int)(from - bStart)));
            else
                v.AsSpan((int)(from - bStart), (int)(to - from)).Clear();
            bool zero = !v.AsSpan().ContainsAnyExcept((byte)0);
            if (zero) vol.Current.Remove(blk); else vol.Current[blk] = v;
            if (!vol.Later.TryGetValue(blk, out var list)) vol.Later[blk] = list = new();
            list.Add((op.Index, zero ? null : v));
        }
    }

    /// <summary>The effect of a catalog op that returned: durable on return, like every catalog change.</summary>
    private static void ApplyCatalog(World world, Op op)
    {
        var catalog = world.Catalog;
        switch (op.Kind)
        {
            case OpKind.CreateVolume:
                catalog.Volumes.Add(op.Target!, new Catalog.VolumeEntry());
                world.Volumes[op.Target!] = new VolumeModel();
                break;
            case OpKind.CreateSnapshot:
            {
                var vol = world.Volumes[op.Volume];
                catalog.Volumes[op.Volume].AddSnapshot(op.Snapshot!, catalog.Volumes[op.Volume].SizeBytes);
                world.Snapshots[op.Volume + "@" + op.Snapshot] = new(vol.Current);
                // The snapshot is durable on return and is the volume's content at that point: the volume cannot
                // come back older than its own snapshot.
                vol.MakeDurable();
                break;
            }
            case OpKind.Clone:
            {
                string origin = op.Volume + "@" + op.Snapshot;
                catalog.Volumes.Add(op.Target!, new Catalog.VolumeEntry { Origin = origin, SizeBytes = catalog.Volumes[op.Volume].SnapshotSizes[op.Snapshot!] });
                world.Volumes[op.Target!] = VolumeModel.DurableAs(world.Snapshots[origin]);
                break;
            }
            case OpKind.Rollback:
            {
                var snaps = catalog.Volumes[op.Volume].Snapshots;
                int at = snaps.IndexOf(op.Snapshot!);
                foreach (var newer in snaps.Skip(at + 1).ToList()) world.RemoveSnapshot(op.Volume, newer);
                world.Volumes[op.Volume] = VolumeModel.DurableAs(world.Snapshots[op.Volume + "@" + op.Snapshot]);
                catalog.Volumes[op.Volume].SizeBytes = catalog.Volumes[op.Volume].SnapshotSizes[op.Snapshot!];
                break;
            }
            case OpKind.Resize:
            {
                // Durable on return: what a shrink cut off is gone for good and reads as zeros after a later grow.
                catalog.Volumes[op.Volume].SizeBytes = op.SizeBytes;
                var vol = world.Volumes[op.Volume];
                long firstGone = op.SizeBytes / B;
                var gone = vol.Current.Keys.Concat(vol.Durable.Keys).Concat(vol.Later.Keys).Where(b => b >= firstGone).Distinct().ToList();
                foreach (var blk in gone)
                {
                    vol.Current.Remove(blk);
                    vol.Durable.Remove(blk);
                    vol.Later.Remove(blk);
                }
                break;
            }
            case OpKind.DeleteSnapshot:
                world.RemoveSnapshot(op.Volume, op.Snapshot!);
                break;
            case OpKind.DeleteVolume:
                foreach (var s in catalog.Volumes[op.Volume].Snapshots) world.Snapshots.Remove(op.Volume + "@" + s);
                catalog.RemoveVolume(op.Volume);
                world.Volumes.Remove(op.Volume);
                break;
            case OpKind.Flatten:
                // Only the origin link goes; the content is the clone's as before (copies of the same bytes).
                catalog.Volumes[op.Volume].Origin = null;
                break;
            default:
                throw new InvalidOperationException($"not a catalog op: {op}");
        }
    }

    /// <summary>
    /// The states the store may be in after the kill. With no catalog op in flight, one. With one: before and after
    /// it; for a recursive rollback or volume delete also "some of the snapshots it deletes are gone, the rest not yet"
    /// (the engine does not promise that a recursive operation is one atomic step, only that each part is).
    /// </summary>
    private static List<World> Candidates(ReplayResult replay, Catalog observed)
    {
        var before = replay.Before;
        if (replay.Uncertain is not { } op) return [before];
        var after = before.Copy("the op in flight happened");
        ApplyCatalog(after, op);
        var worlds = new List<World> { before, after };
        List<string> cascade = op.Kind switch
        {
            OpKind.Rollback => before.Catalog.Volumes[op.Volume].Snapshots.SkipWhile(s => s != op.Snapshot).Skip(1).ToList(),
            OpKind.DeleteVolume => before.Catalog.Volumes[op.Volume].Snapshots.ToList(),
            _ => [],
        };
        if (cascade.Count > 0 && observed.Volumes.TryGetValue(op.Volume, out var entry))
        {
            var partial = before.Copy("the op in flight deleted some of its snapshots, then stopped");
            foreach (var s in cascade.Where(s => !entry.Snapshots.Contains(s))) partial.RemoveSnapshot(op.Volume, s);
            worlds.Add(partial);
        }
        return worlds;
    }

    private int VerifyAndAdopt(string storeDir, ReplayResult replay, Known known, string ctx)
    {
        using var store = VolumeStore.Open(storeDir, new StoreOptions { CreateIfMissing = false });
        var observed = Catalog.Read(store);
        CheckCatalogAgreesWithItself(store, observed, ctx);

        var candidates = Candidates(replay, observed).Where(w => w.Catalog.Describe() == observed.Describe()).ToList();
        if (candidates.Count == 0)
        {
            var expected = Candidates(replay, observed).Select(w => $"if {w.Label}:\n{w.Catalog.Describe()}");
            Assert.Fail($"{ctx}: the catalog after recovery is\n{observed.Describe()}which no outcome of the ops explains; expected\n{string.Join("", expected)}");
        }

        var volumes = new Dictionary<string, byte[]>(StringComparer.Ordinal);
        var snapshots = new Dictionary<string, byte[]>(StringComparer.Ordinal);
        foreach (var (name, entry) in observed.Volumes)
        {
            using (var vol = store.OpenVolume(name))
            {
                Assert.False(vol.IsReadOnly, $"{ctx}: volume '{name}' opened read-only");
                volumes[name] = ReadAll(vol, entry.SizeBytes, ctx);
            }
            foreach (var s in entry.Snapshots)
            {
                using var snap = store.OpenSnapshot(name, s);
                string full = name + "@" + s;
                Assert.True(snap.IsReadOnly, $"{ctx}: snapshot '{full}' is not read-only");
                Assert.Equal(full, snap.Name);
                var refusal = Assert.Throws<StorageException>(() => snap.Write(0, new byte[1]));
                Assert.Equal(StorageError.ReadOnly, refusal.Error);
                snapshots[full] = ReadAll(snap, entry.SnapshotSizes[s], ctx);
            }
        }

        string? failure = null;
        int newer = -1;
        World? matched = null;
        foreach (var world in candidates)
        {
            var problem = Match(world, volumes, snapshots, out int n);
            if (problem is null) { newer = n; matched = world; break; }
            failure += $"\nif {world.Label}: {problem}";
        }
        if (matched is null) Assert.Fail($"{ctx}: the content after recovery matches no outcome:{failure}");

        var report = store.Check(verifyChecksums: true);
        Assert.True(report.Ok, $"{ctx}: consistency check failed:\n  {string.Join("\n  ", report.Problems)}");

        known.Catalog = observed;
        // Snapshots read exactly as their oracles, so those carry on; a volume's blocks reuse the model's arrays
        // where equal, so a big volume is held once, not once per kill.
        known.Volumes = volumes.ToDictionary(kv => kv.Key, kv => Blocks(kv.Value, matched.Volumes[kv.Key]), StringComparer.Ordinal);
        known.Snapshots = snapshots.ToDictionary(kv => kv.Key, kv => matched.Snapshots[kv.Key], StringComparer.Ordinal);
        return newer;
    }

    /// <summary>The store's other views of the catalog (sizes, counts, origins, clone lists) agree with the listing.</summary>
    private static void CheckCatalogAgreesWithItself(VolumeStore store, Catalog observed, string ctx)
    {
        foreach (var (name, entry) in observed.Volumes)
        {
            var info = store.GetVolumeInfo(name);
            Assert.True(info.SizeBytes == entry.SizeBytes, $"{ctx}: volume '{name}' is {info.SizeBytes} bytes in its info, {entry.SizeBytes} in the list");
            Assert.True(info.SnapshotCount == entry.Snapshots.Count, $"{ctx}: volume '{name}' reports {info.SnapshotCount} snapshots, lists {entry.Snapshots.Count}");
            foreach (var s in entry.Snapshots)
            {
                var snap = store.GetSnapshotInfo(name, s);
                Assert.True(snap.SizeBytes == entry.SnapshotSizes[s], $"{ctx}: snapshot '{snap.FullName}' is {snap.SizeBytes} bytes in its info, {entry.SnapshotSizes[s]} in the list");
                var clones = observed.ClonesOf(name, s).Order(StringComparer.Ordinal).ToList();
                var listed = snap.Clones.Order(StringComparer.Ordinal).ToList();
                Assert.True(clones.SequenceEqual(listed),
                    $"{ctx}: snapshot '{snap.FullName}' lists clones [{string.Join(", ", listed)}] but the volumes cloned from it are [{string.Join(", ", clones)}]");
            }
        }
        int all = store.ListSnapshots().Count;
        Assert.True(all == observed.SnapshotCount, $"{ctx}: ListSnapshots() has {all} snapshots, the volumes list {observed.SnapshotCount}");
    }

    private static byte[] ReadAll(Volume vol, long sizeBytes, string ctx)
    {
        Assert.True(vol.SizeBytes == sizeBytes, $"{ctx}: a handle on '{vol.Name}' is {vol.SizeBytes} bytes, its catalog entry {sizeBytes}");
        var image = new byte[sizeBytes];
        for (long off = 0; off < image.Length; off += 1 << 20)
            vol.Read(off, image.AsSpan((int)off, 1 << 20));
        return image;
    }

    private static Dictionary<long, byte[]> Blocks(byte[] image, VolumeModel model)
    {
        var blocks = new Dictionary<long, byte[]>();
        for (int i = 0; i < image.Length; i += B)
        {
            var b = image.AsSpan(i, B);
            if (!b.ContainsAnyExcept((byte)0)) continue;
            long blk = i / B;
            blocks[blk] = model.Durable.TryGetValue(blk, out var d) && b.SequenceEqual(d) ? d
                : model.Current.TryGetValue(blk, out var c) && b.SequenceEqual(c) ? c
                : b.ToArray();
        }
        return blocks;
    }

    /// <summary>Null when the images match the world; otherwise the first mismatch. Counts blocks newer than durable.</summary>
    private static string? Match(World world, Dictionary<string, byte[]> volumes, Dictionary<string, byte[]> snapshots, out int newer)
    {
        newer = 0;
        foreach (var (name, image) in snapshots)
        {
            var oracle = world.Snapshots[name];
            for (int i = 0; i < image.Length; i += B)
            {
                var actual = image.AsSpan(i, B);
                var expected = oracle.GetValueOrDefault(i / B);
                if (expected is null ? actual.ContainsAnyExcept((byte)0) : !actual.SequenceEqual(expected))
                    return $"snapshot '{name}' block {i / B} reads {CrashWorkload.Describe(actual)}; it was {(expected is null ? "zeros" : CrashWorkload.Describe(expected))} when the snapshot was taken";
            }
        }
        foreach (var (name, image) in volumes)
        {
            var model = world.Volumes[name];
            for (int i = 0; i < image.Length; i += B)
            {
                long blk = i / B;
                var actual = image.AsSpan(i, B);
                bool zero = !actual.ContainsAnyExcept((byte)0);
                var durable = model.Durable.GetValueOrDefault(blk);
                if (durable is null ? zero : actual.SequenceEqual(durable)) continue;
                bool ok = false;
                if (model.Later.TryGetValue(blk, out var later))
                {
                    foreach (var (_, v) in later)
                        if (v is null ? zero : actual.SequenceEqual(v)) { ok = true; newer++; break; }
                }
                if (!ok)
                {
                    string versions = later is null ? "none" : string.Join(", ", later.Select(x => $"op {x.Op}: {(x.Content is null ? "zeros" : CrashWorkload.Describe(x.Content))}"));
                    return $"volume '{name}' block {blk} reads {CrashWorkload.Describe(actual)}; durable content is "
                        + $"{(durable is null ? "zeros" : CrashWorkload.Describe(durable))}; versions since: {versions}";
                }
            }
        }
        return null;
    }

    /// <summary>Deletes every volume (clones before the volumes they came from), then the store must hold no data.</summary>
    private static void DeleteEverythingAndExpectEmpty(string storeDir, string ctx)
    {
        using (var store = VolumeStore.Open(storeDir, new StoreOptions { CreateIfMissing = false }))
        {
            var catalog = Catalog.Read(store);
            while (catalog.Volumes.Count > 0)
            {
                // A volume whose snapshots have no clones can go with them; clones go first, so this always progresses.
                var leaves = catalog.Volumes.Where(v => v.Value.Snapshots.All(s => !catalog.ClonesOf(v.Key, s).Any())).Select(v => v.Key).ToList();
                Assert.True(leaves.Count > 0, $"{ctx}: every volume has a snapshot with clones:\n{catalog.Describe()}");
                foreach (var name in leaves) store.DeleteVolume(name, recursive: true);
                catalog = Catalog.Read(store);
            }
            Assert.Empty(store.ListSnapshots());
        }
        using (var store = VolumeStore.Open(storeDir, new StoreOptions { CreateIfMissing = false }))
        {
            Assert.Empty(store.ListVolumes());
            Assert.Empty(store.ListSnapshots());
            var waited = Stopwatch.StartNew();
            var usage = store.GetUsage();
            while (usage.UsedBytes != 0 && waited.Elapsed < ReclaimWaitMax)
            {
                Thread.Sleep(50);
                usage = store.GetUsage();
            }
            Assert.True(usage.UsedBytes == 0, $"{ctx}: {usage.UsedBytes} bytes still used {ReclaimWaitMax.TotalSeconds} s after every volume and snapshot was deleted ({usage})");
            var report = store.Check(verifyChecksums: true);
            Assert.True(report.Ok, $"{ctx}: consistency check failed on the empty store:\n  {string.Join("\n  ", report.Problems)}");
            Assert.True(report.MappedBlocks == 0, $"{ctx}: the check still finds {report.MappedBlocks} mapped blocks");
        }
    }
}
