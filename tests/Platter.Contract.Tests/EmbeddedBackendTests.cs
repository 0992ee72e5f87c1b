using Platter.Storage;

namespace Platter.Contract.Tests;

/// <summary>The contract on the embedded engine: a fresh store directory per test.</summary>
public sealed class EmbeddedBackendTests : BackendContractTests, IDisposable
{
    private readonly string _directory = Path.Combine(Path.GetTempPath(), $"platter-contract-{Guid.NewGuid():N}");
    private VolumeStore _store;

    public EmbeddedBackendTests()
    {
        _store = VolumeStore.Open(_directory);
    }

    protected override IVolumeBackend Backend => _store;

    protected override void Reopen()
    {
        _store.Dispose();
        _store = VolumeStore.Open(_directory);
    }

    public void Dispose()
    {
        _store.Dispose();
        try { Directory.Delete(_directory, recursive: true); }
        catch (IOException) { }
    }
}
