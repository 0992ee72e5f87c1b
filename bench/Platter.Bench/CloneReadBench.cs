using System.Diagnostics;
using Platter.Storage;

// Reads on clones against reads on their origin, in-process (issue 15, target 6): one store holds a base volume
// written sequentially and a chain of clones (c1 = clone of base@s, c2 = clone of c1@s, ... to --depth), each with
// 1/32 of the volume rewritten by 4 KiB random writes, as bench/snapshots.sh builds it. Then 4 KiB random reads on one
// thread against base, c1 and c<depth>, interleaved for --rounds rounds (order rotated), each target read whole first
// so its blocks are in the page cache. Reports reads per second and the process's CPU per read (user + system: the map
// lookup, the checksum and the pread), and per-round ratios; the engine has no network here, so what remains is the
// read path itself.
//
// Usage: Platter.Bench --clones [--dir DIR] [--size-mib 512] [--depth 16] [--rounds 5] [--seconds 3]
internal static class CloneReadBench
{
    public static int Run(string[] args)
    {
        string dir = Path.Combine(Path.GetTempPath(), "platter-clonebench");
        long size = 512L << 20;
        int depth = 16, rounds = 5;
        double seconds = 3;
        for (int i = 1; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--dir": dir = args[++i]; break;
                case "--size-mib": size = long.Parse(args[++i]) << 20; break;
                case "--depth": depth = int.Parse(args[++i]); break;
                case "--rounds": rounds = int.Parse(args[++i]); break;
                case "--seconds": seconds = double.Parse(args[++i]); break;
                default: throw new ArgumentException($"unknown argument {args[i]}; see the header of bench/Platter.Bench/CloneReadBench.cs");
            }
        }
        if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
        Console.WriteLine($"# Platter clone read benchmark: {size >> 20} MiB, depth {depth}, {rounds} rounds of {seconds} s, store {dir}");
        using var store = VolumeStore.Open(dir);
        store.CreateVolume("base", size);
        var buffer = new byte[1 << 20];
        new Random(1).NextBytes(buffer);
        using (var v = store.OpenVolume("base"))
        {
            for (long at = 0; at < size; at += buffer.Length) v.Write(at, buffer);
            v.FlushAsync().AsTask().GetAwaiter().GetResult();
        }
        string prev = "base";
        var rng = new Random(2);
        var block = new byte[4096];
        long blocks = size / 4096;
        for (int k = 1; k <= depth; k++)
        {
            store.CreateSnapshot(prev, "s");
            store.CloneSnapshot(prev, "s", $"c{k}");
            using var c = store.OpenVolume($"c{k}");
            for (long n = 0; n < blocks / 32; n++)
            {
                rng.NextBytes(block);
                c.Write(rng.NextInt64(blocks) * 4096, block);
            }
            c.FlushAsync().AsTask().GetAwaiter().GetResult();
            prev = $"c{k}";
        }
        string[] targets = ["base", "c1", $"c{depth}"];
        var results = new Dictionary<string, List<(double Rate, double CpuNs)>>();
        foreach (var t in targets) results[t] = new();
        for (int r = 0; r < rounds; r++)
        {
            for (int i = 0; i < targets.Length; i++)
            {
                string t = targets[(i + r) % targets.Length];
                using var v = store.OpenVolume(t);
                for (long at = 0; at < size; at += buffer.Length) v.Read(at, buffer); // into the page cache
                var read = new Random(3 + r);
                var proc = Process.GetCurrentProcess();
                var cpu0 = proc.TotalProcessorTime;
                var sw = Stopwatch.StartNew();
                long reads = 0;
                while (sw.Elapsed.TotalSeconds < seconds)
                {
                    for (int n = 0; n < 1024; n++) v.Read(read.NextInt64(blocks) * 4096, block);
                    reads += 1024;
                }
                double elapsed = sw.Elapsed.TotalSeconds;
                proc.Refresh();
                double cpuNs = (proc.TotalProcessorTime - cpu0).TotalMilliseconds * 1e6 / reads;
                results[t].Add((reads / elapsed, cpuNs));
                Console.WriteLine($"round {r + 1} {t,-4} {reads / elapsed,12:N0} reads/s  {cpuNs,8:N0} ns CPU per read  load {File.ReadAllText("/proc/loadavg").Split(' ')[0]}");
            }
        }
        static double Median(IEnumerable<double> xs) { var a = xs.OrderBy(x => x).ToArray(); return a.Length % 2 == 1 ? a[a.Length / 2] : (a[a.Length / 2 - 1] + a[a.Length / 2]) / 2; }
        string deep = $"c{depth}";
        foreach (var (a, b) in new[] { ("c1", "base"), (deep, "c1") })
        {
            var rate = Enumerable.Range(0, rounds).Select(r => results[a][r].Rate / results[b][r].Rate).ToList();
            var cpu = Enumerable.Range(0, rounds).Select(r => results[b][r].CpuNs / results[a][r].CpuNs).ToList();
            Console.WriteLine($"{a} / {b}: reads/s median of per-round ratios {Median(rate):0.00} ({string.Join(", ", rate.Select(x => x.ToString("0.00")))}); " +
                              $"CPU per read, inverted, {Median(cpu):0.00} ({string.Join(", ", cpu.Select(x => x.ToString("0.00")))})");
        }
        return 0;
    }
}
