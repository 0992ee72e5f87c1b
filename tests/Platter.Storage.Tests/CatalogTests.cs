using Platter.Storage.Tests.Support;
using Xunit;

namespace Platter.Storage.Tests;

/// <summary>Create, list, info, rename, resize and delete: what `platter volume ...` and the NBD export list rely on.</summary>
public sealed class CatalogTests : IDisposable
{
    private const long MiB = 1 << 20;
    private readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    private VolumeStore Open() => VolumeStore.Open(_dir.Path, new StoreOptions { DataGrowthBytes = 1 * MiB, JournalRegionBytes = FaultyStore.JournalBytes });

    [Fact]
    public void New_store_is_empty_and_exists_afterwards()
    {
        Assert.False(VolumeStore.Exists(_dir.Path));
        using (var store = Open())
        {
            Assert.Empty(store.ListVolumes());
            var usage = store.GetUsage();
            Assert.Equal(0, usage.VolumeCount);
            Assert.Equal(0, usage.UsedBytes);
            Assert.Equal(0, usage.ProvisionedBytes);
            StoreChecks.AssertConsistent(store, "empty store");
        }
        Assert.True(VolumeStore.Exists(_dir.Path));
        Assert.True(File.Exists(Path.Combine(_dir.Path, "data.mdb")));
    }

    [Fact]
    public void Open_without_create_on_an_empty_directory_fails_and_creates_nothing()
    {
        var e = StorageAssert.Throws(() => VolumeStore.Open(_dir.Path, new StoreOptions { CreateIfMissing = false }).Dispose(),
            StorageError.NotFound, StorageError.BadStore);
        Assert.False(VolumeStore.Exists(_dir.Path), e.Message);
    }

    [Fact]
    public void Open_refuses_a_directory_holding_something_else()
    {
        File.WriteAllText(Path.Combine(_dir.Path, "data.mdb"), "this is not an LMDB environment, just some text that is long enough to look like a header");
        StorageAssert.Throws(() => Open().Dispose(), StorageError.BadStore);
    }

    [Fact]
    public void Create_list_info()
    {
        using var store = Open();
        var before = DateTimeOffset.UtcNow.AddSeconds(-5);
        var a = store.CreateVolume("alpha", 8 * MiB);
        var b = store.CreateVolume("beta-2.disk_x", 1L << 30);
        Assert.Equal("alpha", a.Name);
        Assert.Equal(8 * MiB, a.SizeBytes);
        Assert.Equal(0, a.AllocatedBytes);
        Assert.InRange(a.CreatedUtc, before, DateTimeOffset.UtcNow.AddSeconds(5));
        Assert.NotEqual(a.Id, b.Id);

        var list = store.ListVolumes();
        Assert.Equal(new[] { "alpha", "beta-2.disk_x" }, list.Select(v => v.Name).OrderBy(n => n, StringComparer.Ordinal));
        Assert.Equal(a, store.GetVolumeInfo("alpha"));
        Assert.True(store.TryGetVolumeInfo("beta-2.disk_x", out var bi));
        Assert.Equal(b, bi);
        Assert.False(store.TryGetVolumeInfo("gamma", out var none));
        Assert.Null(none);
        StorageAssert.Throws(() => store.GetVolumeInfo("gamma"), StorageError.NotFound);
        StorageAssert.Throws(() => store.OpenVolume("gamma"), StorageError.NotFound);

        var usage = store.GetUsage();
        Assert.Equal(2, usage.VolumeCount);
        Assert.Equal(8 * MiB + (1L << 30), usage.ProvisionedBytes);
    }

    [Fact]
    public void Catalog_survives_reopen()
    {
        VolumeInfo a;
        using (var store = Open())
        {
            a = store.CreateVolume("alpha", 8 * MiB);
            store.CreateVolume("beta", 4 * MiB);
            store.RenameVolume("beta", "gamma");
            store.ResizeVolume("alpha", 16 * MiB);
        }
        using (var store = Open())
        {
            Assert.Equal(new[] { "alpha", "gamma" }, store.ListVolumes().Select(v => v.Name).OrderBy(n => n, StringComparer.Ordinal));
            var a2 = store.GetVolumeInfo("alpha");
            Assert.Equal(a.Id, a2.Id);
            Assert.Equal(16 * MiB, a2.SizeBytes);
            Assert.Equal(a.CreatedUtc.ToUnixTimeSeconds(), a2.CreatedUtc.ToUnixTimeSeconds());
            Assert.Equal(4 * MiB, store.GetVolumeInfo("gamma").SizeBytes);
            StoreChecks.AssertConsistent(store, "after reopen");
        }
    }

    public static TheoryData<string> InvalidNames() => new()
    {
        "",
        new string('a', VolumeNames.NameBytesMax + 1),
        new string('é', VolumeNames.NameBytesMax / 2 + 1), // 2 UTF-8 bytes each: over the byte limit, under it in chars
        "a/b",
        "/",
        "vol@snap",
        "@",
        "tab\there",
        "nl\n",
        "nul\0x",
        "del\u007f",
        " leading",
        "trailing ",
        ".",
        "..",
        "-x",
        "--force",
        "evil\u202Etxt.exe", // right-to-left override: displays as "evilexe.txt"
        "iso\u2066late",
        "mark\u200F",
        "esc\u001b[31m",
    };

    [Theory]
    [InlineData(".")]
    [InlineData("..")]
    [InlineData("-x")]
    [InlineData("rtl\u202Eoverride")]
    public void A_name_created_under_the_older_rules_can_still_be_renamed_and_deleted(string legacy)
    {
        using var store = Open();
        store.CreateVolumeUnchecked(legacy, MiB);
        store.CreateVolumeUnchecked(legacy + "2", MiB);
        Assert.Equal(MiB, store.GetVolumeInfo(legacy).SizeBytes);
        store.RenameVolume(legacy, "fixed");
        store.DeleteVolume(legacy + "2");
        Assert.Equal(new[] { "fixed" }, store.ListVolumes().Select(v => v.Name));
    }

    [Theory]
    [MemberData(nameof(InvalidNames))]
    public void Invalid_names_are_refused_everywhere(string name)
    {
        using var store = Open();
        store.CreateVolume("ok", MiB);
        StorageAssert.Throws(() => store.CreateVolume(name, MiB), StorageError.InvalidName);
        StorageAssert.Throws(() => store.RenameVolume("ok", name), StorageError.InvalidName);
        Assert.Equal(new[] { "ok" }, store.ListVolumes().Select(v => v.Name));
    }

    [Fact]
    public void Longest_valid_name_and_unicode_names_work()
    {
        using var store = Open();
        string longest = new('n', VolumeNames.NameBytesMax);
        string unicode = "диск-ü-磁盘";
        store.CreateVolume(longest, MiB);
        store.CreateVolume(unicode, MiB);
        Assert.Equal(longest, store.GetVolumeInfo(longest).Name);
        using var v = store.OpenVolume(unicode);
        Assert.Equal(unicode, v.Name);
    }

    [Fact]
    public void Names_are_case_sensitive_and_duplicates_refused()
    {
        using var store = Open();
        store.CreateVolume("disk", MiB);
        StorageAssert.Throws(() => store.CreateVolume("disk", 2 * MiB), StorageError.AlreadyExists);
        Assert.Equal(MiB, store.GetVolumeInfo("disk").SizeBytes);
        store.CreateVolume("Disk", MiB);
        store.CreateVolume("other", MiB);
        StorageAssert.Throws(() => store.RenameVolume("other", "disk"), StorageError.AlreadyExists);
        StorageAssert.Throws(() => store.RenameVolume("missing", "new"), StorageError.NotFound);
        Assert.Equal(3, store.ListVolumes().Count);
    }

    [Theory]
    [InlineData(-1L)]
    [InlineData(-4096L)]
    [InlineData(long.MinValue)]
    public void Negative_sizes_are_invalid(long size)
    {
        using var store = Open();
        StorageAssert.Throws(() => store.CreateVolume("v", size), StorageError.InvalidArgument);
        store.CreateVolume("w", MiB);
        StorageAssert.Throws(() => store.ResizeVolume("w", size), StorageError.InvalidArgument);
        Assert.Equal(MiB, store.GetVolumeInfo("w").SizeBytes);
        StorageAssert.Throws(() => store.ResizeVolume("missing", MiB), StorageError.NotFound);
    }

    [Fact]
    public void Rename_keeps_data_and_open_handles()
    {
        using var store = Open();
        store.CreateVolume("old", MiB);
        using var v = store.OpenVolume("old");
        var data = Blocks.Pattern(1, 3);
        v.Write(3 * 4096, data);
        store.RenameVolume("old", "new");
        StorageAssert.Throws(() => store.GetVolumeInfo("old"), StorageError.NotFound);
        using var w = store.OpenVolume("new");
        Assert.Equal(data, w.ReadAll(3 * 4096, 4096));
        // Handles follow the volume, not the name: the old handle still addresses the same data.
        v.Write(4 * 4096, data);
        Assert.Equal(data, w.ReadAll(4 * 4096, 4096));
        Assert.Equal("new", w.Name);
        // The old name is free again.
        store.CreateVolume("old", MiB);
        using var fresh = store.OpenVolume("old");
        Assert.True(Blocks.IsZero(fresh.ReadAll(0, (int)MiB)));
    }

    [Fact]
    public void Resize_grow_keeps_data_and_new_space_reads_zeros()
    {
        using var store = Open();
        store.CreateVolume("v", MiB);
        using var v = store.OpenVolume("v");
        var last = Blocks.Pattern(7, 255);
        v.Write(MiB - 4096, last);
        StorageAssert.Throws(() => v.Write(MiB, last), StorageError.OutOfRange);
        store.ResizeVolume("v", 4 * MiB);
        Assert.Equal(4 * MiB, v.SizeBytes);
        Assert.Equal(4 * MiB, store.GetVolumeInfo("v").SizeBytes);
        Assert.Equal(last, v.ReadAll(MiB - 4096, 4096));
        Assert.True(Blocks.IsZero(v.ReadAll(MiB, (int)(3 * MiB))));
        v.Write(4 * MiB - 4096, last); // the handle sees the new size
        Assert.Equal(last, v.ReadAll(4 * MiB - 4096, 4096));
    }

    [Fact]
    public void Resize_shrink_drops_data_past_the_end_and_regrow_reads_zeros()
    {
        using (var store = Open())
        {
            store.CreateVolume("v", 4 * MiB);
            using var v = store.OpenVolume("v");
            for (int blk = 0; blk < 1024; blk += 16) v.Write(blk * 4096L, Blocks.Pattern(2, blk));
            v.Write(2 * MiB - 100, Blocks.Pattern(3, 0)); // straddles the new end
            v.Flush();
            long allocatedBefore = store.GetVolumeInfo("v").AllocatedBytes!.Value; // the engine always counts it

            StorageAssert.Throws(() => store.ResizeVolume("v", 2 * MiB), StorageError.InvalidArgument);
            Assert.Equal(4 * MiB, v.SizeBytes); // refused without allowShrink: nothing discarded
            store.ResizeVolume("v", 2 * MiB, allowShrink: true);
            Assert.Equal(2 * MiB, v.SizeBytes);
            StorageAssert.Throws(() => v.ReadAll(2 * MiB, 4096), StorageError.OutOfRange);
            StorageAssert.Throws(() => v.Write(2 * MiB - 1, new byte[2]), StorageError.OutOfRange);
            v.Flush();
            Assert.True(store.GetVolumeInfo("v").AllocatedBytes < allocatedBefore, "shrinking must release the blocks past the end");

            store.ResizeVolume("v", 4 * MiB);
            Assert.True(Blocks.IsZero(v.ReadAll(2 * MiB, (int)(2 * MiB))), "regrown space must read zeros, not the old data");
            var tail = v.ReadAll(2 * MiB - 4096, 4096);
            var expected = Blocks.Pattern(3, 0).AsSpan(0, 100).ToArray();
            Assert.Equal(expected, tail.AsSpan(4096 - 100).ToArray());
            Assert.Equal(Blocks.Pattern(2, 496), v.ReadAll(496 * 4096L, 4096));
            StoreChecks.AssertConsistent(store, "after shrink and regrow");
        }
        using (var store = Open())
        using (var v = store.OpenVolume("v"))
        {
            Assert.True(Blocks.IsZero(v.ReadAll(2 * MiB, (int)(2 * MiB))), "after reopen the dropped data must stay dropped");
            Assert.Equal(Blocks.Pattern(2, 0), v.ReadAll(0, 4096));
        }
    }

    [Fact]
    public void Delete_reclaims_space_and_closes_handles()
    {
        using var store = Open();
        store.CreateVolume("keep", 4 * MiB);
        using (var keep = store.OpenVolume("keep"))
        {
            keep.Write(0, Blocks.RandomBytes(new Random(1), (int)MiB));
            keep.Flush();
        }
        var baseline = store.GetUsage();

        store.CreateVolume("doomed", 8 * MiB);
        var doomed = store.OpenVolume("doomed");
        var rng = new Random(2);
        for (int i = 0; i < 4; i++) doomed.Write(i * MiB, Blocks.RandomBytes(rng, (int)MiB));
        doomed.Flush();
        var full = store.GetUsage();
        Assert.Equal(baseline.UsedBytes + 4 * MiB, full.UsedBytes);
        Assert.Equal(4 * MiB, store.GetVolumeInfo("doomed").AllocatedBytes);

        store.DeleteVolume("doomed");
        StorageAssert.Throws(() => doomed.ReadAll(0, 4096), StorageError.Closed);
        StorageAssert.Throws(() => doomed.Write(0, new byte[4096]), StorageError.Closed);
        doomed.Dispose();
        StorageAssert.Throws(() => store.DeleteVolume("doomed"), StorageError.NotFound);
        // The blocks stop counting as used at once; they count as free again only after the quarantine: the round
        // that commits their free puts them there under the current reader epoch, and a later round hands them to
        // the allocator once that epoch has no reader left (EpochGate). No reader runs here, so two commit rounds
        // (two flushes) are exactly what the engine promises; one is not enough unless the timer's round came between.
        store.Flush();
        Assert.Equal(baseline.UsedBytes, store.GetUsage().UsedBytes);
        store.Flush();

        var after = store.GetUsage();
        Assert.Equal(baseline.UsedBytes, after.UsedBytes);
        Assert.Equal(1, after.VolumeCount);
        Assert.Equal(baseline.ProvisionedBytes, after.ProvisionedBytes);
        Assert.Equal(full.FreeBytes + 4 * MiB, after.FreeBytes);
        StoreChecks.AssertConsistent(store, "after delete");

        // The reclaimed space is used again: the same amount of new data does not grow the data file.
        store.CreateVolume("next", 8 * MiB);
        using (var next = store.OpenVolume("next"))
        {
            for (int i = 0; i < 4; i++) next.Write(i * MiB, Blocks.RandomBytes(rng, (int)MiB));
            next.Flush();
            Assert.True(Blocks.IsZero(next.ReadAll(4 * MiB, (int)(4 * MiB))));
        }
        Assert.Equal(after.DataFileBytes, store.GetUsage().DataFileBytes);

        // A new volume under the old name starts empty.
        store.CreateVolume("doomed", 8 * MiB);
        using var reborn = store.OpenVolume("doomed");
        Assert.True(Blocks.IsZero(reborn.ReadAll(0, (int)(8 * MiB))));
        Assert.Equal(0, store.GetVolumeInfo("doomed").AllocatedBytes);
    }

    [Fact]
    public void Thin_volumes_up_to_one_pebibyte()
    {
        const long PiB = 1L << 50;
        using var store = Open();
        store.CreateVolume("huge", PiB);
        store.CreateVolume("huge2", PiB);
        Assert.Equal(2 * PiB, store.GetUsage().ProvisionedBytes);
        using var v = store.OpenVolume("huge");
        Assert.Equal(PiB, v.SizeBytes);

        var a = Blocks.Pattern(9, 1);
        var z = Blocks.Pattern(9, 2);
        v.Write(0, a);
        v.Write(PiB - 4096, a);
        v.Write(PiB / 2 + 10, z); // unaligned: touches two blocks
        StorageAssert.Throws(() => v.Write(PiB - 4095, a), StorageError.OutOfRange);
        StorageAssert.Throws(() => v.Write(PiB, new byte[1]), StorageError.OutOfRange);
        StorageAssert.Throws(() => v.Write(long.MaxValue - 10, new byte[4096]), StorageError.OutOfRange, StorageError.InvalidArgument);
        v.Flush();

        Assert.Equal(a, v.ReadAll(PiB - 4096, 4096));
        Assert.Equal(z, v.ReadAll(PiB / 2 + 10, 4096));
        Assert.True(Blocks.IsZero(v.ReadAll(PiB / 4, 1 << 20)));
        Assert.Equal(4 * 4096, store.GetVolumeInfo("huge").AllocatedBytes);
        Assert.True(store.GetUsage().DataFileBytes < 64 * MiB, "a thin volume must not preallocate its size");

        var extents = new VolumeExtent[16];
        int n = v.GetExtents(0, PiB, extents);
        var allocated = extents.AsSpan(0, n).ToArray().Where(e => e.Allocated).ToList();
        Assert.Equal(PiB - 4096, allocated[^1].Offset);
        Assert.Equal(4 * 4096, allocated.Sum(e => e.Length));
        Assert.Equal(new VolumeExtent(0, 4096, true), extents[0]);

        store.ResizeVolume("huge", PiB / 2, allowShrink: true);
        v.Flush();
        Assert.Equal(4096, store.GetVolumeInfo("huge").AllocatedBytes);
    }
}
