namespace Platter.Interop.Tests.Infrastructure;

/// <summary>An NBD server under test: exports on a unix socket, stoppable with SIGTERM and restartable on the same data.</summary>
public interface ITestServer : IAsyncDisposable
{
    /// <summary>Creates an empty export of <paramref name="sizeBytes"/> named <paramref name="name"/>.</summary>
    Task<NbdExport> CreateExportAsync(string name, long sizeBytes);

    Task StartAsync();

    /// <summary>Sends SIGTERM, waits for exit and returns the exit code.</summary>
    Task<int> StopAsync();

    /// <summary>A scratch directory owned by the server's lifetime.</summary>
    string ScratchDirectory { get; }

    /// <summary>What the server printed, for failure messages.</summary>
    string Log { get; }
}
