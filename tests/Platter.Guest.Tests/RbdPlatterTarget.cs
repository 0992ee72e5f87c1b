namespace Platter.Guest.Tests;

/// <summary>
/// The real <c>platter serve --store rbd:POOL</c> on a one-host Ceph cluster (<see cref="CephTestCluster"/>): the
/// guest's disk is an RBD image behind Platter's NBD export. The first start creates the volume with the real CLI;
/// a start after a SIGKILL first takes the volume over (<c>platter volume takeover</c>), as an operator does after a
/// server crash: the dead server's exclusive lock is never handed over silently.
/// </summary>
public sealed class RbdPlatterTarget : INbdTarget
{
    private readonly PlatterServer _server;
    private bool _volumeCreated;
    private bool _killed;

    /// <summary>A target whose sockets live in <paramref name="workDirectory"/> and whose volume is an image in <paramref name="cluster"/>'s pool.</summary>
    public RbdPlatterTarget(string workDirectory, long sizeBytes, CephTestCluster cluster)
    {
        if (sizeBytes % 512 != 0) throw new ArgumentOutOfRangeException(nameof(sizeBytes), "a volume size is a multiple of 512 bytes");
        _server = new PlatterServer(workDirectory)
        {
            StoreDirectory = "rbd:" + cluster.Pool,
            // a cut-off cluster fails requests within the test's patience instead of librbd's default of never
            ExtraArguments = ["--ceph-conf", cluster.ConfFile, "--ceph-op-timeout", "60"],
        };
        SizeBytes = sizeBytes;
        ExportName = CephTestCluster.UniqueName("guest");
    }

    /// <inheritdoc/>
    public string Name => "platter rbd";

    /// <inheritdoc/>
    public string SocketPath => _server.NbdSocketPath;

    /// <inheritdoc/>
    public string ExportName { get; }

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
        if (_killed)
        {
            var takeover = await _server.CliAsync("volume", "takeover", ExportName);
            if (takeover.ExitCode != 0) throw new InvalidOperationException("platter volume takeover failed:\n" + takeover.Describe());
            _killed = false;
        }
    }

    /// <inheritdoc/>
    public async Task StopAsync(bool graceful, CancellationToken cancellationToken)
    {
        if (!_server.IsRunning) return;
        if (!graceful)
        {
            await _server.KillAsync();
            _killed = true;
            return;
        }
        int exitCode = await _server.StopAsync(cancellationToken);
        if (exitCode != 0) throw new InvalidOperationException($"platter serve exited with code {exitCode} after SIGTERM:\n{Log}");
    }

    /// <inheritdoc/>
    public ValueTask DisposeAsync() => _server.DisposeAsync();
}
