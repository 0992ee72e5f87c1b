namespace Platter.Interop.Tests;

/// <summary>
/// Base of every interop test: a server shared by the class (see <see cref="ServerFixture"/>), a private
/// scratch directory per test, and the server's log written to the test output so a failure shows both sides.
/// </summary>
public abstract class InteropTest(ServerFixture fixture, ITestOutputHelper output) : IDisposable
{
    protected ServerFixture Fixture { get; } = fixture;
    protected PlatterServer Server => Fixture.Server;
    protected ITestOutputHelper Output { get; } = output;
    protected TempDirectory Scratch { get; } = new("plt-t");

    public void Dispose()
    {
        var log = Server.Log;
        Output.WriteLine("--- server log (tail) ---");
        Output.WriteLine(log.Length <= 16_000 ? log : "[...]\n" + log[^16_000..]);
        Scratch.Dispose();
        GC.SuppressFinalize(this);
    }

    protected const long MiB = 1024 * 1024;
    protected const long KiB = 1024;
}
