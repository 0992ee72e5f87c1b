using Platter.Storage.Tests.Support;
using Xunit;

namespace Platter.Storage.Tests;

/// <summary>Read, write, trim, write-zeroes, extents and usage on one volume: the NBD commands' contract.</summary>
public sealed class VolumeIoTests : IDisposable
{
    private const long MiB = 1 << 20;
    private readonly TempDirectory _dir = new();
    private VolumeStore _store;

    public VolumeIoTests()
    {
        _store = Open();
    }

    public void Dispose()
    {
        _store.Dispose();
        _dir.Dispose();
    }

    private VolumeStore Open() => VolumeStore.Open(_dir.Path, new StoreOptions { DataGrowthBytes = 1 * MiB, JournalRegionBytes = FaultyStore.JournalBytes });

    private Volume Create(string name = "v", long size = 8 * MiB)
    {
        _store.CreateVolume(name, size);
        return _store.OpenVolume(name);
    }

    [Fact]
    public void Fresh_volume_reads_zeros_and_has_no_extents()
    {
        using var v = Create();
        Assert.Equal("v", v.Name);
        Assert.Equal(8 * MiB, v.SizeBytes);
        Assert.False(v.IsReadOnly);
        Assert.True(Blocks.IsZero(v.ReadAll(0, (int)(8 * MiB))));
        Assert.True(Blocks.IsZero(v.ReadAll(12345, 777)));
        var ext = new VolumeExtent[4];
        Assert.Equal(1, v.GetExtents(0, 8 * MiB, ext));
        Assert.Equal(new VolumeExtent(0, 8 * MiB, false), ext[0]);
    }

    [Fact]
    public void Aligned_writes_read_back()
    {
        using var v = Create();
        var rng = new Random(11);
        var data = Blocks.RandomBytes(rng, 64 * 1024);
        v.Write(4096 * 10, data);
        Assert.Equal(data, v.ReadAll(4096 * 10, data.Length));
        Assert.True(Blocks.IsZero(v.ReadAll(4096 * 9, 4096)));
        Assert.True(Blocks.IsZero(v.ReadAll(4096 * 26, 4096)));
        // A read that straddles mapped and unmapped space.
        var mixed = v.ReadAll(4096 * 9 + 100, 4096 * 18);
        Assert.True(Blocks.IsZero(mixed.AsSpan(0, 4096 - 100)));
        Assert.Equal(data, mixed.AsSpan(4096 - 100, data.Length).ToArray());
        Assert.True(Blocks.IsZero(mixed.AsSpan(4096 - 100 + data.Length)));
    }

    [Theory]
    [InlineData(0, 1)]
    [InlineData(1, 1)]
    [InlineData(511, 2)]
    [InlineData(512, 512)]
    [InlineData(4095, 2)]
    [InlineData(4000, 5000)]
    [InlineData(4096 * 3 + 17, 4096 * 5 + 33)]
    [InlineData(100, 4096 * 40)]
    public void Unaligned_writes_merge_with_existing_data(int offset, int length)
    {
        using var v = Create();
        var rng = new Random(offset * 31 + length);
        var background = Blocks.RandomBytes(rng, 256 * 1024);
        v.Write(0, background);
        var patch = Blocks.RandomBytes(rng, length);
        v.Write(offset, patch);
        var expected = (byte[])background.Clone();
        patch.CopyTo(expected, offset);
        Assert.Equal(expected, v.ReadAll(0, background.Length));

        // The same on never-written space: the untouched part of each block reads zeros.
        var expected2 = new byte[background.Length];
        patch.CopyTo(expected2, offset);
        v.Write(MiB + offset, patch);
        Assert.Equal(expected2, v.ReadAll(MiB, background.Length));
    }

    [Fact]
    public void Overwrite_replaces_and_zero_length_requests_are_harmless()
    {
        using var v = Create();
        v.Write(0, Blocks.Pattern(1, 0));
        v.Write(0, Blocks.Pattern(2, 0));
        Assert.Equal(Blocks.Pattern(2, 0), v.ReadAll(0, 4096));
        v.Write(100, ReadOnlySpan<byte>.Empty);
        v.Read(100, Span<byte>.Empty);
        v.Trim(100, 0);
        v.WriteZeroes(100, 0);
        Assert.Equal(Blocks.Pattern(2, 0), v.ReadAll(0, 4096));
    }

    [Fact]
    public void Requests_past_the_end_are_out_of_range_and_change_nothing()
    {
        using var v = Create(size: MiB);
        v.Write(MiB - 4096, Blocks.Pattern(3, 0));
        StorageAssert.Throws(() => v.Write(MiB - 4095, new byte[4096]), StorageError.OutOfRange);
        StorageAssert.Throws(() => v.Write(MiB, new byte[1]), StorageError.OutOfRange);
        StorageAssert.Throws(() => v.Write(MiB - 1, new byte[2]), StorageError.OutOfRange);
        StorageAssert.Throws(() => v.Read(MiB - 10, new byte[11]), StorageError.OutOfRange);
        StorageAssert.Throws(() => v.Read(MiB, new byte[1]), StorageError.OutOfRange);
        StorageAssert.Throws(() => v.Trim(MiB - 4096, 8192), StorageError.OutOfRange);
        StorageAssert.Throws(() => v.WriteZeroes(MiB - 4096, 4097), StorageError.OutOfRange);
        StorageAssert.Throws(() => v.Write(-1, new byte[1]), StorageError.OutOfRange, StorageError.InvalidArgument);
        StorageAssert.Throws(() => v.Read(-4096, new byte[4096]), StorageError.OutOfRange, StorageError.InvalidArgument);
        StorageAssert.Throws(() => v.Trim(0, -1), StorageError.OutOfRange, StorageError.InvalidArgument);
        StorageAssert.Throws(() => v.WriteZeroes(long.MaxValue, 4096), StorageError.OutOfRange, StorageError.InvalidArgument);
        StorageAssert.Throws(() => v.Trim(4096, long.MaxValue), StorageError.OutOfRange, StorageError.InvalidArgument);
        // The refused requests left nothing behind, not even a partial block.
        Assert.Equal(Blocks.Pattern(3, 0), v.ReadAll(MiB - 4096, 4096));
        Assert.True(Blocks.IsZero(v.ReadAll(0, (int)MiB - 4096)));
        // Exactly up to the end is fine.
        v.Write(MiB - 1, new byte[] { 0xAB });
        Assert.Equal(0xAB, v.ReadAll(MiB - 1, 1)[0]);
    }

    [Fact]
    public void Trim_and_write_zeroes_read_as_zeros_and_release_whole_blocks()
    {
        using var v = Create();
        var rng = new Random(5);
        var data = Blocks.RandomBytes(rng, (int)MiB);
        v.Write(0, data);
        v.Flush();
        Assert.Equal(MiB, _store.GetVolumeInfo("v").AllocatedBytes);

        // Whole blocks: deallocated.
        v.Trim(0, 64 * 1024);
        v.WriteZeroes(128 * 1024, 64 * 1024);
        // Partial blocks: zeros inside, neighbours intact.
        v.Trim(300 * 1024 + 100, 1000);
        v.WriteZeroes(400 * 1024 + 4000, 200);
        var expected = (byte[])data.Clone();
        Array.Clear(expected, 0, 64 * 1024);
        Array.Clear(expected, 128 * 1024, 64 * 1024);
        Array.Clear(expected, 300 * 1024 + 100, 1000);
        Array.Clear(expected, 400 * 1024 + 4000, 200);
        Assert.Equal(expected, v.ReadAll(0, (int)MiB));
        v.Flush();
        Assert.Equal(MiB - 128 * 1024, _store.GetVolumeInfo("v").AllocatedBytes);

        var ext = new VolumeExtent[16];
        int n = v.GetExtents(0, MiB, ext);
        Assert.Equal(new VolumeExtent(0, 64 * 1024, false), ext[0]);
        Assert.Contains(new VolumeExtent(128 * 1024, 64 * 1024, false), ext.AsSpan(0, n).ToArray());

        // Trimming never-written space allocates nothing.
        v.Trim(2 * MiB, 2 * MiB);
        v.WriteZeroes(4 * MiB, 2 * MiB);
        v.Flush();
        Assert.Equal(MiB - 128 * 1024, _store.GetVolumeInfo("v").AllocatedBytes);
        Assert.True(Blocks.IsZero(v.ReadAll(2 * MiB, (int)(4 * MiB))));

        _store.Dispose();
        _store = Open();
        using var again = _store.OpenVolume("v");
        Assert.Equal(expected, again.ReadAll(0, (int)MiB));
        StoreChecks.AssertConsistent(_store, "after trims and reopen");
    }

    [Fact]
    public void Extents_describe_allocation_in_consecutive_runs()
    {
        using var v = Create();
        v.Write(0, new byte[8192].Select((_, i) => (byte)(i | 1)).ToArray());
        v.Write(10 * 4096, Blocks.Pattern(1, 10));
        v.Write(MiB, Blocks.Pattern(1, 256));
        var ext = new VolumeExtent[64];
        int n = v.GetExtents(0, 8 * MiB, ext);
        var runs = ext.AsSpan(0, n).ToArray();
        AssertConsecutive(runs, 0, 8 * MiB);
        Assert.Equal(new VolumeExtent(0, 8192, true), runs[0]);
        Assert.Equal(4 * 4096, runs.Where(r => r.Allocated).Sum(r => r.Length));
        Assert.Contains(runs, r => r.Allocated && r.Offset <= 10 * 4096 && r.Offset + r.Length >= 11 * 4096);

        // From the middle of a run, and with a destination too small for everything: a prefix of the map.
        n = v.GetExtents(4096, 8 * MiB - 4096, ext.AsSpan(0, 2));
        Assert.InRange(n, 1, 2);
        AssertConsecutive(ext.AsSpan(0, n).ToArray(), 4096, 8 * MiB - 4096);
        Assert.Equal(new VolumeExtent(4096, 4096, true), ext[0]);

        // A length past the end is refused like any other request.
        StorageAssert.Throws(() => v.GetExtents(0, 8 * MiB + 4096, ext), StorageError.OutOfRange);
    }

    internal static void AssertConsecutive(VolumeExtent[] runs, long offset, long lengthMax)
    {
        Assert.NotEmpty(runs);
        long pos = offset;
        foreach (var r in runs)
        {
            Assert.Equal(pos, r.Offset);
            Assert.True(r.Length > 0, $"empty run {r}");
            pos += r.Length;
        }
        Assert.True(pos - offset <= lengthMax, $"runs cover {pos - offset} bytes, more than the {lengthMax} asked for");
    }

    [Fact]
    public void Usage_numbers_follow_writes_trims_and_volumes()
    {
        using var a = Create("a", 16 * MiB);
        using var b = Create("b", 4 * MiB);
        a.Write(0, Blocks.RandomBytes(new Random(1), (int)(2 * MiB)));
        b.Write(100, new byte[] { 1 }); // one block
        a.Flush();
        Assert.Equal(2 * MiB, _store.GetVolumeInfo("a").AllocatedBytes);
        Assert.Equal(4096, _store.GetVolumeInfo("b").AllocatedBytes);
        var u = _store.GetUsage();
        Assert.Equal(2, u.VolumeCount);
        Assert.Equal(20 * MiB, u.ProvisionedBytes);
        Assert.Equal(2 * MiB + 4096, u.UsedBytes);
        Assert.True(u.DataFileBytes >= u.UsedBytes + u.FreeBytes, $"{u}");
        Assert.Equal(_store.ListVolumes().Sum(x => x.AllocatedBytes), u.UsedBytes);

        // Overwriting does not grow usage (copy-on-write frees the old copy once committed).
        for (int i = 0; i < 3; i++) a.Write(0, Blocks.RandomBytes(new Random(i), (int)(2 * MiB)));
        a.Flush();
        Assert.Equal(2 * MiB + 4096, _store.GetUsage().UsedBytes);

        a.Trim(0, MiB);
        a.Flush();
        Assert.Equal(MiB, _store.GetVolumeInfo("a").AllocatedBytes);
        Assert.Equal(MiB + 4096, _store.GetUsage().UsedBytes);

        var counters = _store.Counters;
        Assert.True(counters.WriteOps >= 5 && counters.WriteBytes >= 8 * MiB, $"writes {counters.WriteOps}/{counters.WriteBytes}");
        Assert.True(counters.Commits >= 1);
        Assert.Equal(0, counters.ChecksumErrors);
        Assert.Equal(0, counters.IoErrors);
        StoreChecks.AssertConsistent(_store, "usage");
    }

    [Fact]
    public void Reopen_after_dispose_keeps_flushed_and_unflushed_data()
    {
        var rng = new Random(3);
        var d1 = Blocks.RandomBytes(rng, 300_000);
        var d2 = Blocks.RandomBytes(rng, 5000);
        using (var v = Create())
        {
            v.Write(12345, d1);
            v.Flush();
            v.Write(4 * MiB + 7, d2); // never flushed: Dispose must flush it
        }
        for (int round = 0; round < 2; round++)
        {
            _store.Dispose();
            _store.Dispose(); // twice is safe
            _store = Open();
            using var v = _store.OpenVolume("v");
            Assert.Equal(d1, v.ReadAll(12345, d1.Length));
            Assert.Equal(d2, v.ReadAll(4 * MiB + 7, d2.Length));
            Assert.True(Blocks.IsZero(v.ReadAll(0, 12345)));
            StoreChecks.AssertConsistent(_store, $"reopen {round}");
        }
    }

    [Fact]
    public void Closed_handles_and_stores_refuse_requests()
    {
        var v = Create();
        var w = _store.OpenVolume("v");
        v.Write(0, Blocks.Pattern(1, 0));
        v.Dispose();
        v.Dispose();
        StorageAssert.Throws(() => v.ReadAll(0, 4096), StorageError.Closed);
        Assert.Equal(Blocks.Pattern(1, 0), w.ReadAll(0, 4096)); // other handles are unaffected
        _store.Dispose();
        StorageAssert.Throws(() => w.ReadAll(0, 4096), StorageError.Closed);
        StorageAssert.Throws(() => w.Write(0, new byte[1]), StorageError.Closed);
        StorageAssert.Throws(() => _store.ListVolumes(), StorageError.Closed);
        StorageAssert.Throws(() => _store.CreateVolume("x", MiB), StorageError.Closed);
        w.Dispose();
        _store = Open();
    }

    [Fact]
    public void Volumes_are_isolated()
    {
        using var a = Create("a", MiB);
        using var b = Create("b", MiB);
        var rng = new Random(9);
        var da = Blocks.RandomBytes(rng, (int)MiB);
        a.Write(0, da);
        Assert.True(Blocks.IsZero(b.ReadAll(0, (int)MiB)));
        b.Write(0, Blocks.RandomBytes(rng, (int)MiB));
        b.Trim(0, MiB);
        Assert.Equal(da, a.ReadAll(0, (int)MiB));
        _store.DeleteVolume("b");
        _store.Flush();
        Assert.Equal(da, a.ReadAll(0, (int)MiB));
    }
}
