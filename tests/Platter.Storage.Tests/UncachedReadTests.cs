using System.Runtime.InteropServices;
using Platter.Storage.Devices;
using Xunit;

namespace Platter.Storage.Tests;

/// <summary>
/// The scrubber's reads (<see cref="IDataDevice.ReadUncached"/>, O_DIRECT) read the disk: they see every completed
/// write, and they neither come from nor add to the page cache, as `fincore` (util-linux) shows. The file lives beside
/// the test binaries, on the disk the repository is on (/tmp may be a tmpfs, whose pages are always in memory).
/// </summary>
public sealed class UncachedReadTests : IDisposable
{
    private const int Bytes = 1 << 20;
    private readonly string _dir = Directory.CreateDirectory(Path.Combine(AppContext.BaseDirectory, "uncached-" + Guid.NewGuid().ToString("N")[..8])).FullName;
    private readonly IntPtr _buffer = AlignedAlloc();

    [Fact]
    public async Task Uncached_reads_see_every_write_and_leave_the_page_cache_alone()
    {
        string path = Path.Combine(_dir, "data");
        using var device = new FileDataDevice(path);
        device.Grow(Bytes);
        var content = new byte[Bytes];
        new Random(7).NextBytes(content);
        device.Write(0, content);
        device.Sync();
        await PageCache.DropAsync(path);
        Assert.Equal(0, await PageCache.CachedBytesAsync(path));

        Assert.True(device.ReadUncached(0, Buffer), "the data file's file system refused O_DIRECT");
        Assert.True(Buffer.SequenceEqual(content), "a direct read returned other bytes than were written");
        Assert.Equal(0, await PageCache.CachedBytesAsync(path)); // the disk was read, nothing was cached

        // A buffered write not yet synced (a dirty page) is seen by the next direct read: Linux writes it back first.
        content[4096 * 3 + 17] ^= 0xFF;
        device.Write(4096 * 3, content.AsSpan(4096 * 3, 4096));
        Assert.True(device.ReadUncached(0, Buffer));
        Assert.True(Buffer.SequenceEqual(content), "a direct read missed a completed write");

        // The measurement can see caching: a buffered read of the same file fills the page cache.
        await PageCache.DropAsync(path);
        device.Read(0, new byte[Bytes]);
        Assert.True(await PageCache.CachedBytesAsync(path) > 0, "fincore saw no cached pages after a buffered read");
    }


    // O_DIRECT needs an aligned buffer: native memory, as the scrubber's.
    private static unsafe IntPtr AlignedAlloc() => (IntPtr)NativeMemory.AlignedAlloc(Bytes, IDataDevice.UncachedAlignment);

    private unsafe Span<byte> Buffer => new((void*)_buffer, Bytes);

    public unsafe void Dispose()
    {
        NativeMemory.AlignedFree((void*)_buffer);
        Directory.Delete(_dir, recursive: true);
    }
}
