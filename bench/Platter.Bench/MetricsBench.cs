using System.Diagnostics;
using Platter.Server.Metrics;

// What counting one NBD request costs on the request path (issue 14: metrics at most 3% of throughput). The loop makes
// exactly the calls VolumeExport makes per request with metrics on (VolumeMetrics.Start when the request arrives, Done
// when it completes: two timestamps and three additions into the calling thread's own counters), reads and writes
// alternating, on the server's own PlatterMetrics registry; the same loop without them is the baseline. Rounds alternate
// baseline and metrics, on 1 thread and on 2 threads counting into the same export (two connections of one volume;
// before the counters were per thread, their interlocked updates fought over the same cache lines). The measure is the process's CPU time
// (user + system, so time spent descheduled by other jobs does not count) over the round divided by the requests.
// Divided by the server's CPU per request (bench/metrics-ab.py measures it), this bounds the throughput metrics cost a
// CPU-bound server.
//
// Usage: Platter.Bench --metrics [--rounds 10] [--requests 4000000]
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
internal static class MetricsBench
{
    public static int Run(string[] args)
    {
        int rounds = 10;
        long requests = 4_000_000;
        for (int i = 1; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--rounds": rounds = int.Parse(args[++i]); break;
                case "--requests": requests = long.Parse(args[++i]); break;
                default: throw new ArgumentException($"unknown argument {args[i]}; see the header of bench/Platter.Bench/MetricsBench.cs");
            }
        }
        var metrics = new PlatterMetrics().ForVolume("bench");
        Console.WriteLine($"# metrics cost per request: {rounds} rounds of {requests:N0} requests per thread, load {File.ReadAllText("/proc/loadavg").Trim()}");
        Console.WriteLine("| threads | round | baseline ns/request (CPU) | with metrics | cost ns/request |");
        Console.WriteLine("|---|---|---|---|---|");
        foreach (int threads in new[] { 1, 2 })
        {
            Measure(threads, requests / 10, metrics, counted: true); // warm-up: tiered JIT, first-use of the children
            Measure(threads, requests / 10, metrics, counted: false);
            var costs = new List<double>();
            for (int r = 1; r <= rounds; r++)
            {
                // Alternate which goes first, in case the machine's load drifts within a round.
                double baseline, counted;
                if (r % 2 == 1)
                {
                    baseline = Measure(threads, requests, metrics, counted: false);
                    counted = Measure(threads, requests, metrics, counted: true);
                }
                else
                {
                    counted = Measure(threads, requests, metrics, counted: true);
                    baseline = Measure(threads, requests, metrics, counted: false);
                }
                costs.Add(counted - baseline);
                Console.WriteLine($"| {threads} | {r} | {baseline:F1} | {counted:F1} | {counted - baseline:F1} |");
            }
            costs.Sort();
            Console.WriteLine($"# {threads} thread(s): cost median {costs[costs.Count / 2]:F1} ns/request, range {costs[0]:F1}–{costs[^1]:F1}");
        }
        Console.WriteLine($"# load at the end {File.ReadAllText("/proc/loadavg").Trim()}");
        return 0;
    }

    // CPU nanoseconds per request of `threads` threads doing `requests` requests each.
    private static double Measure(int threads, long requests, VolumeMetrics metrics, bool counted)
    {
        using var process = Process.GetCurrentProcess();
        var cpuBefore = process.TotalProcessorTime;
        var workers = new Thread[threads];
        long sink = 0;
        for (int t = 0; t < threads; t++)
        {
            workers[t] = new Thread(() => Interlocked.Add(ref sink, counted ? Counted(metrics, requests) : Baseline(requests)));
            workers[t].Start();
        }
        foreach (var w in workers) w.Join();
        process.Refresh();
        GC.KeepAlive(sink);
        return (process.TotalProcessorTime - cpuBefore).TotalNanoseconds / (threads * requests);
    }

    // What VolumeExport does per request with metrics on.
    private static long Counted(VolumeMetrics metrics, long requests)
    {
        long sum = 0;
        for (long i = 0; i < requests; i++)
        {
            long start = VolumeMetrics.Start();
            metrics.Done((i & 1) == 0 ? VolumeOp.Read : VolumeOp.Write, 4096, start);
            sum += i;
        }
        return sum;
    }

    // The same loop with metrics off (VolumeExport then skips both calls).
    private static long Baseline(long requests)
    {
        long sum = 0;
        for (long i = 0; i < requests; i++)
            sum += i;
        return sum;
    }
}
