namespace Platter.Interop.Tests.Infrastructure;

/// <summary>One server per test class: started before the first test, stopped after the last.</summary>
public sealed class ServerFixture : IAsyncLifetime
{
    public ITestServer Server { get; } =
        Environment.GetEnvironmentVariable("PLATTER_INTEROP_PEER") == "qemu-nbd" ? new QemuNbdServer() : new PlatterServer();

    /// <summary>Creates an export with a name unique within this server.</summary>
    public Task<NbdExport> CreateExportAsync(string prefix, long sizeBytes) =>
        Server.CreateExportAsync($"{prefix}-{Interlocked.Increment(ref _sequence)}", sizeBytes);

    private int _sequence;

    public Task InitializeAsync() => Server.StartAsync();

    public Task DisposeAsync() => Server.DisposeAsync().AsTask();
}
