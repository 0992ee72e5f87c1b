using Platter.Storage.Internal;
using Platter.Storage.Tests.Support;
using Xunit;

namespace Platter.Storage.Tests;

/// <summary>
/// Open reads the metadata file ahead of its walk over every record (issue 15, target 5: a cold open at 10 M records
/// took 12 s, faulting in one page at a time). The read-ahead is a hint: it must read the whole file when left to run,
/// stop when the walk ends first, and never fail an open.
/// </summary>
public sealed class MetadataReadAheadTests : IDisposable
{
    private readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    private string MakeFile(long bytes)
    {
        var path = Path.Combine(_dir.Path, "data.mdb");
        using var f = File.OpenHandle(path, FileMode.Create, FileAccess.Write);
        RandomAccess.Write(f, new byte[1], bytes - 1);
        return path;
    }

    [Fact]
    public void Reads_the_whole_file_when_the_walk_takes_longer()
    {
        var path = MakeFile(48L << 20);
        using var ahead = new MetadataReadAhead(path);
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (ahead.BytesRead < 48L << 20 && DateTime.UtcNow < deadline) Thread.Sleep(5);
        Assert.Equal(48L << 20, ahead.BytesRead);
    }

    [Fact]
    public void Stops_when_the_walk_ends_first_and_skips_small_or_missing_files()
    {
        var path = MakeFile(256L << 20);
        var ahead = new MetadataReadAhead(path);
        ahead.Dispose(); // joins the thread: nothing reads after this
        long stoppedAt = ahead.BytesRead;
        Thread.Sleep(50);
        Assert.Equal(stoppedAt, ahead.BytesRead);

        using (var small = new MetadataReadAhead(MakeFile(1L << 20))) Assert.Equal(0, small.BytesRead);
        using (var missing = new MetadataReadAhead(Path.Combine(_dir.Path, "none", "data.mdb"))) Assert.Equal(0, missing.BytesRead);
    }
}
