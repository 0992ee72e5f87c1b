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
