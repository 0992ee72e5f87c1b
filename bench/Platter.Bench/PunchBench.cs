using System.Diagnostics;
using Platter.Storage;

// How much a large delete delays flushes (issue 12): the deleted volume's space goes back to the file system
// (fallocate PUNCH_HOLE). One store holds a volume written sequentially (--big-gib, default 1) and a small one; a
// client does 4 KiB write + flush on the small volume in a loop, each flush timed. The big volume is deleted while it
// runs; the flush latencies of the seconds before and after the delete are compared, and the time until the data file's
// allocated size (du) is back near what the small volume holds. Run it against two builds to compare them.
//
// Usage: Platter.Bench --punch [--dir DIR] [--big-gib 1] [--seconds 4]
internal static class PunchBench
{
    private const int MiB = 1 << 20;

    public static int Run(string[] args)
    {
        string dir = Path.Combine(Path.GetTempPath(), "platter-punchbench");
        long bigBytes = 1L << 30;
        double seconds = 4;
        for (int i = 1; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--dir": dir = args[++i]; break;
                case "--big-gib": bigBytes = long.Parse(args[++i]) << 30; break;
                case "--seconds": seconds = double.Parse(args[++i]); break;
                default: throw new ArgumentException($"unknown argument {args[i]}; see the header of bench/Platter.Bench/PunchBench.cs");
            }
        }
        if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
        Console.WriteLine($"# Platter punch benchmark: delete of a {bigBytes >> 20} MiB volume under 4K write+flush, store {dir}, load {File.ReadAllText("/proc/loadavg").Trim()}");

        using var store = VolumeStore.Open(dir);
        store.CreateVolume("big", bigBytes);
        using (var big = store.OpenVolume("big"))
        {
            var buffer = new byte[MiB];
            new Random(1).NextBytes(buffer);
            for (long at = 0; at < bigBytes; at += MiB) big.Write(at, buffer);
            big.FlushAsync().AsTask().GetAwaiter().GetResult();
        }
        store.CreateVolume("small", 64L * MiB);
        using var small = store.OpenVolume("small");
        string dataFile = Path.Combine(dir, "data");
        if (!File.Exists(dataFile)) dataFile = Directory.GetFiles(dir).OrderByDescending(f => new FileInfo(f).Length).First();

        var before = FlushLatencies(small, seconds, deleteAfter: null, store);
        long allocatedBefore = AllocatedBytes(dataFile);
        var deleted = Stopwatch.StartNew();
        var after = FlushLatencies(small, seconds, deleteAfter: TimeSpan.FromMilliseconds(200), store);
        Print("before the delete", before);
        Print("after the delete ", after);
        // Until du shows the space back (within 64 MiB of what is still in use), at most 60 s.
        long target = allocatedBefore - bigBytes + 64L * MiB;
        while (AllocatedBytes(dataFile) > target && deleted.Elapsed < TimeSpan.FromSeconds(60)) Thread.Sleep(20);
        Console.WriteLine($"data file allocated {allocatedBefore / MiB} MiB before, {AllocatedBytes(dataFile) / MiB} MiB {deleted.Elapsed.TotalSeconds:0.00} s after the delete began");
        return 0;
    }

    private static List<double> FlushLatencies(Volume volume, double seconds, TimeSpan? deleteAfter, VolumeStore store)
    {
        var latencies = new List<double>();
        var block = new byte[4096];
        var clock = Stopwatch.StartNew();
        Task? delete = null;
        long at = 0;
        while (clock.Elapsed.TotalSeconds < seconds)
        {
            if (deleteAfter is { } when && delete is null && clock.Elapsed >= when) delete = Task.Run(() => store.DeleteVolume("big"));
            block[0]++;
            volume.Write(at, block);
            at = (at + 4096) % (64L * MiB);
            var t = Stopwatch.GetTimestamp();
            volume.FlushAsync().AsTask().GetAwaiter().GetResult();
            latencies.Add(Stopwatch.GetElapsedTime(t).TotalMilliseconds);
        }
        delete?.GetAwaiter().GetResult();
        return latencies;
    }

    private static void Print(string what, List<double> latencies)
    {
        var sorted = latencies.Order().ToList();
        double P(double q) => sorted[Math.Min(sorted.Count - 1, (int)(q * sorted.Count))];
        Console.WriteLine($"flush latency {what}: {sorted.Count} flushes, p50 {P(0.5):0.00} ms, p99 {P(0.99):0.00} ms, max {sorted[^1]:0.00} ms");
    }

    // st_blocks * 512, as du reports: the bytes the file system holds for the file.
    private static long AllocatedBytes(string path)
    {
        var psi = new ProcessStartInfo("du", ["--block-size=1", path]) { RedirectStandardOutput = true };
        using var du = Process.Start(psi)!;
        string output = du.StandardOutput.ReadToEnd();
        du.WaitForExit();
        return long.Parse(output.Split('\t')[0]);
    }
}
