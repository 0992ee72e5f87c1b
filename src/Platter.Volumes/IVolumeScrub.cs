namespace Platter.Volumes;

/// <summary>
/// A backend that scrubs its own data while it serves: reads every stored block and verifies its checksum, so damage
/// in data nobody reads (an old snapshot, a cold region) is found before a reader needs it. The embedded engine
/// implements it. A Ceph store does not: BlueStore checksums every read and Ceph deep-scrubs its placement groups on
/// its own schedule (<c>ceph pg deep-scrub</c>, <c>ceph osd pool deep-scrub POOL</c>), so Platter never reads a
/// whole pool through the network to do it again.
/// </summary>
public interface IVolumeScrub
{
    /// <summary>
    /// Starts a scrub of <paramref name="targets"/> (<c>volume</c> or <c>volume@snapshot</c> names; empty: the whole
    /// store) at <paramref name="rateBytesPerSecond"/> (null: the default budget, 0: no limit). A paused scrub of the
    /// same targets resumes where it stopped unless <paramref name="restart"/>. A running scrub of the same targets
    /// takes the new rate; one of other targets is refused (InUse) until it is stopped.
    /// </summary>
    ScrubStatus StartScrub(IReadOnlyList<string> targets, long? rateBytesPerSecond, bool restart);

    /// <summary>Pauses a running scrub, keeping its progress (a later start resumes it). Nothing running: no change.</summary>
    ScrubStatus StopScrub();

    /// <summary>Progress, rate, estimate and the bad blocks listed now (each with every version and offset that references it).</summary>
    ScrubStatus GetScrubStatus();
}

/// <summary>Where a scrub stands.</summary>
public enum ScrubState
{
    /// <summary>No scrub has run on this store.</summary>
    None,
    /// <summary>Reading blocks now.</summary>
    Running,
    /// <summary>Stopped by <c>scrub stop</c>, progress kept: a start resumes it.</summary>
    Paused,
    /// <summary>Every block of its targets was checked.</summary>
    Finished,
}

/// <summary>A scrub's progress and what it found.</summary>
/// <param name="State">Running, paused, finished (or none).</param>
/// <param name="Targets">The volumes and snapshots it reads; empty for the whole store.</param>
/// <param name="RateBytesPerSecond">The I/O budget; 0 means unlimited.</param>
/// <param name="BlocksTotal">Blocks to check (for named targets an upper bound: blocks shared between them count once when checked).</param>
/// <param name="BlocksChecked">Blocks read and verified so far in this scrub (each physical block once).</param>
/// <param name="BadBlocksFound">Bad blocks this scrub found.</param>
/// <param name="CurrentBytesPerSecond">Measured read rate while running (0 otherwise).</param>
/// <param name="EtaSeconds">Estimated seconds until it finishes, while running; null otherwise.</param>
/// <param name="StartedUtc">When this scrub started (a resume keeps it).</param>
/// <param name="FinishedUtc">When it finished, or null.</param>
/// <param name="BadBlocks">Bad blocks still referenced (a block leaves the list when it is freed or overwritten).</param>
public sealed record ScrubStatus(ScrubState State, IReadOnlyList<string> Targets, long RateBytesPerSecond, long BlocksTotal, long BlocksChecked,
    long BadBlocksFound, double CurrentBytesPerSecond, double? EtaSeconds, DateTimeOffset? StartedUtc, DateTimeOffset? FinishedUtc,
    IReadOnlyList<BadBlock> BadBlocks)
{
    /// <summary>Blocks are 4 KiB.</summary>
    public long BytesChecked => BlocksChecked * 4096;

    /// <summary>Percent done (0 to 100).</summary>
    public double Percent => State == ScrubState.Finished ? 100 : BlocksTotal <= 0 ? 0 : Math.Min(100, 100.0 * BlocksChecked / BlocksTotal);
}

/// <summary>A stored block whose content does not match its checksum (or that the disk failed to read).</summary>
/// <param name="PhysicalBlock">The block's number in the data file (after the journal region).</param>
/// <param name="Reason"><c>checksum_mismatch</c> or <c>io_error</c>.</param>
/// <param name="FoundUtc">When the scrub found it.</param>
/// <param name="References">Every volume and snapshot that references it, with the byte offset in each.</param>
public sealed record BadBlock(long PhysicalBlock, string Reason, DateTimeOffset FoundUtc, IReadOnlyList<BlockReference> References);

/// <summary>One version (volume or <c>volume@snapshot</c>) that references a block, and where.</summary>
public sealed record BlockReference(string Version, long Offset);
