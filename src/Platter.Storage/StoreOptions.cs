using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Platter.Storage;

/// <summary>How to open a store. Defaults suit a server; tests shrink the limits.</summary>
public sealed class StoreOptions
{
    /// <summary>Create the store when the directory holds none. Default true.</summary>
    public bool CreateIfMissing { get; init; } = true;

    /// <summary>Longest time acknowledged writes may stay uncommitted when the client never flushes.</summary>
    public TimeSpan CommitIntervalMax { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>Logger for checksum errors, faults and recovery.</summary>
    public ILoggerFactory LoggerFactory { get; init; } = NullLoggerFactory.Instance;
}
