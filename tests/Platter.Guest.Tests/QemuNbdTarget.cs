namespace Platter.Guest.Tests;

/// <summary>
/// qemu-nbd serving a raw file: the reference server. When the guest test fails on Platter, the same test
/// on qemu-nbd (PLATTER_GUEST_QEMU_NBD=1) says whether the guest, QEMU or the test itself is at fault.
/// </summary>
public sealed class QemuNbdTarget : INbdTarget
{
    private static readonly TimeSpan ReadyTimeout = TimeSpan.FromSeconds(20);
    private static readonly TimeSpan StopTimeout = TimeSpan.FromSeconds(20);
    private readonly string _imagePath;
    private readonly System.Text.StringBuilder _log = new();
    private ChildProcess? _server;

    /// <summary>Creates a target whose image and socket live in <paramref name="workDirectory"/>.</summary>
    public QemuNbdTarget(string workDirectory, long sizeBytes)
    {
        _imagePath = Path.Combine(workDirectory, "volume.raw");
        SocketPath = Path.Combine(workDirectory, "nbd.sock");
        SizeBytes = sizeBytes;
    }

    /// <inheritdoc/>
    public string Name => "qemu-nbd raw";

    /// <inheritdoc/>
    public string SocketPath { get; }

    /// <inheritdoc/>
    public string ExportName => "guest";

    /// <inheritdoc/>
    public long SizeBytes { get; }

    /// <inheritdoc/>
    public string Log
    {
        get
        {
            lock (_log) { return _server is null ? _log.ToString() : _log + _server.Output; }
        }
    }

    /// <inheritdoc/>
    public async Task StartAsync(CancellationToken cancellationToken)
    {
        if (_server is not null) throw new InvalidOperationException("already started");
        if (!File.Exists(_imagePath))
        {
            // A sparse file reads as zeros, like a new volume.
            using var f = new FileStream(_imagePath, FileMode.CreateNew, FileAccess.Write);
            f.SetLength(SizeBytes);
        }
        File.Delete(SocketPath);
        _server = ChildProcess.Start(ProcessRunner.RequireTool("qemu-nbd", "qemu-utils"),
        [
            "--socket=" + SocketPath,
            "--format=raw",
            "--export-name=" + ExportName,
            // Stay up across connections: the readiness probe is one, the guest another.
            "--persistent",
            // Writeback honours the client's FLUSH with fdatasync, which is the durability contract a
            // guest relies on; anything weaker (cache=unsafe) would make the restart check meaningless.
            "--cache=writeback",
            // Pass the guest's discards (mke2fs discards the whole device) through as hole punches.
            "--discard=unmap",
            _imagePath,
        ]);
        await _server.WaitUntilListeningAsync([SocketPath], ReadyTimeout, cancellationToken);
    }

    /// <inheritdoc/>
    public async Task StopAsync(bool graceful, CancellationToken cancellationToken)
    {
        if (_server is not { } server) return;
        try
        {
            if (!graceful) await server.KillAsync();
            else if (await server.TerminateAsync(StopTimeout, cancellationToken) is int exitCode and not 0)
                throw new InvalidOperationException($"qemu-nbd exited with code {exitCode} after SIGTERM:\n{server.Output}");
        }
        finally
        {
            await server.DisposeAsync();
            lock (_log)
            {
                _log.AppendLine($"--- qemu-nbd stopped ({(graceful ? "SIGTERM" : "SIGKILL")})");
                _log.Append(server.Output);
                _server = null;
            }
        }
    }

    /// <inheritdoc/>
    public async ValueTask DisposeAsync()
    {
        if (_server is not null)
        {
            await _server.DisposeAsync();
            _server = null;
        }
    }
}
