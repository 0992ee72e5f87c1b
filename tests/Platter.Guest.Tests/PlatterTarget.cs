namespace Platter.Guest.Tests;

/// <summary>
/// The real <c>platter serve</c> process (the shared <see cref="PlatterServer"/> launcher), NBD and the management API
/// on unix sockets, no TCP: on a private embedded store, or with a <see cref="CephTestCluster"/> on
/// <c>--store rbd:POOL</c> so that the guest's disk is an RBD image behind Platter's NBD export. The first start
/// creates the volume with the real CLI (<c>platter volume create NAME --size 512M</c>); later starts reopen the same
/// store, so the guest sees whatever Platter kept across the restart. On RBD a start after a SIGKILL first takes the
/// volume over (<c>platter volume takeover</c>), as an operator does after a server crash: the dead server's exclusive
/// lock is never handed over silently.
/// </summary>
public sealed class PlatterTarget : INbdTarget
{
    private readonly PlatterServer _server;
    private readonly bool _rbd;
    private bool _volumeCreated;
    private bool _killed;

    /// <summary>
    /// Creates a target whose store and sockets live in <paramref name="workDirectory"/>; <paramref name="extraArguments"/>
    /// go to <c>platter serve</c> (e.g. <c>--vhost-user-dir DIR</c>).
    /// </summary>
    public PlatterTarget(string workDirectory, long sizeBytes, params string[] extraArguments)
        : this(workDirectory, sizeBytes, cluster: null, extraArguments)
    {
    }

    /// <summary>
    /// Creates a target whose sockets live in <paramref name="workDirectory"/> and whose volume is an image in
    /// <paramref name="cluster"/>'s pool (or, without a cluster, on an embedded store in the directory).
    /// </summary>
    public PlatterTarget(string workDirectory, long sizeBytes, CephTestCluster? cluster, params string[] extraArguments)
    {
        if (sizeBytes % 512 != 0) throw new ArgumentOutOfRangeException(nameof(sizeBytes), "a volume size is a multiple of 512 bytes");
        _server = new PlatterServer(workDirectory) { ExtraArguments = extraArguments };
        if (cluster is not null)
        {
            _rbd = true;
            _server.StoreDirectory = "rbd:" + cluster.Pool;
            // a cut-off cluster fails requests within the test's patience instead of librbd's default of never
            _server.ExtraArguments = ["--ceph-conf", cluster.ConfFile, "--ceph-op-timeout", "60", .. extraArguments];
        }
        SizeBytes = sizeBytes;
        // Images of every RBD test share the cluster: a unique name keeps this test's volume its own.
        ExportName = cluster is null ? "guest" : CephTestCluster.UniqueName("guest");
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
    public string Name => _rbd ? "platter rbd" : "platter";

    /// <inheritdoc/>
    public string SocketPath => _server.NbdSocketPath;

    /// <inheritdoc/>
    public string ExportName { get; }

    /// <inheritdoc/>
    public long SizeBytes { get; }

    /// <inheritdoc/>
    public string Log => _server.Log;

    /// <summary>What each thread of the running server waits on (see <see cref="PlatterServer.DescribeThreads"/>), for a hang's failure message.</summary>
    public string DescribeThreads() => _server.DescribeThreads();

    /// <inheritdoc/>
    public async Task StartAsync(CancellationToken cancellationToken)
    {
        await _server.StartAsync(cancellationToken);
        if (!_volumeCreated)
        {
            await _server.CreateExportAsync(ExportName, SizeBytes);
            _volumeCreated = true;
        }
        if (_killed && _rbd)
        {
            var takeover = await _server.CliAsync("volume", "takeover", ExportName);
            if (takeover.ExitCode != 0) throw new InvalidOperationException("platter volume takeover failed:\n" + takeover.Describe());
        }
        _killed = false;
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
            _killed = true;
            return;
        }
        // A server that cannot shut down cleanly is a bug the test should see.
        int exitCode = await _server.StopAsync(cancellationToken);
        if (exitCode != 0) throw new InvalidOperationException($"platter serve exited with code {exitCode} after SIGTERM:\n{Log}");
    }

    /// <inheritdoc/>
    public ValueTask DisposeAsync() => _server.DisposeAsync();
}
