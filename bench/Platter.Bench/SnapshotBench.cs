using System.Diagnostics;
using System.Text.Json;
using Platter.Storage;

// Snapshot creation time in-process (issue 4): is CreateSnapshot O(1) in the size of the volume's map?
//
// One store holds a 1 GiB volume written full and a 64 GiB volume, written full when the disk has room (--big-pattern
// full) or else with 4 KiB in every 64 KiB (--big-pattern sparse): 4 GiB of data, but every 1 MiB of the map (every
// leaf of the engine's radix tree) populated and 1,048,576 separate extents, a larger map than the full volume's
// 65,536 one-MiB extents. Snapshots are then taken alternately of the two volumes, each after a few random 4 KiB
// writes and a flush (untimed), so every snapshot freezes a map that changed since the previous one; only the
// CreateSnapshot call is timed. The snapshots are kept (the count grows as in real use) and deleted at the end (timed
// too). With --keep the store stays, so bench/snapshots.sh can serve it and time `platter snapshot create` end to end.
//
// Usage: Platter.Bench --snapshots [--dir DIR] [--runs 15] [--small-gib 1] [--big-gib 64] [--big-pattern full|sparse]
//                      [--json FILE] [--keep]
internal static class SnapshotBench
{
    private const int MiB = 1 << 20;

    public static int Run(string[] args)
    {
        string dir = Path.Combine(Path.GetTempPath(), "platter-snapbench");
        int runs = 15;
        long smallBytes = 1L << 30, bigBytes = 64L << 30;
        string bigPattern = "sparse";
        string? jsonPath = null;
        bool keep = false;
        for (int i = 1; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--dir": dir = args[++i]; break;
                case "--runs": runs = int.Parse(args[++i]); break;
                case "--small-gib": smallBytes = long.Parse(args[++i]) << 30; break;
                case "--big-gib": bigBytes = long.Parse(args[++i]) << 30; break;
                case "--big-pattern": bigPattern = args[++i]; break;
                case "--json": jsonPath = args[++i]; break;
                case "--keep": keep = true; break;
                default: throw new ArgumentException($"unknown argument {args[i]}; see the header of bench/Platter.Bench/SnapshotBench.cs");
            }
        }
        if (bigPattern is not ("full" or "sparse")) throw new ArgumentException("--big-pattern is full or sparse");
        if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);

        Console.WriteLine($"# Platter snapshot creation benchmark: store {dir}, {runs} snapshots per volume");
        Console.WriteLine($"# {Environment.ProcessorCount} cores, .NET {Environment.Version}, {System.Runtime.InteropServices.RuntimeInformation.OSDescription}");

        var volumes = new List<Subject>
        {
            new("snap-small", smallBytes, "full"),
            new("snap-big", bigBytes, bigPattern),
        };
        using (var store = VolumeStore.Open(dir))
        {
            foreach (var s in volumes)
            {
                store.CreateVolume(s.Name, s.SizeBytes);
                using var v = store.OpenVolume(s.Name);
                var sw = Stopwatch.StartNew();
                Fill(v, s.Pattern);
                Console.WriteLine($"# {s.Name}: {s.SizeBytes >> 30} GiB, {s.Pattern}, filled in {sw.Elapsed.TotalSeconds:F1} s");
            }
            // Map sizes as the store's own consistency check counts them (before any snapshot, so counted once).
            var check = store.Check(verifyChecksums: false);
            Console.WriteLine($"# check: {(check.Ok ? "ok" : string.Join("; ", check.Problems))}; {check.ExtentRecords} extent records for {check.MappedBlocks} mapped blocks in both volumes");
            foreach (var s in volumes) s.AllocatedBytes = store.GetVolumeInfo(s.Name).AllocatedBytes!.Value; // the engine always counts it

            var handles = volumes.ToDictionary(s => s.Name, s => store.OpenVolume(s.Name));
            var rnd = new Random(4);
            var block = new byte[4096];
            // Warm-up snapshot per volume (JIT, first catalog writes), not reported.
            foreach (var s in volumes) { store.CreateSnapshot(s.Name, "warmup"); store.DeleteSnapshot(s.Name, "warmup"); }
            for (int r = 0; r < runs; r++)
            {
                // Alternate which volume goes first, so a drift of the machine does not land on one of them.
                foreach (var s in r % 2 == 0 ? volumes : Enumerable.Reverse(volumes))
                {
                    var v = handles[s.Name];
                    for (int i = 0; i < 16; i++)
                    {
                        rnd.NextBytes(block);
                        v.Write(rnd.NextInt64(s.SizeBytes / 4096) * 4096, block);
                    }
                    v.FlushAsync().AsTask().GetAwaiter().GetResult();
                    var sw = Stopwatch.StartNew();
                    store.CreateSnapshot(s.Name, $"s{r}");
                    s.CreateMs.Add(sw.Elapsed.TotalMilliseconds);
                }
            }
            foreach (var s in volumes)
            {
                s.SnapshotsListed = store.ListSnapshots(s.Name).Count;
                for (int r = 0; r < runs; r++)
                {
                    var sw = Stopwatch.StartNew();
                    store.DeleteSnapshot(s.Name, $"s{r}");
                    s.DeleteMs.Add(sw.Elapsed.TotalMilliseconds);
                }
            }
            foreach (var h in handles.Values) h.Dispose();
        }

        Console.WriteLine($"{"volume",-12} {"size",8} {"pattern",-7} {"allocated",12} {"create ms p50",14} {"min",8} {"max",8} {"delete ms p50",14}");
        foreach (var s in volumes)
            Console.WriteLine($"{s.Name,-12} {s.SizeBytes >> 30,6}Gi {s.Pattern,-7} {s.AllocatedBytes >> 20,10}Mi {Median(s.CreateMs),14:F3} {s.CreateMs.Min(),8:F3} {s.CreateMs.Max(),8:F3} {Median(s.DeleteMs),14:F3}");
        if (jsonPath != null)
        {
            using var f = File.Create(jsonPath);
            JsonSerializer.Serialize(f, volumes.Select(s => new
            {
                name = s.Name, size_bytes = s.SizeBytes, pattern = s.Pattern, allocated_bytes = s.AllocatedBytes,
                snapshots_listed = s.SnapshotsListed, create_ms = s.CreateMs, delete_ms = s.DeleteMs,
            }));
        }
        if (!keep) Directory.Delete(dir, recursive: true);
        return 0;
    }

    // full: the whole volume in 1 MiB sequential writes. sparse: 4 KiB at the start of every 64 KiB, 64 KiB apart
    // so no two writes merge into one extent; every MiB of the address space gets 16 of them.
    private static void Fill(Volume v, string pattern)
    {
        var rnd = new Random(1);
        var buf = new byte[2 * MiB];
        rnd.NextBytes(buf);
        long flushEvery = 256L * MiB, sinceFlush = 0;
        int step = pattern == "full" ? MiB : 64 * 1024;
        int length = pattern == "full" ? MiB : 4096;
        for (long pos = 0; pos < v.SizeBytes; pos += step)
        {
            // Different data in every write (a cheap rotation of the buffer), so nothing could be deduplicated.
            int shift = (int)(pos / step * 4099 % MiB);
            v.Write(pos, buf.AsSpan(shift, length));
            sinceFlush += step;
            // Flush now and then, as a client would, so the engine's pending operations stay bounded.
            if (sinceFlush >= flushEvery) { v.FlushAsync().AsTask().GetAwaiter().GetResult(); sinceFlush = 0; }
        }
        v.FlushAsync().AsTask().GetAwaiter().GetResult();
    }

    private static double Median(List<double> xs)
    {
        var s = xs.Order().ToArray();
        return s.Length == 0 ? double.NaN : s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
    }

    private sealed class Subject(string name, long sizeBytes, string pattern)
    {
        public string Name { get; } = name;
        public long SizeBytes { get; } = sizeBytes;
        public string Pattern { get; } = pattern;
        public long AllocatedBytes { get; set; }
        public int SnapshotsListed { get; set; }
        public List<double> CreateMs { get; } = new();
        public List<double> DeleteMs { get; } = new();
    }
}
