using System.Diagnostics;
using Platter.Storage;

// In-process engine benchmark (no network): the numbers the engine must reach before NBD adds its own cost.
// Usage: dotnet run -c Release --project bench/Platter.Bench -- [--dir DIR] [--size-gib 4] [--seconds 10] [--threads 4] [--write-threads 32]
//        dotnet run -c Release --project bench/Platter.Bench -- --kv     (metadata store micro-benchmark)
//        dotnet run -c Release --project bench/Platter.Bench -- --snapshots [...]   (snapshot creation time, see SnapshotBench.cs)
//        dotnet run -c Release --project bench/Platter.Bench -- --punch [...]       (flush latency around a large delete, see PunchBench.cs)
//        dotnet run -c Release --project bench/Platter.Bench -- --maps build|open [...] (map RAM and open time, see MapBench.cs)
//        dotnet run -c Release --project bench/Platter.Bench -- --vhost-user [...]  (a vhost-user-blk front-end, see VhostUserBench.cs)
//        dotnet run -c Release --project bench/Platter.Bench -- --clones [...]      (4 KiB reads on clones against their origin, see CloneReadBench.cs)
//        dotnet run -c Release --project bench/Platter.Bench -- --metrics [...]     (CPU cost of counting a request, see MetricsBench.cs)
if (args.Length > 0 && args[0] == "--snapshots")
    return SnapshotBench.Run(args);
if (args.Length > 0 && args[0] == "--maps")
    return MapBench.Run(args);
if (args.Length > 0 && args[0] == "--vhost-user")
    return VhostUserBench.Run(args);
if (args.Length > 0 && args[0] == "--clones")
    return CloneReadBench.Run(args);
if (args.Length > 0 && args[0] == "--metrics" && OperatingSystem.IsLinux())
    return MetricsBench.Run(args);
if (args.Length > 0 && args[0] == "--punch")
    return PunchBench.Run(args);
if (args.Length > 0 && args[0] == "--kv")
{
    KvBench.Run(Path.Combine(Path.GetTempPath(), "platter-kvbench"), keys: 1_000_000);
    return 0;
}
var options = BenchOptions.Parse(args);
if (Directory.Exists(options.Directory)) Directory.Delete(options.Directory, recursive: true);
Console.WriteLine($"# Platter engine benchmark: {options.SizeBytes >> 30} GiB volume, {options.Seconds} s per workload, {options.Threads} threads ({options.WriteThreads} for random writes), store {options.Directory}");
Console.WriteLine($"# {Environment.ProcessorCount} cores, .NET {Environment.Version}, {System.Runtime.InteropServices.RuntimeInformation.OSDescription}");

using var store = VolumeStore.Open(options.Directory);
store.CreateVolume("bench", options.SizeBytes);
using var volume = store.OpenVolume("bench");

Report("seq-write 1M", SequentialWrite(volume, options), 1 << 20);
Report("seq-read 1M", Run(options, 1 << 20, (v, buf, rnd, i, pos) => v.Read(pos, buf), sequential: true, volume), 1 << 20);
Report("rand-read 4K", Run(options, 4096, (v, buf, rnd, i, pos) => v.Read(pos, buf), sequential: false, volume), 4096);
Report("rand-write 4K, flush/32", RandomWritesWithFlushes(volume, options), 4096);
Report("rand-read 4K after random writes", Run(options, 4096, (v, buf, rnd, i, pos) => v.Read(pos, buf), sequential: false, volume), 4096);
var c = store.Counters;
Console.WriteLine($"# committer: {c.RoundMicros / 1000} ms in rounds, {c.SyncMicros / 1000} ms syncing, {c.CheckpointMicros / 1000} ms checkpointing");
Console.WriteLine($"# commits {c.Commits}: sync avg {c.SyncMicros / Math.Max(1, c.Commits)} us; checkpoints {c.Checkpoints}: avg {c.CheckpointMicros / Math.Max(1, c.Checkpoints) / 1000} ms");
var check = store.Check(verifyChecksums: false);
Console.WriteLine($"# check: {(check.Ok ? "ok" : string.Join("; ", check.Problems))}; {check.ExtentRecords} extent records for {check.MappedBlocks} blocks; commits {store.Counters.Commits}, checkpoints {store.Counters.Checkpoints}");
Directory.Delete(options.Directory, recursive: true);
return 0;

static void Report(string name, (long Ops, double Seconds) r, int bytes)
{
    double iops = r.Ops / r.Seconds;
    Console.WriteLine($"{name,-34} {iops,12:N0} IOPS {iops * bytes / 1e6,10:N1} MB/s");
}

// Fills the whole volume once, sequentially, with a flush at the end (so reads later hit real data).
static (long, double) SequentialWrite(Volume volume, BenchOptions o)
{
    var buf = new byte[1 << 20];
    Random.Shared.NextBytes(buf);
    var sw = Stopwatch.StartNew();
    long ops = 0;
    for (long pos = 0; pos < volume.SizeBytes; pos += buf.Length, ops++)
        volume.Write(pos, buf);
    volume.FlushAsync().AsTask().GetAwaiter().GetResult();
    return (ops, sw.Elapsed.TotalSeconds);
}

// Random 4 KiB writes from WriteThreads concurrent tasks, each awaiting a flush after every 32 writes: the shape of
// an NBD client at queue depth 32 (writes complete inline, flushes are awaited as the server awaits them).
static (long, double) RandomWritesWithFlushes(Volume volume, BenchOptions o)
{
    long blocks = volume.SizeBytes / 4096;
    long total = 0;
    var clock = Stopwatch.StartNew();
    var tasks = Enumerable.Range(0, o.WriteThreads).Select(t => Task.Run(async () =>
    {
        var rnd = new Random(t + 100);
        var buf = new byte[4096];
        rnd.NextBytes(buf);
        long done = 0;
        while (clock.Elapsed.TotalSeconds < o.Seconds)
        {
            for (int i = 0; i < 32; i++) volume.Write(rnd.NextInt64(blocks) * 4096, buf);
            await volume.FlushAsync();
            done += 32;
        }
        Interlocked.Add(ref total, done);
    })).ToArray();
    Task.WaitAll(tasks);
    return (total, clock.Elapsed.TotalSeconds);
}

static (long, double) Run(BenchOptions o, int blockBytes, Action<Volume, byte[], Random, long, long> op, bool sequential, Volume volume)
{
    int threadCount = o.Threads;
    long blocks = volume.SizeBytes / blockBytes;
    long total = 0;
    var deadline = Stopwatch.StartNew();
    var threads = Enumerable.Range(0, threadCount).Select(t => new Thread(() =>
    {
        var rnd = new Random(t + 1);
        var buf = new byte[blockBytes];
        rnd.NextBytes(buf);
        long i = 0;
        long seq = t * (blocks / threadCount);
        while (deadline.Elapsed.TotalSeconds < o.Seconds)
        {
            long pos = sequential ? (seq++ % blocks) * blockBytes : rnd.NextInt64(blocks) * blockBytes;
            op(volume, buf, rnd, i++, pos);
        }
        Interlocked.Add(ref total, i);
    })).ToList();
    threads.ForEach(t => t.Start());
    threads.ForEach(t => t.Join());
    return (total, deadline.Elapsed.TotalSeconds);
}

// Threads: readers and sequential writers (the machine has 2 cores). WriteThreads: concurrent random writers, each
// flushing every 32 writes; like a queue depth of 32 it lets group commit share each sync among many flushes.
internal sealed record BenchOptions(string Directory, long SizeBytes, double Seconds, int Threads, int WriteThreads)
{
    public static BenchOptions Parse(string[] args)
    {
        string dir = Path.Combine(Path.GetTempPath(), "platter-bench");
        long size = 4L << 30;
        double seconds = 10;
        int threads = 4;
        int writeThreads = 32;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--dir": dir = args[++i]; break;
                case "--size-gib": size = long.Parse(args[++i]) << 30; break;
                case "--seconds": seconds = double.Parse(args[++i]); break;
                case "--threads": threads = int.Parse(args[++i]); break;
                case "--write-threads": writeThreads = int.Parse(args[++i]); break;
                default: throw new ArgumentException($"unknown argument {args[i]}; see the header of bench/Platter.Bench/Program.cs");
            }
        }
        return new BenchOptions(dir, size, seconds, threads, writeThreads);
    }
}
