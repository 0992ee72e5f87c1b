using System.Text;
using Platter.CrashWorker;
using Platter.Storage;

// Usage: Platter.CrashWorker STOREDIR SEED LOGFILE [SECONDSMAX]
// Runs the seeded crash workload against STOREDIR until it is killed (or SECONDSMAX passes, so that a
// worker orphaned by a dead test run does not run forever).
if (args.Length < 3)
{
    Console.Error.WriteLine("usage: Platter.CrashWorker STOREDIR SEED LOGFILE [SECONDSMAX]");
    return 2;
}
string storeDir = args[0];
int seed = int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture);
string logPath = args[2];
double secondsMax = args.Length > 3 ? double.Parse(args[3], System.Globalization.CultureInfo.InvariantCulture) : 60;

// The log only has to survive the death of this process, not of the machine: a write(2) puts it in the
// page cache, which SIGKILL does not touch, so no fsync is needed (and none would slow the workload).
using var log = new FileStream(logPath, FileMode.Append, FileAccess.Write, FileShare.Read, bufferSize: 1);
void Log(string line)
{
    log.Write(Encoding.ASCII.GetBytes(line + "\n"));
    log.Flush(flushToDisk: false);
}

var options = new StoreOptions
{
    CreateIfMissing = false,
    CommitIntervalMax = CrashWorkload.CommitInterval(seed),
    DataGrowthBytes = 1L << 20,
};
using var store = VolumeStore.Open(storeDir, options);
using var volume = store.OpenVolume(CrashWorkload.VolumeName);
Log(CrashWorkload.OpenedLine);

var buffer = new byte[4 * CrashWorkload.BlockSize + 200];
var deadline = DateTime.UtcNow.AddSeconds(secondsMax);
foreach (var op in CrashWorkload.Ops(seed))
{
    if ((op.Index & 63) == 0 && DateTime.UtcNow > deadline) break;
    if (op.Kind == CrashWorkload.OpKind.Flush)
    {
        await volume.FlushAsync();
        Log(CrashWorkload.FlushedPrefix + op.Index.ToString(System.Globalization.CultureInfo.InvariantCulture));
        continue;
    }
    Log(CrashWorkload.IntentPrefix + op.Index.ToString(System.Globalization.CultureInfo.InvariantCulture));
    switch (op.Kind)
    {
        case CrashWorkload.OpKind.Write:
            if (buffer.Length < op.Length) buffer = new byte[op.Length];
            var data = buffer.AsSpan(0, op.Length);
            CrashWorkload.Content(seed, op.Index, op.Offset, data);
            volume.Write(op.Offset, data);
            break;
        case CrashWorkload.OpKind.Trim:
            volume.Trim(op.Offset, op.Length);
            break;
        case CrashWorkload.OpKind.WriteZeroes:
            volume.WriteZeroes(op.Offset, op.Length);
            break;
    }
}
Log("done");
return 0;
