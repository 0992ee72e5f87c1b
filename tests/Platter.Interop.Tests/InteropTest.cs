namespace Platter.Interop.Tests;

/// <summary>
/// Base of every interop test: a server shared by the class (see <see cref="ServerFixture"/>), a private
/// scratch directory per test, and the server's log written to the test output so a failure shows both sides.
/// </summary>
public abstract class InteropTest(ServerFixture fixture, ITestOutputHelper output) : IAsyncLifetime
{
    protected ServerFixture Fixture { get; } = fixture;
    protected PlatterServer Server => Fixture.Server;
    protected ITestOutputHelper Output { get; } = output;
    protected TempDirectory Scratch { get; } = new("plt-t");

    /// <summary>Restarts the class's server if an earlier test stopped it and failed before starting it again.</summary>
    public async Task InitializeAsync()
    {
        if (!Server.IsRunning) await Server.StartAsync();
    }

    public Task DisposeAsync()
    {
        var log = Server.Log;
        Output.WriteLine("--- server log (tail) ---");
        Output.WriteLine(log.Length <= 16_000 ? log : "[...]\n" + log[^16_000..]);
        Scratch.Dispose();
        return Task.CompletedTask;
    }

    protected const long MiB = 1024 * 1024;
    protected const long KiB = 1024;
}
