namespace Platter.Guest.Tests;

/// <summary>
/// The real <c>platter serve</c> process (the shared <see cref="PlatterServer"/> launcher) on a private store, NBD
/// and the management API on unix sockets, no TCP. The first start creates the volume with the real CLI
/// (<c>platter volume create guest --size 512M</c>); later starts reopen the same store, so the guest sees whatever
/// Platter kept across the restart.
/// </summary>
public sealed class PlatterTarget : INbdTarget
{
    private readonly PlatterServer _server;
    private bool _volumeCreated;

    /// <summary>
    /// Creates a target whose store and sockets live in <paramref name="workDirectory"/>; <paramref name="extraArguments"/>
    /// go to <c>platter serve</c> (e.g. <c>--vhost-user-dir DIR</c>).
    /// </summary>
    public PlatterTarget(string workDirectory, long sizeBytes, params string[] extraArguments)
    {
        if (sizeBytes % 512 != 0) throw new ArgumentOutOfRangeException(nameof(sizeBytes), "a volume size is a multiple of 512 bytes");
        _server = new PlatterServer(workDirectory) { ExtraArguments = extraArguments };
        SizeBytes = sizeBytes;
    }

    /// <summary>
    /// The published executable the server and CLI calls run (<see cref="PlatterServer.Binary"/>); null runs
    /// platter.dll under dotnet. Set before the first start.
    /// </summary>
    public string? Binary
    {
        get => _server.Binary;
        set => _server.Binary = value;
    }

    /// <summary>The running server's process id.</summary>
    public int ProcessId => _server.ProcessId;

    /// <inheritdoc/>
    public string Name => "platter";

    /// <inheritdoc/>
    public string SocketPath => _server.NbdSocketPath;

    /// <inheritdoc/>
    public string ExportName => "guest";

    /// <inheritdoc/>
    public long SizeBytes { get; }

    /// <inheritdoc/>
    public string Log => _server.Log;

    /// <inheritdoc/>
    public async Task StartAsync(CancellationToken cancellationToken)
    {
        await _server.StartAsync(cancellationToken);
        if (!_volumeCreated)
        {
            await _server.CreateExportAsync(ExportName, SizeBytes);
            _volumeCreated = true;
        }
    }

    /// <summary>Runs the real CLI (<c>platter ARGS --api-socket SOCKET</c>) against this server.</summary>
    public Task<ProcessResult> CliAsync(params string[] args) => _server.CliAsync(args);

    /// <inheritdoc/>
    public async Task StopAsync(bool graceful, CancellationToken cancellationToken)
    {
        if (!_server.IsRunning) return;
        if (!graceful)
        {
            await _server.KillAsync();
            return;
        }
        // A server that cannot shut down cleanly is a bug the test should see.
        int exitCode = await _server.StopAsync(cancellationToken);
        if (exitCode != 0) throw new InvalidOperationException($"platter serve exited with code {exitCode} after SIGTERM:\n{Log}");
    }

    /// <inheritdoc/>
    public ValueTask DisposeAsync() => _server.DisposeAsync();
}
