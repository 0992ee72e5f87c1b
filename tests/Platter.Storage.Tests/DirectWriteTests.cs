using Platter.Storage.Devices;
using Platter.Storage.Internal;
using Platter.Storage.Tests.Support;
using Xunit;

namespace Platter.Storage.Tests;

/// <summary>
/// With direct writes on (<c>platter serve --direct-writes</c>), large aligned writes to the data file bypass the page
/// cache (O_DIRECT through pooled aligned buffers); everything else goes through it. Whichever way a write went, every later read sees it: a read right after, a direct write over
/// pages still dirty in the cache, a small cached write inside a direct one, unaligned and partial writes, and a store
/// reopened. The file lives beside the test binaries, on the repository's disk (/tmp may be a tmpfs), as in
/// <see cref="UncachedReadTests"/>.
/// </summary>
public sealed class DirectWriteTests : IDisposable
{
    private const int MiB = 1 << 20;
    private readonly string _dir = Directory.CreateDirectory(Path.Combine(AppContext.BaseDirectory, "direct-" + Guid.NewGuid().ToString("N")[..8])).FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public async Task Large_aligned_writes_skip_the_cache_and_every_read_sees_them_whatever_was_cached()
    {
        string path = Path.Combine(_dir, "data");
        using var device = new FileDataDevice(path, directWrites: true);
        device.Grow(4 * MiB);
        var rng = new Random(5);
        var expected = new byte[4 * MiB];

        // A small write leaves a dirty page in the cache; a large write over it must replace it, not be overwritten by
        // its later writeback.
        var small = Blocks.RandomBytes(rng, 4096);
        device.Write(3 * 4096, small);
        small.CopyTo(expected, 3 * 4096);
        var large = Blocks.RandomBytes(rng, MiB);
        device.Write(0, large);
        large.CopyTo(expected, 0);
        Assert.Equal(expected, ReadBack(device));

        // More than one aligned buffer's worth in one call (the copy goes through the buffer in pieces).
        var longer = Blocks.RandomBytes(rng, 2 * MiB + 8192);
        device.Write(MiB, longer);
        longer.CopyTo(expected, MiB);
        Assert.Equal(expected, ReadBack(device));

        // A small cached write inside data written directly, read before and after the cache is dropped.
        var patch = Blocks.RandomBytes(rng, 4096);
        device.Write(MiB + 5 * 4096, patch);
        patch.CopyTo(expected, MiB + 5 * 4096);
        Assert.Equal(expected, ReadBack(device));
        device.Sync();
        await PageCache.DropAsync(path);
        Assert.Equal(expected, ReadBack(device));

        // The large write went to the disk, not into the cache (this disk takes O_DIRECT: UncachedReadTests).
        await PageCache.DropAsync(path);
        device.Write(0, Blocks.RandomBytes(rng, MiB));
        Assert.Equal(0, await PageCache.CachedBytesAsync(path));
    }

    [Fact]
    public async Task An_aligned_source_is_written_directly_whole_and_reads_back()
    {
        // vhost-user hands the engine page-aligned native buffers: written as they are, without the copy into the
        // device's own buffers, also when longer than one of those, and over a page still dirty in the cache.
        string path = Path.Combine(_dir, "data");
        using var device = new FileDataDevice(path, directWrites: true);
        device.Grow(4 * MiB);
        var rng = new Random(8);
        var expected = new byte[4 * MiB];
        var dirty = Blocks.RandomBytes(rng, 4096);
        device.Write(MiB + 4096, dirty);
        dirty.CopyTo(expected, MiB + 4096);
        int length = EngineLimits.DirectWriteBufferBytes * 2 + 8192;
        var data = Blocks.RandomBytes(rng, length);
        using var source = new AlignedBuffer(length);
        data.CopyTo(source.Span);
        device.Write(MiB, source.Span);
        Assert.Equal(data, source.Span.ToArray());
        data.CopyTo(expected, MiB);
        Assert.Equal(expected, ReadBack(device));
        device.Sync();
        await PageCache.DropAsync(path);
        Assert.Equal(expected, ReadBack(device));

        // It went to the disk, not into the cache.
        await PageCache.DropAsync(path);
        device.Write(0, source.Span);
        Assert.Equal(0, await PageCache.CachedBytesAsync(path));
        data.CopyTo(expected, 0);
        Assert.Equal(expected, ReadBack(device));
    }

    private sealed unsafe class AlignedBuffer(int length) : IDisposable
    {
        private readonly byte* _at = (byte*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc((nuint)length, IDataDevice.UncachedAlignment);

        public Span<byte> Span => new(_at, length);

        public void Dispose() => System.Runtime.InteropServices.NativeMemory.AlignedFree(_at);
    }

    [Fact]
    public async Task Without_direct_writes_large_writes_stay_in_the_cache()
    {
        // The default (direct writes are opt-in): data just written is read back from memory.
        string path = Path.Combine(_dir, "data");
        using var device = new FileDataDevice(path);
        device.Grow(MiB);
        var data = Blocks.RandomBytes(new Random(4), MiB);
        device.Write(0, data);
        Assert.Equal(MiB, await PageCache.CachedBytesAsync(path));
        Assert.Equal(data, ReadBack(device));
    }

    [Fact]
    public void Unaligned_and_short_writes_go_through_the_cache_and_read_back()
    {
        string path = Path.Combine(_dir, "data");
        using var device = new FileDataDevice(path, directWrites: true);
        device.Grow(4 * MiB);
        var rng = new Random(6);
        var expected = new byte[4 * MiB];
        // Large but off a block boundary, large but of a length that is not whole blocks, and below the direct size.
        foreach (var (offset, length) in new[] { (512, MiB), (2 * MiB, MiB + 100), (3 * MiB + 4096, EngineLimits.DirectWriteBytesMin - 4096) })
        {
            var data = Blocks.RandomBytes(rng, length);
            device.Write(offset, data);
            data.CopyTo(expected, offset);
            Assert.Equal(expected, ReadBack(device));
        }
    }

    [Fact]
    public void Volume_writes_of_every_shape_read_back_before_and_after_reopen()
    {
        // Through the engine: a large write whose middle is whole extents (direct) and whose head and tail are partial
        // blocks (read, patched and written through the cache), then overwrites of part of it, large and small.
        var rng = new Random(7);
        var expected = new byte[8 * MiB];
        var writes = new (long Offset, int Length)[] { (512, 3 * MiB + 100), (MiB, MiB), (MiB + 4096 + 17, 300), (5 * MiB, 2 * MiB) };
        var options = new StoreOptions { DataGrowthBytes = MiB, JournalRegionBytes = FaultyStore.JournalBytes, DirectWrites = true };
        using (var store = VolumeStore.Open(Path.Combine(_dir, "store"), options))
        {
            store.CreateVolume("v", 8 * MiB);
            using var v = store.OpenVolume("v");
            foreach (var (offset, length) in writes)
            {
                var data = Blocks.RandomBytes(rng, length);
                v.Write(offset, data);
                data.CopyTo(expected, offset);
                Assert.Equal(expected, v.ReadAll(0, expected.Length));
            }
            v.Flush();
            StoreChecks.AssertConsistent(store, "after direct writes");
        }
        using (var store = VolumeStore.Open(Path.Combine(_dir, "store"), options))
        {
            using var v = store.OpenVolume("v");
            Assert.Equal(expected, v.ReadAll(0, expected.Length));
            StoreChecks.AssertConsistent(store, "reopened");
        }
    }

    private static byte[] ReadBack(FileDataDevice device)
    {
        var buffer = new byte[device.Length];
        device.Read(0, buffer);
        return buffer;
    }

}
