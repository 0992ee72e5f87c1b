using System.Diagnostics;
using Platter.Storage;
using Platter.Storage.Internal;

// Map memory and open time (issue 15, targets 4 and 5): what a store costs in RAM per TiB mapped, and how long it
// takes to open and serve its first read, as the number of extent records grows.
//
// `--maps build` makes a synthetic store: one volume whose extent records are checkpointed straight into the metadata
// store (as the committer would), pointing at a sparse data file of the right length. Every block is a hole that
// reads as zeros, and every record carries the CRC32C of a zero block, so reads verify like real data. The metadata
// is exactly what a store with that much data holds; only the data is not on the disk.
//   --layout sequential: records of 256 blocks (1 MiB) side by side, the map of a volume written sequentially;
//   --layout sparse:     one 4 KiB block in every 64 KiB, each its own record (the worst case per byte mapped).
// `--maps open` opens the store in this (fresh) process, reads the first mapped block and the last, and reports the
// open time, the time to the first read, and the process's RSS and managed heap before and after. With
// `--map-cache BYTES` (old name `--map-checksum-cache`, which older trees know) the store opens with that budget for its
// map cache (decisions 0013, 0019; the default is the engine's); the heap is then also given without what the cache
// holds (the rest is what grows with the map whatever the budget).
// With `--reads N` it then times N random 4 KiB reads of mapped blocks (one thread), first spread over the whole
// volume (with a budget smaller than the map, most of them rebuild their leaf, or fetch its CRCs, from LMDB) and then
// within the first 64 MiB (leaves that stay cached: what paging costs warm reads), printing microseconds per read, and
// then 50 N lookups of the volume's map alone (the read path's lookup without its I/O and checksum), in nanoseconds.
//
// Usage: Platter.Bench --maps build --dir DIR --extents N [--layout sequential|sparse]
//        Platter.Bench --maps open --dir DIR [--map-cache BYTES] [--reads N]
internal static class MapBench
{
    private const int BatchOps = 100_000;

    public static int Run(string[] args)
    {
        string mode = args.Length > 1 ? args[1] : throw new ArgumentException("--maps build|open");
        string dir = Path.Combine(Path.GetTempPath(), "platter-mapbench");
        long extents = 1_000_000;
        string layout = "sparse";
        long? budget = null;
        int reads = 0;
        for (int i = 2; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--dir": dir = args[++i]; break;
                case "--extents": extents = long.Parse(args[++i]); break;
                case "--layout": layout = args[++i]; break;
                case "--map-cache" or "--map-checksum-cache": budget = long.Parse(args[++i]); break;
                case "--reads": reads = int.Parse(args[++i]); break;
                default: throw new ArgumentException($"unknown argument {args[i]}; see the header of bench/Platter.Bench/MapBench.cs");
            }
        }
        if (layout is not ("sequential" or "sparse")) throw new ArgumentException("--layout is sequential or sparse");
        return mode switch
        {
            "build" => Build(dir, extents, layout),
            "open" => OpenAndRead(dir, budget, reads),
            _ => throw new ArgumentException("--maps build|open"),
        };
    }

    private static int Build(string dir, long extents, string layout)
    {
        if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
        int blocksPerRecord = layout == "sequential" ? EngineLimits.ExtentBlocksMax : 1;
        long stride = layout == "sequential" ? blocksPerRecord : 16;
        long sizeBytes = extents * stride * EngineLimits.BlockBytes;
        using (var store = VolumeStore.Open(dir))
            store.CreateVolume("maps", sizeBytes);

        var sw = Stopwatch.StartNew();
        long layer, journalBytes;
        using (var metadata = new MetadataStore(dir, create: false, journalRegionBytes: 0))
        {
            journalBytes = metadata.JournalRegionBytes;
            using (var view = metadata.OpenView()) layer = view.Volumes().Single().LayerId;
            long sequence = metadata.AppliedSequence;
            var crcs = new uint[blocksPerRecord];
            Array.Fill(crcs, Crc32C.Compute(new byte[EngineLimits.BlockBytes]));
            using var ops = new OpLog(BatchOps * OpLog.MapExtentBytes(blocksPerRecord));
            for (long done = 0; done < extents;)
            {
                ops.Clear();
                long n = Math.Min(BatchOps, extents - done);
                for (long i = done; i < done + n; i++)
                    ops.AppendMapExtent(layer, i * stride, crcs, i * blocksPerRecord);
                // One record per batch, newer than anything journaled, so a reopen replays nothing of it.
                metadata.Checkpoint([(++sequence, ops.Span.ToArray(), ops.Length)], beforeCommit: null);
                done += n;
            }
        }
        // The data file covers every mapped block; the unwritten part is a hole (reads as zeros).
        using (var data = new FileStream(Path.Combine(dir, VolumeStore.DataFileName), FileMode.Open, FileAccess.ReadWrite))
            data.SetLength(Math.Max(data.Length, journalBytes + extents * blocksPerRecord * EngineLimits.BlockBytes));
        Console.WriteLine($"built {dir}: {extents:N0} {layout} extent records, {extents * blocksPerRecord * (long)EngineLimits.BlockBytes >> 30} GiB mapped, in {sw.Elapsed.TotalSeconds:F1} s");
        return 0;
    }

    private static int OpenAndRead(string dir, long? budget, int reads)
    {
        var (rss0, heap0) = Memory();
        // CPU time next to wall time: on a shared machine the wall time of a CPU-bound open mostly measures the others.
        var cpu0 = Process.GetCurrentProcess().TotalProcessorTime;
        var sw = Stopwatch.StartNew();
        var options = new StoreOptions { CreateIfMissing = false, LoggerFactory = new ConsoleLines() };
        if (budget is { } b) options = new StoreOptions { CreateIfMissing = false, LoggerFactory = options.LoggerFactory, MapCacheBytes = b };
        using var store = VolumeStore.Open(dir, options);
        double openSeconds = sw.Elapsed.TotalSeconds;
        double openCpuSeconds = (Process.GetCurrentProcess().TotalProcessorTime - cpu0).TotalSeconds;
        using var volume = store.OpenVolume("maps");
        var buffer = new byte[EngineLimits.BlockBytes];
        volume.Read(0, buffer);
        double firstReadSeconds = sw.Elapsed.TotalSeconds;
        volume.Read(volume.SizeBytes - EngineLimits.BlockBytes * 16L, buffer);
        var info = store.ListVolumes().Single();
        var (rss1, heap1) = Memory();
        double mappedTiB = info.AllocatedBytes!.Value / (double)(1L << 40); // the engine always counts it
        var pager = store.MapCache;
        long cached = pager.ResidentBytes;
        Console.WriteLine($"open {openSeconds:F2} s ({openCpuSeconds:F2} s CPU), first read served at {firstReadSeconds:F2} s; load average {File.ReadAllText("/proc/loadavg").Split(' ')[0]}; mapped {info.AllocatedBytes >> 30} GiB; " +
                          $"RSS {rss0 >> 20} -> {rss1 >> 20} MiB, managed heap {heap0 >> 20} -> {heap1 >> 20} MiB; " +
                          $"RSS growth per TiB mapped {(rss1 - rss0) / mappedTiB / (1 << 20):N0} MiB, heap per TiB {(heap1 - heap0) / mappedTiB / (1 << 20):N0} MiB; " +
                          $"map cache {cached >> 20} of {Math.Min(pager.BudgetBytes, long.MaxValue >> 20) >> 20} MiB, heap per TiB without it {(heap1 - heap0 - cached) / mappedTiB / (1 << 20):N0} MiB");
        if (reads > 0)
        {
            // Mapped blocks: every block of a sequential store, one in 16 of a sparse one (see Build).
            long blocks = volume.SizeBytes / EngineLimits.BlockBytes;
            long stride = info.AllocatedBytes.Value == volume.SizeBytes ? 1 : 16;
            Console.WriteLine($"reads: over the whole volume {TimeReads(volume, blocks / stride, stride, reads, pager)}; " +
                              $"within the first 64 MiB {TimeReads(volume, Math.Min(blocks, 16384) / stride, stride, reads, pager)}");
            var map = store.VolumeStateForTests("maps").Map;
            Console.WriteLine($"map lookups (the read path's, without its I/O): over the whole volume {TimeLookups(map, blocks / stride, stride, 50 * reads)}; " +
                              $"within the first 64 MiB {TimeLookups(map, Math.Min(blocks, 16384) / stride, stride, 50 * reads)}");
        }
        return 0;
    }

    // Nanoseconds per lookup of a random mapped block in the volume's map, one block at a time (Get(block)) and as a
    // read does it (Get(first, entries) with one entry), the best of five passes (the machine is shared: the fastest
    // pass is the one least disturbed). Touches each lookup's CRC, as a read that verifies does.
    private static string TimeLookups(MapTree map, long count, long stride, int lookups)
    {
        var rng = new Random(16);
        var blocks = new long[lookups];
        for (int i = 0; i < lookups; i++) blocks[i] = rng.NextInt64(count) * stride;
        Span<BlockEntry> one = stackalloc BlockEntry[1];
        double bestSingle = double.MaxValue, bestRange = double.MaxValue;
        uint sink = 0;
        for (int pass = 0; pass < 5; pass++)
        {
            var sw = Stopwatch.StartNew();
            foreach (long b in blocks) sink += map.Get(b).Crc;
            bestSingle = Math.Min(bestSingle, sw.Elapsed.TotalNanoseconds / lookups);
            sw.Restart();
            foreach (long b in blocks)
            {
                map.Get(b, one);
                sink += one[0].Crc;
            }
            bestRange = Math.Min(bestRange, sw.Elapsed.TotalNanoseconds / lookups);
        }
        return $"{bestSingle:F0} ns per Get(block), {bestRange:F0} ns per Get(block, 1 entry) (best of 5 x {lookups:N0}; {sink % 2})";
    }

    // Microseconds per random 4 KiB read of `count` mapped blocks `stride` apart, and how many leaves (or their CRCs) were fetched.
    private static string TimeReads(Volume volume, long count, long stride, int reads, MapCrcPager pager)
    {
        var rng = new Random(15);
        var buffer = new byte[EngineLimits.BlockBytes];
        for (int i = 0; i < Math.Min(reads, 1000); i++) volume.Read(rng.NextInt64(count) * stride * EngineLimits.BlockBytes, buffer); // warm up
        long fetches = pager.Fetches, leafFetches = pager.LeafFetches;
        var cpu0 = Process.GetCurrentProcess().TotalProcessorTime;
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < reads; i++) volume.Read(rng.NextInt64(count) * stride * EngineLimits.BlockBytes, buffer);
        double cpuUs = (Process.GetCurrentProcess().TotalProcessorTime - cpu0).TotalMicroseconds / reads;
        return $"{sw.Elapsed.TotalMicroseconds / reads:F1} us/read ({cpuUs:F1} us CPU), {pager.Fetches - fetches:N0} fetches ({pager.LeafFetches - leafFetches:N0} whole leaves)";
    }

    // The engine's own account of where open time went (Recovery logs it), printed as it comes.
    private sealed class ConsoleLines : Microsoft.Extensions.Logging.ILoggerFactory, Microsoft.Extensions.Logging.ILogger
    {
        public void AddProvider(Microsoft.Extensions.Logging.ILoggerProvider provider) { }
        public Microsoft.Extensions.Logging.ILogger CreateLogger(string categoryName) => this;
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
        public bool IsEnabled(Microsoft.Extensions.Logging.LogLevel logLevel) => logLevel >= Microsoft.Extensions.Logging.LogLevel.Information;
        public void Log<TState>(Microsoft.Extensions.Logging.LogLevel logLevel, Microsoft.Extensions.Logging.EventId eventId, TState state, Exception? exception,
            Func<TState, Exception?, string> formatter)
        {
            if (IsEnabled(logLevel)) Console.WriteLine($"  [engine] {formatter(state, exception)}");
        }
        public void Dispose() { }
    }

    private static (long Rss, long Heap) Memory()
    {
        GC.Collect(2, GCCollectionMode.Forced, blocking: true, compacting: true);
        GC.WaitForPendingFinalizers();
        long heap = GC.GetTotalMemory(forceFullCollection: true);
        string? line = File.ReadLines("/proc/self/status").FirstOrDefault(l => l.StartsWith("VmRSS:", StringComparison.Ordinal));
        long rss = line is null ? 0 : long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024;
        return (rss, heap);
    }
}
