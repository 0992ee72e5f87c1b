using Xunit;

namespace Platter.Server.Tests;

public class StoreLockTests
{
    [Fact]
    public void SecondHolderIsRefusedWithThePidUntilTheFirstReleases()
    {
        using var dir = new TempDirectory();
        var first = StoreLock.Acquire(dir.Path);
        var e = Assert.Throws<StoreLockedException>(() => StoreLock.Acquire(dir.Path));
        Assert.Contains($"in use by another Platter process (pid {Environment.ProcessId})", e.Message);
        Assert.Contains(dir.Path, e.Message);
        first.Dispose();
        using var again = StoreLock.Acquire(dir.Path);
        Assert.Equal(Path.Combine(dir.Path, "platter.lock"), again.Path);
    }

    [Fact]
    public void CreatesTheDirectory()
    {
        using var dir = new TempDirectory();
        using var storeLock = StoreLock.Acquire(dir.Combine("new/store"));
        Assert.True(File.Exists(dir.Combine("new/store/platter.lock")));
    }
}
