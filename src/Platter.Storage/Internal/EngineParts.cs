using Microsoft.Extensions.Logging;
using Platter.Storage.Devices;

namespace Platter.Storage.Internal;

/// <summary>
/// What a volume's data path uses of the store: the data area, space, the committer, the pending-operation ring, the reader epochs, counters and
/// the log, and whether the store was opened for salvage. Built once per store; every <see cref="Volume"/> handle
/// holds it. Holds no state of its own but the closed flag.
/// </summary>
internal sealed class EngineParts(IDataDevice data, Space space, Committer committer, PendingRing ring, EpochGate epochs, StorageCounters counters,
    ILogger logger, bool salvage)
{
    public readonly IDataDevice Data = data;
    /// <summary>Where every append to a volume's pending log is copied before the write is acknowledged (survives a process crash).</summary>
    public readonly PendingRing Ring = ring;
    public readonly Space Space = space;
    public readonly Committer Committer = committer;
    public readonly EpochGate Epochs = epochs;
    public readonly StorageCounters Counters = counters;
    public readonly ILogger Logger = logger;
    /// <summary>Opened with <see cref="StoreOptions.Salvage"/>: every volume is read-only, the catalog cannot change.</summary>
    public readonly bool Salvage = salvage;

    private volatile bool _closed;

    public void Close() => _closed = true;

    public void ThrowIfClosed()
    {
        if (_closed) throw new StorageException(StorageError.Closed, "the store is closed");
    }

    /// <summary>An I/O error as the store reports it: NoSpace for ENOSPC, else IoError (counted and logged).</summary>
    public static StorageException DeviceError(IOException e, string what, StorageCounters counters, ILogger logger)
    {
        if (Errno.IsNoSpace(e))
            return new StorageException(StorageError.NoSpace, $"no space left on the data disk during {what}", e);
        Interlocked.Increment(ref counters.IoErrors);
        logger.LogError(e, "I/O error during {What}", what);
        return new StorageException(StorageError.IoError, $"I/O error during {what}: {e.Message}", e);
    }

    public StorageException DeviceError(IOException e, string what) => DeviceError(e, what, Counters, Logger);
}
