using System.Diagnostics;
using System.Globalization;
using Platter.CrashWorker;
using Platter.Storage;
using Platter.Testing;
using Xunit;
using Xunit.Abstractions;

namespace Platter.Crash.Tests;

/// <summary>
/// A child process runs a seeded random workload on a store and is killed with SIGKILL at a random
/// moment, many times over the same store. After each kill the store is reopened here and checked:
/// every acknowledged write (flushed or not: the pending-operation ring keeps what the process acknowledged)
/// reads back exactly, every other 4 KiB block holds its durable content or a content written after it
/// (never a mix, never garbage), everything else reads zeros, and the consistency check passes.
/// PLATTER_TEST_SEED=N replays a run; PLATTER_CRASH_ITERATIONS=N changes how many kills it makes.
/// </summary>
[Collection(nameof(CrashCollection))]
public sealed class CrashTests(ITestOutputHelper output)
{
    private const int B = CrashWorkload.BlockSize;
    private static readonly TimeSpan BudgetMax = TimeSpan.FromSeconds(80);

    [Fact]
    public void Sigkill_at_random_moments_loses_no_acknowledged_write()
    {
        int baseSeed = CrashHarness.EnvInt("PLATTER_TEST_SEED") ?? Random.Shared.Next();
        int iterations = CrashHarness.EnvInt("PLATTER_CRASH_ITERATIONS") ?? 70;
        output.WriteLine($"seed={baseSeed}; replay: PLATTER_TEST_SEED={baseSeed} dotnet test tests/Platter.Crash.Tests");
        var rng = new Random(baseSeed);

        string root = Path.Combine(Path.GetTempPath(), $"platter-crash-{Guid.NewGuid():N}");
        string storeDir = Path.Combine(root, "store");
        Directory.CreateDirectory(storeDir);
        try
        {
            // A small journal region: it fills every few hundred commits, so kills also land in checkpoints and journal wrap-around.
            using (var store = VolumeStore.Open(storeDir, new StoreOptions { JournalRegionBytes = 1 << 20 }))
                store.CreateVolume(CrashWorkload.VolumeName, CrashWorkload.VolumeSizeBytes);

            // What the volume held after the previous recovery: the starting point of the next run.
            var baseline = new Dictionary<long, byte[]>();
            var clock = Stopwatch.StartNew();
            int done = 0, flushesSeen = 0, unflushedSeen = 0, opsSeen = 0, newerSeen = 0;
            for (int it = 0; it < iterations && (it < 5 || clock.Elapsed < BudgetMax); it++, done++)
            {
                int runSeed = rng.Next();
                string logPath = Path.Combine(root, $"run-{it}.log");
                var kill = KillMoment.Choose(rng);
                string ctx = $"seed={baseSeed} iteration={it} runSeed={runSeed} kill {kill}";

                CrashHarness.RunAndKill(storeDir, runSeed, logPath, kill, ctx, "volume");
                int threads = CrashWorkload.Threads(runSeed);
                var progress = ParseLog(logPath, threads);
                var expect = new Expectation(baseline);
                for (int t = 0; t < threads; t++)
                {
                    var (lastFlush, lastDone, lastIntent) = progress[t];
                    opsSeen += lastIntent + 1;
                    if (lastFlush >= 0) flushesSeen++;
                    if (lastDone > lastFlush) unflushedSeen++;
                    Replay(runSeed, t, baseline, lastDone, lastIntent, expect);
                }
                string where = string.Join("; ", progress.Select((p, t) => $"thread {t}: last flush op {p.LastFlush}, last acknowledged op {p.LastDone}, last started op {p.LastIntent}"));
                newerSeen += VerifyAndAdopt(storeDir, expect, baseline, $"{ctx}, {threads} threads ({where})");
            }
            output.WriteLine($"{done} kills in {clock.Elapsed.TotalSeconds:F1} s; {opsSeen} ops started, {flushesSeen} runs with a completed flush, "
                + $"{unflushedSeen} with acknowledged writes after their last flush, {newerSeen} blocks recovered newer than their last acknowledged write");
            Assert.True(done >= 5, "too few iterations to mean anything");
            Assert.True(flushesSeen > 0, $"seed={baseSeed}: no run completed a flush before its kill: the durability check never ran");
            Assert.True(unflushedSeen > 0, $"seed={baseSeed}: no kill landed after an acknowledged, unflushed write: the pending-operation ring was never needed");
        }
        finally
        {
            try { Directory.Delete(root, recursive: true); } catch (IOException) { }
        }
    }

    /// <summary>
    /// Per thread: the index of its last flush op that returned (-1: none), of its last op that returned (a flush, or
    /// an acknowledged write, trim or write-zeroes; -1: none) and of its last op that may have started (-1: none). A
    /// thread runs its ops one at a time, so everything before its last returned op had returned too.
    /// </summary>
    private static (int LastFlush, int LastDone, int LastIntent)[] ParseLog(string logPath, int threads)
    {
        var result = Enumerable.Repeat((LastFlush: -1, LastDone: -1, LastIntent: -1), threads).ToArray();
        if (!File.Exists(logPath)) return result;
        var text = File.ReadAllText(logPath);
        // Each line is one write(2) issued before its op starts (or after its flush returns): a line the kill
        // cut short, without its newline, belongs to an op that had not started, so it is ignored.
        int end = text.LastIndexOf('\n');
        foreach (var line in end < 0 ? [] : text[..end].Split('\n'))
        {
            var parts = line.Split(' ');
            if (parts.Length != 3 || !int.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out int t)
                || !int.TryParse(parts[2], NumberStyles.None, CultureInfo.InvariantCulture, out int k) || t >= threads)
                continue;
            if (parts[0] + " " == CrashWorkload.FlushedPrefix) result[t].LastFlush = Math.Max(result[t].LastFlush, k);
            else if (parts[0] + " " == CrashWorkload.AcknowledgedPrefix) result[t].LastDone = Math.Max(result[t].LastDone, k);
            else if (parts[0] + " " == CrashWorkload.IntentPrefix) result[t].LastIntent = Math.Max(result[t].LastIntent, k);
        }
        for (int t = 0; t < threads; t++)
        {
            result[t].LastDone = Math.Max(result[t].LastDone, result[t].LastFlush);
            result[t].LastIntent = Math.Max(result[t].LastIntent, result[t].LastDone);
        }
        return result;
    }

    /// <summary>For each block: its durable content (as of the last acknowledged op) and every later version.</summary>
    private sealed class Expectation(Dictionary<long, byte[]> baseline)
    {
        public readonly Dictionary<long, byte[]> Durable = new(baseline);
        public readonly Dictionary<long, List<(int Op, byte[]? Content)>> Later = new();
    }

    /// <summary>Replays one thread's ops (its blocks are its own) into the expectation: what it had when op <paramref name="lastDone"/> returned must be there.</summary>
    private static void Replay(int runSeed, int thread, Dictionary<long, byte[]> baseline, int lastDone, int lastIntent, Expectation expect)
    {
        var current = new Dictionary<long, byte[]>(baseline);
        var touched = new HashSet<long>();
        var buf = new byte[64 * B];
        foreach (var op in CrashWorkload.Ops(runSeed, thread))
        {
            if (op.Index > lastIntent) break;
            if (op.Kind != CrashWorkload.OpKind.Flush) Apply(op);
            if (op.Index == lastDone)
            {
                foreach (var blk in touched)
                {
                    if (current.TryGetValue(blk, out var v)) expect.Durable[blk] = v;
                    else expect.Durable.Remove(blk);
                }
            }
        }

        void Apply(CrashWorkload.Op op)
        {
            bool after = op.Index > lastDone;
            long end = op.Offset + op.Length;
            if (op.Kind == CrashWorkload.OpKind.Write) CrashWorkload.Content(runSeed, thread, op.Index, op.Offset, buf.AsSpan(0, op.Length));
            for (long blk = op.Offset / B; blk * B < end; blk++)
            {
                long bStart = blk * B;
                long from = Math.Max(op.Offset, bStart), to = Math.Min(end, bStart + B);
                var v = new byte[B];
                if (current.TryGetValue(blk, out var cur)) cur.CopyTo(v, 0);
                if (op.Kind == CrashWorkload.OpKind.Write)
                    buf.AsSpan((int)(from - op.Offset), (int)(to - from)).CopyTo(v.AsSpan((int)(from - bStart)));
                else
                    v.AsSpan((int)(from - bStart), (int)(to - from)).Clear();
                bool zero = !v.AsSpan().ContainsAnyExcept((byte)0);
                if (zero) current.Remove(blk); else current[blk] = v;
                touched.Add(blk);
                if (after)
                {
                    if (!expect.Later.TryGetValue(blk, out var list)) expect.Later[blk] = list = new();
                    list.Add((op.Index, zero ? null : v));
                }
            }
        }
    }

    /// <summary>Reopens the store, checks every block against the expectation, runs the consistency check, and makes what it read the next baseline.</summary>
    private int VerifyAndAdopt(string storeDir, Expectation expect, Dictionary<long, byte[]> baseline, string ctx)
    {
        var log = new ListLoggerFactory();
        using var store = VolumeStore.Open(storeDir, new StoreOptions { CreateIfMissing = false, LoggerFactory = log });
        using var vol = store.OpenVolume(CrashWorkload.VolumeName);
        Assert.Equal(CrashWorkload.VolumeSizeBytes, vol.SizeBytes);
        ctx += "\n  recovery: " + string.Join("\n  recovery: ", log.Lines);
        baseline.Clear();
        int newer = 0;
        var chunk = new byte[1 << 20];
        for (long off = 0; off < CrashWorkload.VolumeSizeBytes; off += chunk.Length)
        {
            vol.Read(off, chunk);
            for (int i = 0; i < chunk.Length; i += B)
            {
                long blk = (off + i) / B;
                var actual = chunk.AsSpan(i, B);
                bool zero = !actual.ContainsAnyExcept((byte)0);
                var durable = expect.Durable.GetValueOrDefault(blk);
                bool ok = durable is null ? zero : actual.SequenceEqual(durable);
                if (!ok && expect.Later.TryGetValue(blk, out var later))
                {
                    foreach (var (_, v) in later)
                        if (v is null ? zero : actual.SequenceEqual(v)) { ok = true; newer++; break; }
                }
                if (!ok)
                {
                    string versions = expect.Later.TryGetValue(blk, out var l)
                        ? string.Join(", ", l.Select(x => $"op {x.Op}: {(x.Content is null ? "zeros" : CrashWorkload.Describe(x.Content))}"))
                        : "none";
                    Assert.Fail($"{ctx}: block {blk} reads {CrashWorkload.Describe(actual)}; durable content is "
                        + $"{(durable is null ? "zeros" : CrashWorkload.Describe(durable))}; versions since the last flush: {versions}");
                }
                if (!zero) baseline[blk] = actual.ToArray();
            }
        }
        var report = store.Check(verifyChecksums: true);
        Assert.True(report.Ok, $"{ctx}: consistency check failed:\n  {string.Join("\n  ", report.Problems)}");
        return newer;
    }
}
