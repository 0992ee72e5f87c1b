namespace Platter.Guest.Tests;

/// <summary>
/// The NBD server under test: something that serves one volume over NBD on a unix socket and keeps
/// its data across restarts. The guest tests only know this interface, so the same test runs against
/// Platter (<see cref="PlatterTarget"/>: <c>platter serve --store DIR --socket PATH --listen none</c> and,
/// on first start, <c>platter volume create guest --size 512M</c>) and, to tell a guest or test problem
/// from a server problem, against qemu-nbd (<see cref="QemuNbdTarget"/>).
/// </summary>
/// <remarks>
/// Contract:
/// <list type="bullet">
/// <item>The first <see cref="StartAsync"/> creates an empty (all-zero) volume of <see cref="SizeBytes"/>;
/// later starts serve the same volume with whatever was durably written before.</item>
/// <item><see cref="StartAsync"/> returns only when <see cref="SocketPath"/> accepts connections, and throws
/// with the server's own output if the server exits or does not become ready.</item>
/// <item>The export must accept more than one connection over its lifetime (a readiness probe and the guest).</item>
/// <item><see cref="StopAsync"/> stops the server; with <c>graceful: false</c> it is killed with SIGKILL, so
/// only data the client flushed may be relied on afterwards.</item>
/// </list>
/// </remarks>
public interface INbdTarget : IAsyncDisposable
{
    /// <summary>A short name for logs and failure messages, such as "qemu-nbd raw".</summary>
    string Name { get; }

    /// <summary>Absolute path of the unix socket the server listens on (shorter than 108 bytes, no commas).</summary>
    string SocketPath { get; }

    /// <summary>The NBD export name the client asks for.</summary>
    string ExportName { get; }

    /// <summary>Size of the volume in bytes.</summary>
    long SizeBytes { get; }

    /// <summary>Everything the server printed so far, across restarts, with start/stop markers; for failure messages.</summary>
    string Log { get; }

    /// <summary>Starts the server (creating the volume on the first start) and waits until it accepts connections.</summary>
    Task StartAsync(CancellationToken cancellationToken);

    /// <summary>Stops the server: SIGTERM and wait for a clean exit when <paramref name="graceful"/>, SIGKILL otherwise.</summary>
    Task StopAsync(bool graceful, CancellationToken cancellationToken);
}
