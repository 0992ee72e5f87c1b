using Platter.Storage;

namespace Platter.Contract.Tests;

/// <summary>The contract on the embedded engine: a fresh store directory per test.</summary>
public sealed class EmbeddedBackendTests : BackendContractTests, IDisposable
{
    private readonly TempDirectory _directory = new("platter-contract");
    private VolumeStore _store;

    public EmbeddedBackendTests()
    {
        _store = VolumeStore.Open(_directory.Path);
    }

    protected override IVolumeBackend Backend => _store;

    protected override void Reopen()
    {
        _store.Dispose();
        _store = VolumeStore.Open(_directory.Path);
    }

    public void Dispose()
    {
        _store.Dispose();
        _directory.Dispose();
    }
}
