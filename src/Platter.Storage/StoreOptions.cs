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

    /// <summary>
    /// Large aligned writes (128 KiB or more) bypass the page cache (O_DIRECT; <c>platter serve --direct-writes</c>).
    /// Off by default: it roughly halves the CPU and time of large writes, imports and copies into new space, but data
    /// written this way is not in the page cache, so reading it back soon after goes to the disk (docs/PERFORMANCE.md,
    /// issue 15: 1 MiB reads of just-written data at a fifth of the cached rate). For servers whose guests, with their
    /// own caches, rarely read back what they just wrote, and for bulk loads.
    /// </summary>
    public bool DirectWrites { get; init; }

    /// <summary>Logger for checksum errors, faults and recovery.</summary>
    public ILoggerFactory LoggerFactory { get; init; } = NullLoggerFactory.Instance;

    /// <summary>
    /// Opens the data file's device (which also holds the metadata journal in its first
    /// JournalRegionBytes). Tests wrap it to inject faults; null means a plain file.
    /// </summary>
    internal Func<string, Devices.IDataDevice>? DataDeviceFactory { get; init; }

    /// <summary>
    /// Called on the reclaim's own thread with true when a background reclaim starts and false when it has handed all
    /// its blocks over (or failed); a test hook, so the crash tests can tell whether a kill landed inside a reclaim.
    /// </summary>
    internal Action<bool>? BackgroundReclaimForTests { get; init; }

    /// <summary>Called inside each metadata checkpoint before the KV commit; a test hook that may throw to simulate a failed commit.</summary>
    internal Action? BeforeCheckpointCommit { get; init; }

    /// <summary>Journal region size for a new store (kept in its metadata; an existing store keeps its own). Tests use small ones.</summary>
    internal long JournalRegionBytes { get; init; } = Internal.EngineLimits.JournalRegionBytes;

    /// <summary>Bytes kept free for metadata on the store's file system (null: <see cref="Internal.EngineLimits.MetadataReserveBytes"/>). Tests set it.</summary>
    internal long? MetadataReserveBytes { get; init; }

    /// <summary>Size of each data file growth step. Tests use small steps to reach ENOSPC quickly.</summary>
    internal long DataGrowthBytes { get; init; } = 256L << 20;

    /// <summary>
    /// Opens a damaged store to get its intact volumes out: the metadata is verified as on every open, but instead of
    /// refusing, the volumes whose metadata is damaged are set aside (listed in <see cref="VolumeStore.Damage"/>) and
    /// the rest served read-only. Nothing is written to the store (no replayed journal is checkpointed, the catalog
    /// cannot change), so a later repair or a second look finds it as it was. Never creates a store.
    /// </summary>
    public bool Salvage { get; init; }

    /// <summary>
    /// Budget of the relocator, which moves scattered data back together while clients do not write (bytes moved per
    /// second; decision 0011). On by default at <see cref="Internal.EngineLimits.RelocateRateBytesPerSecondDefault"/>;
    /// 0 turns it off (fault-injection tests, which need the same device calls for the same seed, and tests that run
    /// passes themselves).
    /// </summary>
    internal long RelocateRateBytesPerSecond { get; init; } = Internal.EngineLimits.RelocateRateBytesPerSecondDefault;

    /// <summary>
    /// The boot the pending-operation ring belongs to (null: this machine's, from /proc/sys/kernel/random/boot_id).
    /// Tests set another to play a reboot or a power cut, after which the ring is ignored.
    /// </summary>
    internal string? BootIdForTests { get; init; }

    /// <summary>
    /// Budget of the map cache (decisions 0013, 0019; <c>platter serve --map-cache</c>): the map leaves loaded at open
    /// (where scattered blocks are, with their CRCs) and the CRCs of sequentially written ones may take this many bytes
    /// of memory; past it, those read longest ago are dropped and rebuilt from the metadata store when needed. What
    /// stays besides is a small stub per scattered leaf (~110 bytes per MiB of address space holding data) and ~36 bytes
    /// per MiB written sequentially. Leaves changed since open stay in memory. Default
    /// <see cref="Internal.EngineLimits.MapCacheBytesDefault"/> (1 GiB: the maps of ~256 GiB written sequentially, or
    /// of ~270 GiB scattered at one 4 KiB extent per 64 KiB).
    /// </summary>
    public long MapCacheBytes { get; init; } = MapCacheBytesDefault;

    /// <summary>The default of <see cref="MapCacheBytes"/>.</summary>
    public const long MapCacheBytesDefault = Internal.EngineLimits.MapCacheBytesDefault;

    /// <summary>Largest the data file may grow to (a quota; ENOSPC past it). Default: unlimited.</summary>
    public long DataBytesMax { get; init; } = long.MaxValue;
}
