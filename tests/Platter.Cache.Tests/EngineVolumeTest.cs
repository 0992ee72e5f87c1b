using Platter.Storage;
using Xunit.Abstractions;

namespace Platter.Cache.Tests;

/// <summary>
/// What every cache test stands on: a scratch directory with an embedded store holding one volume, <c>vm1</c>, of
/// the given size (the backend below the cache), and a read helper.
/// </summary>
public abstract class EngineVolumeTest : IDisposable
{
    protected const int Block = 4096;

    protected readonly ITestOutputHelper _output;
    protected readonly TempDirectory _scratch = new("plt-cache");
    protected readonly VolumeStore _store;

    protected EngineVolumeTest(ITestOutputHelper output, long volumeBytes)
    {
        _output = output;
        _store = VolumeStore.Open(_scratch.Combine("store"));
        _store.CreateVolume("vm1", volumeBytes);
    }

    /// <summary>The scratch directory's path (cache files go here).</summary>
    protected string _dir => _scratch.Path;

    protected static async Task<byte[]> ReadAsync(IVolumeHandle h, long offset, int length)
    {
        var data = new byte[length];
        await h.ReadAsync(offset, data);
        return data;
    }

    public void Dispose()
    {
        _store.Dispose();
        _scratch.Dispose();
        GC.SuppressFinalize(this);
    }
}
