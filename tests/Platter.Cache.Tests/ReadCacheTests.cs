using Platter.Storage;
using Xunit;
using Xunit.Abstractions;

namespace Platter.Cache.Tests;

/// <summary>
/// The read cache in both modes: warm reads are served locally, and no read ever returns a copy older than the last
/// write — checked against a plain in-memory model through random writes, trims, reads and write-back progress.
/// </summary>
public sealed class ReadCacheTests(ITestOutputHelper output) : EngineVolumeTest(output, VolumeBytes)
{
    internal const long VolumeBytes = 16L << 20;

    [Fact]
    public async Task Write_through_serves_warm_reads_locally_and_never_a_stale_copy()
    {
        using var cache = new WriteThroughVolume(_store.OpenVolume("vm1"), Path.Combine(_dir, "wt.rcache"), 4L << 20);
        using var h = cache.OpenHandle();
        var data = new byte[1 << 20];
        new Random(1).NextBytes(data);
        await h.WriteAsync(0, data, fua: true);
        Assert.Equal(data, await ReadAsync(h, 0, data.Length)); // cold: from the backend
        var (_, coldMisses) = cache.ReadCacheCounters;
        Assert.Equal(data, await ReadAsync(h, 0, data.Length)); // warm
        var (hits, misses) = cache.ReadCacheCounters;
        Assert.Equal(coldMisses, misses);
        Assert.Equal(256, hits);

        // A write replaces what the cache held: the next read sees the new data, from either place.
        var newer = new byte[Block];
        new Random(2).NextBytes(newer);
        await h.WriteAsync(8192, newer, fua: false);
        Assert.Equal(newer, await ReadAsync(h, 8192, Block));
        await h.TrimAsync(0, Block, fua: false);
        Assert.Equal(new byte[Block], await ReadAsync(h, 0, Block));
        // Unaligned reads go through the cache too.
        Assert.Equal(data.AsSpan(5000, 3000).ToArray(), await ReadAsync(h, 5000, 3000));
    }

    [Fact]
    public async Task A_damaged_cache_slot_is_a_miss_never_data()
    {
        string path = Path.Combine(_dir, "wt.rcache");
        using var cache = new WriteThroughVolume(_store.OpenVolume("vm1"), path, 1L << 20);
        using var h = cache.OpenHandle();
        var data = new byte[Block];
        new Random(3).NextBytes(data);
        await h.WriteAsync(0, data, fua: true);
        await ReadAsync(h, 0, Block); // cached in slot 0
        RawFile.FlipByte(path, 17);
        Assert.Equal(data, await ReadAsync(h, 0, Block));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Random_operations_always_read_the_last_write(bool writeBack)
    {
        int seed = Environment.GetEnvironmentVariable("PLATTER_TEST_SEED") is { Length: > 0 } s ? int.Parse(s) : Random.Shared.Next();
        _output.WriteLine($"seed {seed} (replay with PLATTER_TEST_SEED={seed})");
        var random = new Random(seed);
        const int blocks = 512; // 2 MiB of the volume, through a read cache of 64 blocks: constant eviction
        var model = new byte[blocks * Block];

        var gate = new GatedBackend(_store.OpenVolume("vm1"));
        IAsyncDisposable? wb = null;
        IDisposable? wt = null;
        IVolumeHandle h;
        if (writeBack)
        {
            var cache = WriteBackVolume.Open(Path.Combine(_dir, "vm1.log"), "test/vm1", gate,
                new WriteBackOptions { LogBytes = 8L << 20, ReadCacheBytes = 64 * Block });
            wb = cache;
            h = cache.OpenHandle();
        }
        else
        {
            var cache = new WriteThroughVolume(gate, Path.Combine(_dir, "vm1.rcache"), 64 * Block);
            wt = cache;
            h = cache.OpenHandle();
        }
        try
        {
            for (int op = 0; op < 1500; op++)
            {
                int b = random.Next(blocks - 8);
                int n = random.Next(1, 8);
                switch (random.Next(10))
                {
                    case < 4:
                    {
                        var data = new byte[n * Block];
                        random.NextBytes(data);
                        await h.WriteAsync(b * (long)Block, data, fua: false);
                        data.CopyTo(model, b * Block);
                        break;
                    }
                    case 4:
                    {
                        // Unaligned write inside the range.
                        int offset = b * Block + random.Next(Block);
                        var data = new byte[random.Next(1, 3 * Block)];
                        random.NextBytes(data);
                        await h.WriteAsync(offset, data, fua: false);
                        data.CopyTo(model, offset);
                        break;
                    }
                    case 5:
                        // A trim waits for write-back to reach it: a held-back backend would hold it forever.
                        gate.Resume();
                        await h.TrimAsync(b * (long)Block, n * Block, fua: false);
                        Array.Clear(model, b * Block, n * Block);
                        break;
                    case 6:
                        // Write-back held back or let go (write-through writes wait for the backend: never held there).
                        if (writeBack && random.Next(2) == 0) gate.Pause(); else gate.Resume();
                        break;
                    default:
                    {
                        var got = await ReadAsync(h, b * (long)Block, n * Block);
                        Assert.True(got.AsSpan().SequenceEqual(model.AsSpan(b * Block, n * Block)),
                            $"seed {seed}: op {op} read of blocks {b}..{b + n} differs from the last writes");
                        break;
                    }
                }
            }
            gate.Resume();
            if (wb is WriteBackVolume w) await w.DrainAsync();
            var all = await ReadAsync(h, 0, blocks * Block);
            Assert.True(all.AsSpan().SequenceEqual(model), $"seed {seed}: final read differs");
            var backend = new byte[blocks * Block];
            using (var v = _store.OpenVolume("vm1")) v.Read(0, backend);
            Assert.True(backend.AsSpan().SequenceEqual(model), $"seed {seed}: the backend differs after write-back");
        }
        finally
        {
            h.Dispose();
            gate.Resume();
            if (wb is not null) await wb.DisposeAsync();
            wt?.Dispose();
        }
    }
}
