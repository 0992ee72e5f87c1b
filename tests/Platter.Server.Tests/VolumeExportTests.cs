using Platter.Nbd;
using Platter.Storage;
using Xunit;

namespace Platter.Server.Tests;

public class VolumeExportErrorTests
{
    [Theory]
    [InlineData(StorageError.NoSpace, NbdError.NoSpace)]
    [InlineData(StorageError.OutOfRange, NbdError.InvalidArgument)]
    [InlineData(StorageError.InvalidArgument, NbdError.InvalidArgument)]
    [InlineData(StorageError.ReadOnly, NbdError.NotPermitted)]
    [InlineData(StorageError.IoError, NbdError.IoError)]
    [InlineData(StorageError.ChecksumMismatch, NbdError.IoError)]
    [InlineData(StorageError.StoreFailed, NbdError.IoError)]
    [InlineData(StorageError.Closed, NbdError.IoError)]
    public void StorageErrorsBecomeTheNbdErrorClientsActOn(StorageError storage, NbdError nbd)
    {
        var mapped = VolumeExport.Map(new StorageException(storage, "boom"));
        Assert.Equal(nbd, mapped.Error);
        Assert.Equal("boom", mapped.Message);
    }
}

public class ReadOnlyVolumeExportTests
{
    [Fact]
    public async Task ReadOnlyExportRefusesEveryWriteWithEpermAndLeavesTheDataAlone()
    {
        using var dir = new TempDirectory();
        using var store = VolumeStore.Open(dir.Combine("store"));
        store.CreateVolume("vm1", 1 << 20);
        var block = Enumerable.Repeat((byte)0xA5, 4096).ToArray();
        using (var writable = new VolumeExport(store.OpenVolume("vm1")))
        {
            Assert.False(writable.IsReadOnly);
            await writable.WriteAsync(0, block, fua: true, CancellationToken.None);
        }

        using var export = new VolumeExport(store.OpenVolume("vm1"), readOnly: true);
        Assert.True(export.IsReadOnly);
        foreach (var (what, call) in new (string, Func<ValueTask>)[]
        {
            ("write", () => export.WriteAsync(0, new byte[4096], fua: false, CancellationToken.None)),
            ("trim", () => export.TrimAsync(0, 4096, fua: false, CancellationToken.None)),
            ("write zeroes", () => export.WriteZeroesAsync(0, 4096, mayDeallocate: true, fastOnly: false, fua: false, CancellationToken.None)),
        })
        {
            var e = await Assert.ThrowsAsync<NbdErrorException>(async () => await call());
            Assert.True(e.Error == NbdError.NotPermitted, $"{what}: {e.Error}");
        }

        var read = new byte[4096];
        await export.ReadAsync(0, read, CancellationToken.None);
        Assert.Equal(block, read);
    }

    [Fact]
    public void ProviderHandsOutReadOnlyExportsWhenAsked()
    {
        using var dir = new TempDirectory();
        using var store = VolumeStore.Open(dir.Combine("store"));
        store.CreateVolume("vm1", 1 << 20);
        using var writable = new VolumeExportProvider(store).TryOpen("vm1");
        using var readOnly = new VolumeExportProvider(store, readOnly: true).TryOpen("vm1");
        Assert.False(writable!.IsReadOnly);
        Assert.True(readOnly!.IsReadOnly);
    }
}

public class WriteZeroesTests
{
    [Fact]
    public async Task ZeroesWithoutNoHoleDeallocateAndWithNoHoleStayAllocated()
    {
        using var dir = new TempDirectory();
        using var store = VolumeStore.Open(dir.Combine("store"));
        store.CreateVolume("vm1", 1 << 20);
        using var export = new VolumeExport(store.OpenVolume("vm1"));
        var data = Enumerable.Repeat((byte)0x5A, 64 << 10).ToArray();
        await export.WriteAsync(0, data, fua: false, CancellationToken.None);
        await export.WriteAsync(512 << 10, data, fua: false, CancellationToken.None);

        await export.WriteZeroesAsync(0, 64 << 10, mayDeallocate: true, fastOnly: true, fua: false, CancellationToken.None);
        await export.WriteZeroesAsync(512 << 10, 64 << 10, mayDeallocate: false, fastOnly: false, fua: true, CancellationToken.None);

        var read = new byte[64 << 10];
        foreach (long offset in new long[] { 0, 512 << 10 })
        {
            await export.ReadAsync(offset, read, CancellationToken.None);
            Assert.All(read, b => Assert.Equal(0, b));
        }
        var extents = new AllocationExtent[4];
        Assert.True(export.GetAllocation(0, 64 << 10, extents) >= 1);
        Assert.Equal(AllocationFlags.Hole | AllocationFlags.Zero, extents[0].Flags);
        Assert.True(export.GetAllocation(512 << 10, 64 << 10, extents) >= 1);
        Assert.Equal(AllocationFlags.None, extents[0].Flags);
        Assert.Equal(64 << 10, extents[0].Length);
    }

    [Fact]
    public async Task NoHoleWithFastZeroIsNotSupportedAndChangesNothing()
    {
        using var dir = new TempDirectory();
        using var store = VolumeStore.Open(dir.Combine("store"));
        store.CreateVolume("vm1", 1 << 20);
        using var export = new VolumeExport(store.OpenVolume("vm1"));
        var data = Enumerable.Repeat((byte)0x5A, 4096).ToArray();
        await export.WriteAsync(0, data, fua: false, CancellationToken.None);
        var e = await Assert.ThrowsAsync<NbdErrorException>(() =>
            export.WriteZeroesAsync(0, 4096, mayDeallocate: false, fastOnly: true, fua: false, CancellationToken.None).AsTask());
        Assert.Equal(NbdError.NotSupported, e.Error);
        var read = new byte[4096];
        await export.ReadAsync(0, read, CancellationToken.None);
        Assert.Equal(data, read);
    }
}
