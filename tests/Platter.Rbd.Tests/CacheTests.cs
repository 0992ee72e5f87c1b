using System.Buffers.Binary;
using System.Text.Json;
using Platter.Testing;
using Xunit;

namespace Platter.Rbd.Tests;

/// <summary>
/// The node cache on a real cluster, through real <c>platter serve --store rbd:POOL --cache-dir</c> processes: the
/// guarantees of docs/ARCHITECTURE.md ("Node cache"), each checked against the image as Ceph holds it (<c>rbd export</c>,
/// bypassing Platter). Write-back is held up by killing two of the three OSDs (the pool's min_size is 2, so every
/// write waits), which makes "the log holds writes the image lacks" a certainty instead of a race.
/// </summary>
[Collection(IsolatedCephCollection.Name)]
public sealed class CacheTests(IsolatedCephCluster ceph)
{
    private const int BlockBytes = 4096;

    // Writes stamped blocks over NBD: write i (FIRST <= i < FIRST+COUNT) goes to slot (i * 7919) % SLOTS and holds i
    // as 512 little-endian 64-bit words, so any block read back names the one write it came from. FLUSH: 1 = a flush
    // after every write (each acknowledged write durable before the next starts), 0 = one flush at the end.
    private const string StampScript = """
        import nbd, struct, sys
        uri, first, count, slots, each = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
        h = nbd.NBD()
        h.connect_uri(uri)
        for i in range(first, first + count):
            h.pwrite(struct.pack("<Q", i) * 512, ((i * 7919) % slots) * 4096)
            if each:
                h.flush()
        h.flush()
        h.shutdown()
        print("ok")
        """;

    private static int SlotOf(int write, int slots) => (int)((long)write * 7919 % slots);

    private async Task WriteStampsAsync(PlatterServer server, string volume, int first, int count, int slots, bool flushEach)
    {
        var result = await ProcessRunner.RunAsync("/usr/bin/python3", ["-c", StampScript, server.Uri(volume), first.ToString(), count.ToString(), slots.ToString(), flushEach ? "1" : "0"],
            TimeSpan.FromSeconds(300));
        Assert.True(result.ExitCode == 0 && result.Stdout.Trim() == "ok", result.Describe() + "\n--- server log ---\n" + server.Log);
    }

    // The stamp of every slot of the image as Ceph holds it (0: never written); a block that is not one whole stamp fails.
    private long[] ExportStamps(string volume, int slots, string? snapshot = null)
    {
        using var dir = new TempDirectory("pcache");
        string file = dir.Combine("image.raw");
        ceph.ExecOk("rbd", "export", $"{ceph.Pool}/{volume}" + (snapshot is null ? "" : "@" + snapshot), file);
        var bytes = File.ReadAllBytes(file);
        var stamps = new long[slots];
        for (int s = 0; s < slots; s++)
        {
            var block = bytes.AsSpan(s * BlockBytes, BlockBytes);
            long stamp = BinaryPrimitives.ReadInt64LittleEndian(block);
            for (int w = 0; w < BlockBytes; w += 8)
                Assert.True(BinaryPrimitives.ReadInt64LittleEndian(block[w..]) == stamp, $"slot {s} of {volume} is not one whole write (torn or garbage)");
            stamps[s] = stamp;
        }
        return stamps;
    }

    // The state after writes 1..k, for the k that matches; -1 when no prefix of the writes gives this image.
    private static int PrefixLength(long[] image, int writes)
    {
        var state = new long[image.Length];
        for (int k = 0; k <= writes; k++)
        {
            if (k > 0) state[SlotOf(k, image.Length)] = k;
            if (state.AsSpan().SequenceEqual(image)) return k;
        }
        return -1;
    }

    private static long[] FinalState(int writes, int slots)
    {
        var state = new long[slots];
        for (int i = 1; i <= writes; i++) state[SlotOf(i, slots)] = i;
        return state;
    }

    // Two of three OSDs gone: every write (write-back included) waits; the server's local log keeps taking writes.
    private void StallCluster()
    {
        ceph.KillOsd(1);
        ceph.KillOsd(2);
    }

    private void ResumeCluster()
    {
        ceph.StartOsd(1);
        ceph.StartOsd(2);
        var deadline = DateTime.UtcNow.AddSeconds(120);
        while (!ceph.ExecOk("ceph", "osd", "stat").Contains("3 osds: 3 up"))
        {
            Assert.True(DateTime.UtcNow < deadline, "the OSDs did not come back within 120 s");
            Thread.Sleep(500);
        }
    }

    private static JsonElement Cache(string infoJson) => JsonDocument.Parse(infoJson).RootElement.GetProperty("cache");

    private static string? Text(JsonElement e, string property) =>
        e.TryGetProperty(property, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

    // Waits until the server's write-back cache of the volume has nothing left to write back.
    private static async Task WaitWrittenBackAsync(PlatterServer server, string volume)
    {
        var deadline = DateTime.UtcNow.AddSeconds(180);
        while (Cache(await server.CliOkAsync("volume", "info", volume, "--json")).GetProperty("lagRecords").GetInt64() > 0)
        {
            Assert.True(DateTime.UtcNow < deadline, "write-back did not catch up within 180 s");
            await Task.Delay(200);
        }
    }

    [Fact]
    public async Task Writeback_log_replays_after_SIGKILL_and_nothing_flushed_is_lost()
    {
        const int slots = 64, writes = 200;
        string name = CephCluster.UniqueName("wbkill");
        await using var a = ceph.CreateServer(cacheSize: "64M");
        await a.StartAsync();
        await a.CliOkAsync("volume", "create", name, "--size", "1M", "--cache", "writeback");
        var created = Cache(await a.CliOkAsync("volume", "info", name, "--json"));
        Assert.Equal("writeback", created.GetProperty("mode").GetString());

        await WriteStampsAsync(a, name, 1, 100, slots, flushEach: true);
        await WaitWrittenBackAsync(a, name);
        StallCluster();
        bool resumed = false;
        try
        {
            // Acknowledged and flushed from the local log while the cluster takes no writes at all.
            await WriteStampsAsync(a, name, 101, writes - 100, slots, flushEach: true);
            await a.KillAsync();
            ResumeCluster();
            resumed = true;
        }
        finally
        {
            if (!resumed) ResumeCluster();
        }

        // The image lacks the flushed writes the dead server had only in its log (an ordered prefix of them)...
        int before = PrefixLength(ExportStamps(name, slots), writes);
        Assert.InRange(before, 100, writes - 1);

        // ...and the restarted server (same cache directory) replays the log: its own marker lets it take over.
        await a.StartAsync();
        var takeover = await a.CliAsync("volume", "takeover", name);
        Assert.True(takeover.ExitCode == 0, takeover.Describe() + "\n" + a.Log);
        using (var reader = new NbdHolder(a.Uri(name)))
        {
            var expected = FinalState(writes, slots);
            for (int s = 0; s < slots; s++)
            {
                if (expected[s] <= 255) Assert.Equal($"ok {expected[s]}", reader.Send($"r {s * BlockBytes}", TimeSpan.FromSeconds(60)));
            }
        }
        await a.AssertLogContainsAsync("replayed"); // the log is written asynchronously
        var released = await a.CliOkAsync("volume", "release", name);
        Assert.Contains($"released volume '{name}'", released);
        Assert.Equal(FinalState(writes, slots), ExportStamps(name, slots));
        Assert.Null(Text(Cache(await a.CliOkAsync("volume", "info", name, "--json")), "dirtyMarker")); // released: the marker is gone
    }

    [Fact]
    public async Task Lost_cache_leaves_an_ordered_prefix_and_takeover_needs_explicit_acceptance()
    {
        const int slots = 64, writes = 250;
        string name = CephCluster.UniqueName("wblost");
        await using var a = ceph.CreateServer(cacheSize: "64M");
        await using var b = ceph.CreateServer(cacheSize: "64M");
        await a.StartAsync();
        await b.StartAsync();
        await a.CliOkAsync("volume", "create", name, "--size", "1M", "--cache", "writeback");

        await WriteStampsAsync(a, name, 1, 120, slots, flushEach: true);
        await WaitWrittenBackAsync(a, name);
        StallCluster();
        bool resumed = false;
        try
        {
            await WriteStampsAsync(a, name, 121, writes - 120, slots, flushEach: true);
            await a.KillAsync();
            Directory.Delete(a.CacheDirectory, recursive: true); // the node's cache disk is gone
            ResumeCluster();
            resumed = true;
        }
        finally
        {
            if (!resumed) ResumeCluster();
        }

        // Another server refuses the volume, saying why and what to do.
        var refused = await ProcessRunner.RunAsync("qemu-io", ["-f", "raw", "-c", "read 0 4k", b.Uri(name)], TimeSpan.FromSeconds(60));
        Assert.NotEqual(0, refused.ExitCode);
        var takeover = await b.CliAsync("volume", "takeover", name);
        Assert.NotEqual(0, takeover.ExitCode);
        Assert.Contains("write-back cache of another server", takeover.Stderr);
        Assert.Contains($"node {Environment.MachineName}", takeover.Stderr);
        Assert.Contains("--accept-cache-loss", takeover.Stderr);

        var accepted = await b.CliAsync("volume", "takeover", name, "--accept-cache-loss");
        Assert.True(accepted.ExitCode == 0, accepted.Describe() + "\n" + b.Log);

        // The image is exactly the writes up to some k, in order, and not all of them: the cache's writes are lost.
        var image = ExportStamps(name, slots);
        int k = PrefixLength(image, writes);
        Assert.True(k >= 0, $"the image is not an ordered prefix of the writes: [{string.Join(',', image)}]");
        Assert.InRange(k, 120, writes - 1); // everything written back before the stall is there
        // And the volume serves again (B caches it with a fresh log of its own).
        using var client = new NbdHolder(b.Uri(name));
        Assert.Equal("ok", client.Send("w 0 9", TimeSpan.FromSeconds(60)));
    }

    [Fact]
    public async Task Snapshot_release_and_SIGTERM_each_write_the_cache_back_first()
    {
        const int slots = 2048;
        string name = CephCluster.UniqueName("wbmig");
        await using var a = ceph.CreateServer(cacheSize: "64M");
        await using var b = ceph.CreateServer(cacheSize: "64M");
        await a.StartAsync();
        await b.StartAsync();
        await a.CliOkAsync("volume", "create", name, "--size", "8M", "--cache", "writeback");

        // Scattered writes logged while the cluster takes none: write-back then has many records to catch up on.
        await WriteStampsAsync(a, name, 1, 10, slots, flushEach: false);
        StallCluster();
        bool resumed = false;
        try
        {
            await WriteStampsAsync(a, name, 11, 1990, slots, flushEach: false);
            ResumeCluster();
            resumed = true;
        }
        finally
        {
            if (!resumed) ResumeCluster();
        }
        var lagging = Cache(await a.CliOkAsync("volume", "info", name, "--json"));
        Assert.Equal("writeback", lagging.GetProperty("active").GetString());
        await a.CliOkAsync("snapshot", "create", $"{name}@s1");
        Assert.Equal(FinalState(2000, slots), ExportStamps(name, slots, "s1")); // every acknowledged write is in the snapshot

        // Migration: release on A (drains, clears the marker, frees the lock), serve from B.
        await WriteStampsAsync(a, name, 2001, 500, slots, flushEach: false);
        var release = await a.CliOkAsync("volume", "release", name, "--json");
        Assert.Equal(name, JsonDocument.Parse(release).RootElement.GetProperty("name").GetString());
        Assert.Equal(FinalState(2500, slots), ExportStamps(name, slots));
        await WriteStampsAsync(b, name, 2501, 500, slots, flushEach: false);
        var onB = Cache(await b.CliOkAsync("volume", "info", name, "--json"));
        Assert.Contains($"pid {b.ProcessId}", Text(onB, "dirtyMarker"));

        // SIGTERM on B: clients are cut, the log is written back, the marker cleared: A may serve it at once.
        await b.StopAsync();
        Assert.Equal(FinalState(3000, slots), ExportStamps(name, slots));
        Assert.Contains("drained", b.Log);
        var onA = Cache(await a.CliOkAsync("volume", "info", name, "--json"));
        Assert.Null(Text(onA, "dirtyMarker"));
    }

    [Fact]
    public async Task A_flipped_byte_in_the_log_is_refused_clearly_and_never_written_back()
    {
        const int slots = 16;
        string name = CephCluster.UniqueName("wbflip");
        await using var a = ceph.CreateServer(cacheSize: "64M");
        await a.StartAsync();
        await a.CliOkAsync("volume", "create", name, "--size", "1M", "--cache", "writeback");
        using (var first = new NbdHolder(a.Uri(name))) Assert.Equal("ok", first.Send("w 0 0", TimeSpan.FromSeconds(60))); // opens the cache
        await WaitWrittenBackAsync(a, name);
        StallCluster();
        bool resumed = false;
        try
        {
            await WriteStampsAsync(a, name, 1, 8, slots, flushEach: true);
            await a.KillAsync();
            ResumeCluster();
            resumed = true;
        }
        finally
        {
            if (!resumed) ResumeCluster();
        }
        var before = ExportStamps(name, slots);

        // Flip one byte in the payload of a flushed record the image lacks: the second record's block.
        var log = Directory.GetFiles(a.CacheDirectory, "*.wblog").Single();
        using (var file = File.Open(log, FileMode.Open, FileAccess.ReadWrite))
        {
            long at = 4096 + 2 * (512 + 4096) + 512 + 100; // records: [wrap-free] 0 (the "w 0 0"), 1, 2 ...: header 512 + one block each
            file.Position = at;
            int b = file.ReadByte();
            file.Position = at;
            file.WriteByte((byte)(b ^ 0x40));
        }

        await a.StartAsync();
        (await a.CliAsync("volume", "takeover", name)).EnsureSuccess();
        var refused = await ProcessRunner.RunAsync("qemu-io", ["-f", "raw", "-c", "read 0 4k", a.Uri(name)], TimeSpan.FromSeconds(60));
        Assert.NotEqual(0, refused.ExitCode);
        Assert.Contains("is damaged", refused.Stderr + a.Log);
        await a.AssertLogContainsAsync("fails its checksum");
        Assert.Equal(before, ExportStamps(name, slots)); // nothing of the damaged log reached the image

        // Accepting the loss writes back the intact records before the damage, and nothing after it.
        (await a.CliAsync("volume", "takeover", name, "--accept-cache-loss")).EnsureSuccess();
        await a.CliOkAsync("volume", "release", name);
        var after = ExportStamps(name, slots);
        int k = PrefixLength(after, 8);
        Assert.True(k == 1, $"after accepting the damage the image must hold exactly the intact record before it: [{string.Join(',', after)}]");
    }

    [Fact]
    public async Task A_writer_far_faster_than_write_back_waits_and_the_cache_stays_in_its_size()
    {
        string name = CephCluster.UniqueName("wbfull");
        await using var a = ceph.CreateServer(cacheSize: "16M");
        await a.StartAsync();
        await a.CliOkAsync("volume", "create", name, "--size", "64M", "--cache", "writeback");
        // 48 MiB of writes through a 12 MiB log: three times over, every write acknowledged, none failed.
        var write = await ProcessRunner.RunAsync("qemu-io", ["-f", "raw", "-c", "write -P 0x5a 0 48M", "-c", "flush", a.Uri(name)], TimeSpan.FromSeconds(600));
        Assert.True(write.ExitCode == 0 && !write.Stdout.Contains("error", StringComparison.OrdinalIgnoreCase), write.Describe());
        long cacheBytes = Directory.GetFiles(a.CacheDirectory).Sum(f => new FileInfo(f).Length);
        Assert.InRange(cacheBytes, 1, 16L << 20);
        var info = Cache(await a.CliOkAsync("volume", "info", name, "--json"));
        Assert.InRange(info.GetProperty("logUsedBytes").GetInt64(), 0, info.GetProperty("logCapacityBytes").GetInt64());
        await a.CliOkAsync("volume", "release", name);
        var read = await ProcessRunner.RunAsync("qemu-io", ["-f", "raw", "-r", "-c", "read -P 0x5a 0 48M", $"rbd:{ceph.Pool}/{name}:conf={ceph.ConfFile}"], TimeSpan.FromSeconds(300));
        Assert.True(read.ExitCode == 0 && !read.Stdout.Contains("fail", StringComparison.OrdinalIgnoreCase), read.Describe());
    }

    [Fact]
    public async Task Writethrough_serves_repeated_reads_from_the_cache_and_counts_them()
    {
        string name = CephCluster.UniqueName("wtread");
        await using var a = ceph.CreateServer(cacheSize: "32M");
        await a.StartAsync();
        await a.CliOkAsync("volume", "create", name, "--size", "8M");
        Assert.Contains("cache mode writethrough", await a.CliOkAsync("volume", "set", name, "--cache", "writethrough"));
        using var client = new NbdHolder(a.Uri(name));
        Assert.Equal("ok", client.Send("w 8192 77", TimeSpan.FromSeconds(60)));
        for (int i = 0; i < 3; i++) Assert.Equal("ok 77", client.Send("r 8192", TimeSpan.FromSeconds(60)));
        var info = Cache(await a.CliOkAsync("volume", "info", name, "--json"));
        Assert.Equal("writethrough", info.GetProperty("active").GetString());
        Assert.True(info.GetProperty("hits").GetInt64() >= 2, info.ToString());
        var text = await a.CliOkAsync("volume", "info", name);
        Assert.Contains("cache:      writethrough (served here as writethrough)", text);
        Assert.Contains("hit ratio", text);
        // writethrough acknowledges only what the cluster has: the image has it while the volume is still served
        var direct = await ProcessRunner.RunAsync("qemu-io", ["-f", "raw", "-r", "-c", "read -P 77 8192 4k", $"rbd:{ceph.Pool}/{name}:conf={ceph.ConfFile}"], TimeSpan.FromSeconds(120));
        Assert.True(direct.ExitCode == 0 && direct.Stdout.Contains("read 4096/4096") && !direct.Stdout.Contains("fail", StringComparison.OrdinalIgnoreCase), direct.Describe());
    }

    // Reads a hole of the volume with a structured read and prints the kinds of the reply's chunks ("data", "hole").
    private const string ChunkKindsScript = """
        import nbd, sys
        h = nbd.NBD()
        h.connect_uri(sys.argv[1])
        kinds = []
        h.pread_structured(65536, 1 << 20, lambda buf, offset, status, err: kinds.append({nbd.READ_DATA: "data", nbd.READ_HOLE: "hole"}.get(status, str(status))))
        h.shutdown()
        print(" ".join(kinds))
        """;

    [Theory]
    [InlineData("writethrough")]
    [InlineData("writeback")]
    public async Task A_read_of_a_cached_volume_does_not_ask_the_cluster_for_its_allocation(string mode)
    {
        // An allocation query on RBD is an OSD round trip (rbd_diff_iterate2); a read must not make one. Seen from the
        // client: a read of a never-written range comes back as one data chunk of zeros, not as a hole the server
        // found by asking. A cache layer that did not pass the backend's answer on made every cached read ask (it
        // cost cached reads more than uncached ones, docs/PERFORMANCE.md).
        string name = CephCluster.UniqueName("cheap");
        await using var a = ceph.CreateServer(cacheSize: "32M");
        await a.StartAsync();
        await a.CliOkAsync("volume", "create", name, "--size", "8M");
        await a.CliOkAsync("volume", "set", name, "--cache", mode);
        var result = await ProcessRunner.RunAsync("/usr/bin/python3", ["-c", ChunkKindsScript, a.Uri(name)], TimeSpan.FromSeconds(120));
        Assert.True(result.ExitCode == 0, result.Describe());
        Assert.Equal("data", result.Stdout.Trim());
    }
}
