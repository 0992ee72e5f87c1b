using Platter.Storage.Devices;
using Platter.Storage.Internal;
using Platter.Storage.Tests.Support;
using Xunit;

namespace Platter.Storage.Tests;

/// <summary>
/// The online scrub: finds damaged blocks while the store serves, names every version and offset that references each,
/// checks each physical block once, pauses and resumes (also across a reopen), and never reports a block that was
/// freed and reused under it.
/// </summary>
public sealed class ScrubTests : IDisposable
{
    private const int B = Blocks.Size;
    private readonly TempDirectory _dir = new();
    private readonly FaultyStore _faults = new();

    public void Dispose() => _dir.Dispose();

    // The data file's device under the open store (the journal region, then the blocks): what a disk error changes.
    private FaultyDevice Disk => _faults.Data!;

    // The engine writes a block's content verbatim: where in the data file it is (it must be there exactly once).
    private long Locate(byte[] content)
    {
        var file = new byte[Disk.Length];
        Disk.Read(0, file);
        int at = file.AsSpan().IndexOf(content);
        Assert.True(at >= 0, "the block's content is not in the data file");
        Assert.True(file.AsSpan(at + 1).IndexOf(content) < 0, "the block's content is in the data file twice");
        return at;
    }

    // One bit flipped under the running store, below the engine (as a disk error shows up to it).
    private void Flip(long fileOffset)
    {
        var one = new byte[1];
        Disk.Read(fileOffset, one);
        one[0] ^= 0x10;
        Disk.Write(fileOffset, one);
    }

    private static ScrubStatus RunToEnd(VolumeStore store, IReadOnlyList<string>? targets = null)
    {
        store.StartScrub(targets ?? [], rateBytesPerSecond: 0, restart: true);
        store.ScrubberForTests.WaitForWorker();
        var status = store.GetScrubStatus();
        Assert.Equal(ScrubState.Finished, status.State);
        return status;
    }

    private static string Refs(BadBlock bad) => string.Join(" ", bad.References.Select(r => $"{r.Version}:{r.Offset}").Order(StringComparer.Ordinal));

    [Fact]
    public void Finds_exactly_the_damaged_blocks_names_every_referrer_and_counts_shared_blocks_once()
    {
        using var store = _faults.Open(_dir.Path);
        store.CreateVolume("v", 1 << 20);
        using (var v = store.OpenVolume("v"))
        {
            for (int b = 0; b < 8; b++) v.Write(b * (long)B, Blocks.Pattern(1, b));
            store.CreateSnapshot("v", "s1");
            v.Write(2L * B, Blocks.Pattern(2, 2));       // s1 alone keeps (1,2): a snapshot-only block
            store.CreateSnapshot("v", "s2");
            store.CloneSnapshot("v", "s2", "c");          // c shares s2's blocks, (1,0) among them
            v.Write(4L * B, Blocks.Pattern(3, 4));       // v alone maps (3,4)
            using (var c = store.OpenVolume("c")) c.Write(6L * B, Blocks.Pattern(4, 6));
            store.Flush();
        }
        // Distinct physical blocks: 8 first writes + (2,2) + (3,4) + (4,6).
        long uncached = Disk.UncachedReads;
        Assert.Equal(11, RunToEnd(store).BlocksChecked);
        Assert.True(Disk.UncachedReads > uncached, "the scrub did not read past the page cache (IDataDevice.ReadUncached)");
        Assert.Equal(0, store.GetScrubStatus().BadBlocksFound);

        long snapshotOnly = Locate(Blocks.Pattern(1, 2)), shared = Locate(Blocks.Pattern(1, 0)), live = Locate(Blocks.Pattern(3, 4));
        Flip(snapshotOnly + 100);
        Flip(shared + 4095);
        Flip(live);

        var status = RunToEnd(store);
        Assert.Equal(11, status.BlocksChecked);
        Assert.Equal(3, status.BadBlocksFound);
        Assert.Equal(3, status.BadBlocks.Count);
        var byRefs = status.BadBlocks.Select(Refs).Order(StringComparer.Ordinal).ToList();
        Assert.Equal(new[] { "c:0 v:0 v@s1:0 v@s2:0", $"v:{4 * B}", $"v@s1:{2 * B}" }, byRefs);
        Assert.All(status.BadBlocks, b => Assert.Equal("checksum_mismatch", b.Reason));
        Assert.Equal(3, store.Counters.ScrubBadBlocks);

        // Nothing is repaired: reads of those blocks still fail; every other block reads fine.
        using (var v = store.OpenVolume("v"))
        {
            StorageAssert.Throws(() => v.ReadAll(4L * B, B), StorageError.ChecksumMismatch);
            StorageAssert.Throws(() => v.ReadAll(0, B), StorageError.ChecksumMismatch);
            Assert.Equal(Blocks.Pattern(1, 1), v.ReadAll(B, B));
            Assert.Equal(Blocks.Pattern(2, 2), v.ReadAll(2L * B, B));
        }
        using (var s1 = store.OpenSnapshot("v", "s1")) StorageAssert.Throws(() => s1.ReadAll(2L * B, B), StorageError.ChecksumMismatch);
        using (var c = store.OpenVolume("c")) Assert.Equal(Blocks.Pattern(4, 6), c.ReadAll(6L * B, B));

        // Named targets: blocks shared between them are read once. v@s2 maps 8 blocks; v adds only (3,4).
        var named = RunToEnd(store, ["v", "v@s2"]);
        Assert.Equal(9, named.BlocksChecked);
        Assert.Equal(2, named.BadBlocksFound); // (1,0) and (3,4); (1,2) is s1's alone

        // Overwriting the live block frees it: it leaves the list. The shared one stays, named by those still holding it.
        using (var v = store.OpenVolume("v"))
        {
            v.Write(4L * B, Blocks.Pattern(5, 4));
            v.Write(0, Blocks.Pattern(5, 0));
            store.Flush();
            Assert.Equal(Blocks.Pattern(5, 4), v.ReadAll(4L * B, B));
        }
        var after = store.GetScrubStatus();
        Assert.Equal(new[] { "c:0 v@s1:0 v@s2:0", $"v@s1:{2 * B}" }, after.BadBlocks.Select(Refs).Order(StringComparer.Ordinal).ToArray());
    }

    private static void WriteMany(VolumeStore store, string name, int blocks)
    {
        store.CreateVolume(name, (long)blocks * B);
        using var v = store.OpenVolume(name);
        var chunk = new byte[256 * B];
        for (int b = 0; b < blocks; b += 256)
        {
            for (int i = 0; i < 256; i++) Blocks.FillPattern(chunk.AsSpan(i * B, B), 7, b + i);
            v.Write((long)b * B, chunk);
        }
        store.Flush();
    }

    private const int Batch = EngineLimits.ScrubBatchBlocksMax;
    private const int Total = Batch * 2 + Batch / 2;

    [Fact]
    public void Stop_pauses_after_the_batch_and_start_resumes_without_reading_it_again()
    {
        using var store = _faults.Open(_dir.Path);
        WriteMany(store, "v", Total);
        long dataBytesRead = 0;
        _faults.Data!.OnRead = (offset, span) =>
        {
            if (offset >= FaultyStore.JournalBytes) Interlocked.Add(ref dataBytesRead, span.Length);
        };
        int batches = 0;
        store.ScrubberForTests.AfterBatch = _ =>
        {
            if (Interlocked.Increment(ref batches) == 1) store.StopScrub(); // on the scrub thread: takes effect at once
        };
        store.StartScrub([], 0, restart: false);
        store.ScrubberForTests.WaitForWorker();
        var paused = store.GetScrubStatus();
        Assert.Equal(ScrubState.Paused, paused.State);
        Assert.Equal(Batch, paused.BlocksChecked);
        Assert.Equal(Total, paused.BlocksTotal);
        Assert.Equal((long)Batch * B, Interlocked.Read(ref dataBytesRead));

        store.StartScrub([], 0, restart: false);
        store.ScrubberForTests.WaitForWorker();
        var done = store.GetScrubStatus();
        Assert.Equal(ScrubState.Finished, done.State);
        Assert.Equal(Total, done.BlocksChecked);
        Assert.Equal((long)Total * B, Interlocked.Read(ref dataBytesRead)); // nothing read twice

        // A different target list is a new scrub, from the start.
        store.StartScrub(["v"], 0, restart: false);
        store.ScrubberForTests.WaitForWorker();
        Assert.Equal(Total, store.GetScrubStatus().BlocksChecked);
    }

    [Fact]
    public void A_scrub_running_when_the_store_closes_resumes_at_the_next_open()
    {
        using (var store = _faults.Open(_dir.Path))
        {
            WriteMany(store, "v", Total);
            int batches = 0;
            store.ScrubberForTests.AfterBatch = _ =>
            {
                if (Interlocked.Increment(ref batches) == 1) store.ScrubberForTests.RequestCloseForTests();
            };
            store.StartScrub([], 0, restart: false);
            store.ScrubberForTests.WaitForWorker();
            var status = store.GetScrubStatus();
            Assert.Equal(ScrubState.Running, status.State); // as a close leaves it: to be resumed
            Assert.Equal(Batch, status.BlocksChecked);
        }
        Assert.Contains("\"state\": \"running\"", File.ReadAllText(Path.Combine(_dir.Path, Scrubber.FileName)));

        // Count what the reopened store reads from the data blocks (the journal region is not counted).
        long dataBytesRead = 0;
        var options = new StoreOptions
        {
            JournalRegionBytes = FaultyStore.JournalBytes,
            DataDeviceFactory = path => new FaultyDevice(new FileDataDevice(path))
            {
                OnRead = (offset, span) =>
                {
                    if (offset >= FaultyStore.JournalBytes) Interlocked.Add(ref dataBytesRead, span.Length);
                },
            },
        };
        using (var store = VolumeStore.Open(_dir.Path, options))
        {
            store.ScrubberForTests.WaitForWorker();
            var status = store.GetScrubStatus();
            Assert.Equal(ScrubState.Finished, status.State);
            Assert.Equal(Total, status.BlocksChecked);
            Assert.Equal((long)(Total - Batch) * B, Interlocked.Read(ref dataBytesRead)); // resumed, not restarted
        }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void A_block_freed_and_reused_while_being_scrubbed_is_not_reported(bool freeFirst)
    {
        using var store = _faults.Open(_dir.Path);
        store.CreateVolume("v", 1 << 20);
        using var v = store.OpenVolume("v");
        v.Write(0, Blocks.Pattern(1, 0));
        v.Write(B, Blocks.Pattern(1, 1));
        store.Flush();
        long old = Locate(Blocks.Pattern(1, 0));
        int runs = 0;
        // Between the scrubber's map walk and its read of the run: v overwrites block 0 (copy-on-write frees the old
        // physical block), the free becomes durable and leaves quarantine, and new content lands where the old block
        // was, as when the allocator hands it to another write. The scrubber then reads content that does not match
        // the checksum it gathered. Without the free (freeFirst = false) the same bytes are real damage.
        store.ScrubberForTests.BeforeRunRead = (_, _) =>
        {
            if (Interlocked.Increment(ref runs) != 1) return;
            if (freeFirst)
            {
                v.Write(0, Blocks.Pattern(2, 0));
                for (int i = 0; i < 4; i++) store.Flush(); // commit the free, then rounds that release it
                Assert.False(store.Parts.Space.HasQuarantine, "the freed block should be back in the allocator");
            }
            Disk.Write(old, Blocks.Pattern(9, 9));
        };
        var status = RunToEnd(store);
        Assert.Equal(1, runs);
        Assert.Equal(2, status.BlocksChecked);
        if (freeFirst)
        {
            Assert.Equal(0, status.BadBlocksFound);
            Assert.Empty(status.BadBlocks);
            Assert.Equal(Blocks.Pattern(2, 0), v.ReadAll(0, B));
        }
        else
        {
            Assert.Equal(1, status.BadBlocksFound);
            Assert.Equal("v:0", Refs(Assert.Single(status.BadBlocks)));
        }
    }

    [Fact]
    public void A_block_the_disk_cannot_read_is_reported_as_an_io_error()
    {
        using var store = _faults.Open(_dir.Path);
        store.CreateVolume("v", 1 << 20);
        using (var v = store.OpenVolume("v")) v.Write(0, Blocks.Pattern(1, 0));
        store.Flush();
        _faults.AimAtData();
        _faults.Data!.FailReads = 2; // the run's read and the confirming read of that block
        var status = RunToEnd(store);
        var bad = Assert.Single(status.BadBlocks);
        Assert.Equal("io_error", bad.Reason);
        Assert.Equal("v:0", Refs(bad));
    }

    [Fact]
    public void A_store_without_progress_or_with_a_damaged_progress_file_opens()
    {
        using (var store = _faults.Open(_dir.Path))
        {
            Assert.Equal(ScrubState.None, store.GetScrubStatus().State);
            store.CreateVolume("v", 1 << 20);
        }
        File.WriteAllText(Path.Combine(_dir.Path, Scrubber.FileName), "{ not json");
        using (var store = _faults.Open(_dir.Path))
        {
            Assert.Equal(ScrubState.None, store.GetScrubStatus().State);
            Assert.Equal(ScrubState.Finished, RunToEnd(store).State);
        }
    }

    [Fact]
    public void Unknown_targets_and_a_negative_rate_are_refused()
    {
        using var store = _faults.Open(_dir.Path);
        store.CreateVolume("v", 1 << 20);
        StorageAssert.Throws(() => store.StartScrub(["nope"], null, false), StorageError.NotFound);
        StorageAssert.Throws(() => store.StartScrub(["v@nope"], null, false), StorageError.NotFound);
        StorageAssert.Throws(() => store.StartScrub([], -1, false), StorageError.InvalidArgument);
    }

    [Fact]
    public void Scrubs_under_random_overwrites_trims_and_snapshots_report_nothing_and_clients_see_no_error()
    {
        int seed = Random.Shared.Next();
        using var store = _faults.Open(_dir.Path);
        const int blocks = 2048;
        WriteMany(store, "v", blocks);
        var stop = new ManualResetEventSlim();
        var failures = new System.Collections.Concurrent.ConcurrentQueue<string>();
        var writers = Enumerable.Range(0, 2).Select(w => new Thread(() =>
        {
            var random = new Random(seed + w);
            using var v = store.OpenVolume("v");
            var buffer = new byte[B];
            try
            {
                for (int i = 0; !stop.IsSet; i++)
                {
                    long block = random.Next(blocks);
                    switch (random.Next(10))
                    {
                        case 0: v.Trim(block * B, B); break;
                        case 1: v.ReadAll(block * B, B); break;
                        case 2 when w == 0 && i % 50 == 0:
                            store.CreateSnapshot("v", $"s{i}");
                            if (i % 200 == 0) store.DeleteSnapshot("v", $"s{i}");
                            break;
                        default:
                            Blocks.FillPattern(buffer, i, block);
                            v.Write(block * B, buffer);
                            break;
                    }
                    if (i % 64 == 0) store.Flush();
                }
            }
            catch (Exception e)
            {
                failures.Enqueue(e.ToString());
            }
        })).ToList();
        writers.ForEach(t => t.Start());
        try
        {
            for (int round = 0; round < 5; round++)
            {
                var status = RunToEnd(store);
                Assert.True(status.BadBlocksFound == 0, $"seed {seed}: a scrub under writes reported {status.BadBlocksFound} bad blocks");
            }
        }
        finally
        {
            stop.Set();
            writers.ForEach(t => t.Join());
        }
        Assert.True(failures.IsEmpty, $"seed {seed}: " + string.Join("\n", failures));
        Assert.Empty(store.GetScrubStatus().BadBlocks);
        StoreChecks.AssertConsistent(store, $"after scrubs under writes (seed {seed})");
    }
}
