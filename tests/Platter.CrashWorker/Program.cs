using System.Text;
using Platter.CrashWorker;
using Platter.Storage;

// Usage: Platter.CrashWorker STOREDIR SEED LOGFILE [SECONDSMAX [volume|snapshots|reclaim]]
// Runs the seeded crash workload against STOREDIR until it is killed (or SECONDSMAX passes, so that a
// worker orphaned by a dead test run does not run forever). "volume" (the default) writes to one volume
// from several threads (CrashWorkload); "snapshots" mixes writes with snapshot, clone, rollback and delete
// operations on several volumes, "reclaim" deletes snapshots of one big volume so that reclaim runs in the
// background (SnapshotWorkload).
if (args.Length < 3 || (args.Length > 4 && args[4] is not ("volume" or "snapshots" or "reclaim")))
{
    Console.Error.WriteLine("usage: Platter.CrashWorker STOREDIR SEED LOGFILE [SECONDSMAX [volume|snapshots|reclaim]]");
    return 2;
}
string storeDir = args[0];
int seed = int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture);
string logPath = args[2];
double secondsMax = args.Length > 3 ? double.Parse(args[3], System.Globalization.CultureInfo.InvariantCulture) : 60;
string mode = args.Length > 4 ? args[4] : "volume";

// The log only has to survive the death of this process, not of the machine: a write(2) puts it in the
// page cache, which SIGKILL does not touch, so no fsync is needed (and none would slow the workload).
using var log = new FileStream(logPath, FileMode.Append, FileAccess.Write, FileShare.Read, bufferSize: 1);
var logLock = new object();
void Log(string line)
{
    var bytes = Encoding.ASCII.GetBytes(line + "\n");
    lock (logLock)
    {
        log.Write(bytes);
        log.Flush(flushToDisk: false);
    }
}

// In "reclaim" mode every background reclaim is logged at its start and end, and its end is held back a seeded
// 5-30 ms after it has handed its blocks over and nudged the committer (a reclaim of the bulk volume otherwise takes
// a few milliseconds): kills aimed at a logged start land while the reclaim walks the maps or while its frees go
// through commit, quarantine and reuse by the writes that continue; the test counts those before the end line.
int reclaimHoldMs = new Random(seed).Next(5, 31);
var options = new StoreOptions
{
    CreateIfMissing = false,
    CommitIntervalMax = CrashWorkload.CommitInterval(seed),
    DataGrowthBytes = 1L << 20,
    BackgroundReclaimForTests = mode != "reclaim" ? null : started =>
    {
        if (!started) Thread.Sleep(reclaimHoldMs);
        Log(started ? CrashWorkload.ReclaimStartedLine : CrashWorkload.ReclaimEndedLine);
    },
};
using var store = VolumeStore.Open(storeDir, options);
var deadline = DateTime.UtcNow.AddSeconds(secondsMax);
if (mode != "volume") return await SnapshotRunner.RunAsync(store, seed, mode, Log, deadline);

using var volume = store.OpenVolume(CrashWorkload.VolumeName);
Log(CrashWorkload.OpenedLine);

int threads = CrashWorkload.Threads(seed);
var workers = Enumerable.Range(0, threads).Select(t => Task.Run(async () =>
{
    var buffer = new byte[4 * CrashWorkload.BlockSize + 200];
    string prefix = t.ToString(System.Globalization.CultureInfo.InvariantCulture) + " ";
    foreach (var op in CrashWorkload.Ops(seed, t))
    {
        if ((op.Index & 63) == 0 && DateTime.UtcNow > deadline) break;
        string index = op.Index.ToString(System.Globalization.CultureInfo.InvariantCulture);
        if (op.Kind == CrashWorkload.OpKind.Flush)
        {
            await volume.FlushAsync();
            Log(CrashWorkload.FlushedPrefix + prefix + index);
            continue;
        }
        Log(CrashWorkload.IntentPrefix + prefix + index);
        switch (op.Kind)
        {
            case CrashWorkload.OpKind.Write:
                if (buffer.Length < op.Length) buffer = new byte[op.Length];
                CrashWorkload.Content(seed, t, op.Index, op.Offset, buffer.AsSpan(0, op.Length));
                volume.Write(op.Offset, buffer.AsSpan(0, op.Length));
                break;
            case CrashWorkload.OpKind.Trim:
                volume.Trim(op.Offset, op.Length);
                break;
            case CrashWorkload.OpKind.WriteZeroes:
                volume.WriteZeroes(op.Offset, op.Length);
                break;
        }
        Log(CrashWorkload.AcknowledgedPrefix + prefix + index);
    }
})).ToArray();
await Task.WhenAll(workers);
Log("done");
return 0;
