namespace Platter.Interop.Tests.Infrastructure;

/// <summary>One <c>platter serve</c> per test class: started before the first test, stopped after the last.</summary>
public sealed class ServerFixture : IAsyncLifetime
{
    private int _sequence;

    public PlatterServer Server { get; } = new();

    /// <summary>Creates a volume named <c>PREFIX-N</c>, unique within this server, so tests of a class never share one.</summary>
    public Task<NbdExport> CreateExportAsync(string prefix, long sizeBytes) =>
        Server.CreateExportAsync($"{prefix}-{Interlocked.Increment(ref _sequence)}", sizeBytes);

    public Task InitializeAsync() => Server.StartAsync();

    public Task DisposeAsync() => Server.DisposeAsync().AsTask();
}
