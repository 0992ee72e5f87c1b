namespace Platter.Storage.Internal;

/// <summary>
/// The engine's sizes, limits and tuning in one place, each with the reason for its value: the on-disk units (block,
/// extent record, journal region), memory and work bounds (overlay, queries, reclaim) and timing (checkpoint age).
/// </summary>
internal static class EngineLimits
{
    /// <summary>The unit of allocation, checksumming and copy-on-write. 4 KiB matches page size and guest file systems.</summary>
    public const int BlockBytes = 4096;
    public const int BlockShift = 12;

    /// <summary>
    /// Longest extent record, in blocks (1 MiB). Bounds an LMDB value to ~1 KiB of checksums, so a 4 KiB overwrite
    /// inside a long extent rewrites at most one small record, while sequential data still needs only one record per MiB.
    /// </summary>
    public const int ExtentBlocksMax = 256;

    /// <summary>
    /// With StoreOptions.DirectWrites, data-file writes of this size or more (aligned to a block) bypass the page cache
    /// (O_DIRECT, FileDataDevice): a
    /// copy-on-write write always lands in new space, whose pages the kernel must allocate before copying into them,
    /// which cost more CPU than the rest of a large write together (docs/PERFORMANCE.md, issue 15). Smaller writes stay
    /// cached: for them the disk's latency would cost more than the copy, and nearby small writes share pages.
    /// </summary>
    public const int DirectWriteBytesMin = 128 * 1024;

    /// <summary>Size of the aligned buffers direct writes copy through: one extent, the largest write the engine issues at once.</summary>
    public const int DirectWriteBufferBytes = ExtentBlocksMax * BlockBytes;

    /// <summary>Aligned buffers a data file keeps for direct writes: one per writer thread on a small server; more are allocated and freed.</summary>
    public const int DirectWriteBuffersPooled = 8;

    /// <summary>
    /// Threads that walk the extents table at open, in slices, while the opening thread builds the maps (decision 0020):
    /// one per core up to this. The walk (LMDB's cursor, the record rules, decoding) costs about twice what building
    /// the maps costs, so more walkers than this would wait for the one builder.
    /// </summary>
    public const int OpenWalkersMax = 4;

    /// <summary>
    /// Slices of the key space per walker at open: enough that a slice is small next to what the chunks hold (10 M
    /// records on two walkers: 156 k records a slice), so a walker ahead of the slice being applied rarely waits.
    /// </summary>
    public const int OpenWalkSlicesPerWalker = 32;

    /// <summary>
    /// Chunks of decoded records (each up to 4,096 records or 64 KiB of CRCs, ~200 KiB) the walkers at open share: what
    /// is walked but not applied yet. 64 chunks, ~13 MiB, hold 262 k one-block records: a walker ahead of the builder
    /// can walk most of a slice before it waits.
    /// </summary>
    public const int OpenWalkChunks = 64;

    /// <summary>Records a chunk of the walk at open holds (one-block records: 16 KiB of CRCs; ~0.3 ms of walking).</summary>
    public const int OpenWalkChunkRecords = 4096;

    /// <summary>Blocks a volume reserves from the allocator at a time, so consecutive writes land contiguously (4 MiB).</summary>
    public const int RegionBlocks = 1024;

    /// <summary>Largest volume: 1 PiB (the minimum) times 64. Block numbers then fit in 44 bits.</summary>
    public const long VolumeBytesMax = 64L << 50;

    /// <summary>Volume sizes are whole sectors; qemu and the Linux block layer think in 512-byte sectors.</summary>
    public const int SizeAlignmentBytes = 512;

    /// <summary>Pending operation bytes that trigger a commit without a flush (bounds memory and replay time).</summary>
    public const int PendingOpBytesSoftMax = 8 << 20;

    /// <summary>
    /// Pending operation bytes past which writers wait for a commit: the hard memory bound of the overlay.
    /// A quarter of a journal half, so a batch always fits in a freshly switched-to half.
    /// </summary>
    public static long PendingOpBytesHardMax(long journalRegionBytes) => journalRegionBytes / 8;

    /// <summary>
    /// Record area of the pending-operation ring (<see cref="PendingRing"/>): half the journal region (64 MiB by
    /// default). A record costs up to twice its operations (a 40-byte header, 8-byte alignment), and writers wait for a
    /// commit at three quarters, so the ring holds more than the hard overlay bound (<see cref="PendingOpBytesHardMax"/>,
    /// an eighth of the region) and writers wait for the ring only when the overlay is that large anyway.
    /// </summary>
    public static long PendingRingBytes(long journalRegionBytes) => Math.Max(256L << 10, journalRegionBytes / 2);

    /// <summary>Bytes in the active journal half after which the store switches halves and checkpoints the full one.</summary>
    public static long JournalSwitchBytes(long journalRegionBytes) => journalRegionBytes / 4;

    /// <summary>Smallest journal region a store may be created with (tests); production uses <see cref="JournalRegionBytes"/>.</summary>
    public const long JournalRegionBytesMin = 1 << 20;

    /// <summary>
    /// Data written since the last commit that triggers a commit without a flush. After a crash, replay re-reads the
    /// data of the last journal record to prove it reached the disk, so this bounds recovery reads too.
    /// </summary>
    public const long PendingDataBytesSoftMax = 256L << 20;

    /// <summary>
    /// The journal region at the start of the data file (default for new stores): two halves, each holding the switch
    /// threshold plus one largest batch (the hard overlay bound).
    /// </summary>
    public const long JournalRegionBytes = 128L << 20;

    /// <summary>
    /// The journal region for a new store in <paramref name="directory"/>: the default (<see cref="JournalRegionBytes"/>)
    /// shrinks to a power of two no larger than a 32nd of the file system, so a store fits on a small one (a 64 MiB
    /// file system gets 2 MiB). The journal only bounds how much is committed between checkpoints; a smaller one
    /// checkpoints more often. An explicit (test) size is kept.
    /// </summary>
    public static long JournalRegionBytesFor(string directory, long requested) =>
        requested == JournalRegionBytes && Devices.FileSystemSpace.Query(directory) is { } fs ? JournalRegionBytesFor(fs.TotalBytes, requested) : requested;

    /// <summary>The rule of <see cref="JournalRegionBytesFor(string, long)"/> for a file system of <paramref name="fileSystemBytes"/>.</summary>
    public static long JournalRegionBytesFor(long fileSystemBytes, long requested)
    {
        long share = Math.Max(JournalRegionBytesMin, fileSystemBytes / 32);
        return Math.Min(requested, (long)System.Numerics.BitOperations.RoundUpToPowerOf2((ulong)share + 1) / 2);
    }

    /// <summary>
    /// Space kept free for metadata on the file system holding the store (and the size of its reserve file; see
    /// <see cref="SpaceReserve"/>): a 32nd of the file system, as ZFS's slop space, at least 1 MiB (a few hundred LMDB
    /// pages: the checkpoint of a small store's deletes) and at most 256 MiB (a checkpoint rewrites at most the
    /// LMDB pages it touches; 256 MiB of pages covers deleting ~60 GiB of fully written volume in one go).
    /// </summary>
    public static long MetadataReserveBytes(long fileSystemBytes) => Math.Clamp(fileSystemBytes / 32, 1L << 20, 256L << 20) & ~(BlockBytes - 1L);

    /// <summary>
    /// Shortest run of freed blocks given back to the file system (64 KiB). A hole punch costs about the same whatever
    /// its length (measured on ext4: 1.3 ms for one 4 KiB block, 150 ms for 512 MiB; docs/PERFORMANCE.md): punching
    /// every block a random overwrite frees would keep the punch thread busy and the space out of the allocator. Shorter
    /// runs stay in the data file as free blocks the store reuses first.
    /// </summary>
    public const int PunchRunBlocksMin = 16;

    /// <summary>
    /// Pending (not yet committed) 4 KiB writes of a volume up to which a small random write still takes a short
    /// freed run (<see cref="Space.Allocate"/>, which compares it with the pending operations' bytes). A write flushed alone is cheapest in space the
    /// file system already holds (no block allocation to sync), but a commit round of many small writes syncs fastest
    /// as one contiguous run from the volume's region: scattered over freed blocks, 32 writers flushing every 32 writes
    /// synced 2.4x slower (docs/PERFORMANCE.md, session 7).
    /// </summary>
    public const int ShortRunPendingWritesMax = 8;

    /// <summary>
    /// Most free space kept allocated in the data file ("warm") for the writes that will reuse it, instead of punched
    /// (1 GiB, 256 Ki blocks). Copy-on-write frees what an overwrite replaces; punching that only for the next writes to
    /// land in the hole cost a 1 MiB sequential overwrite a punch per commit (which holds the file's inode lock against
    /// every write) plus new file-system blocks and fresh page-cache pages for every write: 16% of the server's CPU in
    /// fallocate and most of its 35% in the kernel's copy into new pages (docs/PERFORMANCE.md, issue 15). A round's
    /// frees stay warm only up to the data that round wrote (so deletes and trims, which write nothing, are punched as
    /// before) and while free space stays under this bound and the file system has room beyond it; a writer that finds
    /// the file system full punches the warm space first (<see cref="Space"/>). At most this much of the host's disk is
    /// held by free space that a delete does not give back: about 1 s of sequential writing, four rounds of
    /// <see cref="PendingDataBytesSoftMax"/>.
    /// </summary>
    public const long WarmFreeBlocksMax = (1L << 30) >> BlockShift;

    /// <summary>
    /// Most freed blocks waiting for the punch thread (<see cref="HolePuncher"/>): 4 Mi blocks, 16 GiB of freed space
    /// (32 MiB of block numbers), about 5 s of punching on ext4. Past it the committer punches inline, so a burst of
    /// deletes slows commits instead of growing memory, and a writer never waits long for freed space.
    /// </summary>
    public const long PunchQueueBlocksMax = 4L << 20;

    /// <summary>
    /// Longest a writer that found no space waits for the punch thread to hand freed blocks to the allocator, after the
    /// commit that freed them; a stalled file system must not hang it (it retries, then gets ENOSPC).
    /// </summary>
    public static readonly TimeSpan PunchWaitMax = TimeSpan.FromSeconds(30);

    /// <summary>Longest a journal half stays active before the store switches and checkpoints it (bounds replay work after a crash).</summary>
    public static readonly TimeSpan CheckpointIntervalMax = TimeSpan.FromSeconds(5);

    /// <summary>Stripes of the lock that serialises read-modify-write of partial blocks (two sector writes into one block).</summary>
    public const int RmwLockStripes = 64;

    /// <summary>
    /// Largest reclaim (blocks of the maps compared) done before a delete or rollback returns; larger ones run in the
    /// background. 64 Ki blocks (256 MiB of data) compare in a few milliseconds.
    /// </summary>
    public const long InlineReclaimBlocks = 1 << 16;

    /// <summary>
    /// Longest run one changed-extents or allocation-depth call reports (256 MiB). The work of a call is bounded by it,
    /// since it holds the volume's lock; a block-status reply may cover less than was asked, and clients ask again.
    /// </summary>
    public const long MapQueryBlocksMax = 1 << 16;

    /// <summary>LMDB address space reservation: the largest the metadata file may grow to (1 TiB of virtual space, not disk).</summary>
    public const long MetadataMapBytes = 1L << 40;

    // ---- Relocation (Internal/Relocator.cs; decision 0011) ----

    /// <summary>
    /// The unit the relocator looks at and moves: 1 MiB of a volume (one longest extent record, and the request size of
    /// the sequential reads it exists for).
    /// </summary>
    public const int RelocateChunkBlocks = ExtentBlocksMax;

    /// <summary>
    /// A chunk whose blocks lie in more physical runs than this is moved. At 8 runs a cold 1 MiB read costs at most
    /// 8 device reads of 128 KiB on average, close enough to one; a chunk of random 4 KiB overwrites has up to 256.
    /// </summary>
    public const int RelocateRunsMax = 8;

    /// <summary>
    /// The shortest free extent the relocator moves a chunk into (128 KiB), when no extent of a whole chunk is free.
    /// A chunk moved into pieces this long lies in at most <see cref="RelocateRunsMax"/> runs, so it reads well and is
    /// never picked again; after random overwrites the free space is mostly short runs, and waiting for whole free MiB
    /// left the relocator with nowhere to go (decision 0011).
    /// </summary>
    public const int RelocateExtentBlocksMin = 32;

    /// <summary>
    /// The relocator grows the data file only while it holds at most this many times the referenced blocks. After
    /// random overwrites the free space is single blocks spread evenly (bench/aged.sh: a 512 MiB volume in a 1.4-1.7 GiB
    /// file, 65% free and no free run of 128 KiB), and moving a volume back together needs about its size in fresh
    /// space before its old blocks merge into long free runs; at twice it had no room at all (decision 0011).
    /// </summary>
    public const int RelocateFileReferencedMax = 4;

    /// <summary>
    /// Relocation budget (on by default, decision 0011): 64 MB/s (10^6 bytes) of data moved (read once, written once),
    /// the scrub's default, and only while clients do not write (<see cref="RelocateQuietTime"/>).
    /// </summary>
    public const long RelocateRateBytesPerSecondDefault = 64_000_000;

    /// <summary>
    /// The relocator starts only after this long without a client write, and stops after the chunk in hand when one
    /// comes: moving chunks while clients write costs them I/O and moved chunks the writes scattered again (0011).
    /// </summary>
    public static readonly TimeSpan RelocateQuietTime = TimeSpan.FromSeconds(2);

    /// <summary>How often the relocator looks whether clients went quiet, or whether anything changed since a pass that found nothing to move.</summary>
    public static readonly TimeSpan RelocateIdlePoll = TimeSpan.FromMilliseconds(500);

    // ---- Scrub (Internal/Scrubber.cs) ----

    /// <summary>
    /// Default scrub budget: 64 MB/s (10^6 bytes). A 1 TB store is read in about 4.5 hours (a night); on an SSD that is
    /// a small share of its bandwidth, and reads from the page cache cost the CPU a few percent of one core (CRC32C
    /// runs at GB/s). Clients' throughput and latency with and without it: docs/PERFORMANCE.md. `--rate` changes it.
    /// </summary>
    public const long ScrubRateBytesPerSecondDefault = 64_000_000;

    /// <summary>
    /// Blocks gathered from the maps, sorted by physical block and read per batch (16 MiB). The resume point moves
    /// forward a batch at a time, so at most one batch is read again after a crash or a stop.
    /// </summary>
    public const int ScrubBatchBlocksMax = 4096;

    /// <summary>
    /// Map entries looked at per hold of a volume's lock while gathering a batch (about 50 µs of work): writers of that
    /// volume wait at most that long for the scrubber.
    /// </summary>
    public const int ScrubLockedVisitsMax = 1024;

    /// <summary>Longest read of the scrubber (1 MiB, first to last block of a run): the unit the budget paces.</summary>
    public const int ScrubRunBlocksMax = 256;

    /// <summary>
    /// Unreferenced blocks a scrub read may span between two blocks it checks (32 KiB), rather than splitting the read
    /// in two: reading 32 KiB more costs a disk less than another request (an SSD's 4 KiB random read takes about as
    /// long as a 32 KiB transfer; a disk head's seek far longer), so a fragmented store is read in fewer, larger reads.
    /// The blocks in the gap are read and not checked.
    /// </summary>
    public const int ScrubGapBlocksMax = 8;

    /// <summary>
    /// Scrub reads submitted ahead of the one being checked (each up to <see cref="ScrubRunBlocksMax"/>: 4 MiB of
    /// aligned memory for a running scrub). Checking 1 MiB takes a fraction of a millisecond, reading it one to ten,
    /// so a few reads queued keep the disk busy while the CPU checks; more only holds memory.
    /// </summary>
    public const int ScrubReadsAheadMax = 4;

    /// <summary>
    /// Threads that read for the scrubber: two reads at the disk at once, so the disk never waits for the next request
    /// between two reads (what the kernel's read-ahead does for a buffered sequential reader such as dd). One more
    /// would not help a sequential read and would take more of the clients' queue.
    /// </summary>
    public const int ScrubReaderThreads = 2;

    /// <summary>How often a running scrub writes its progress file (at most this much work is redone after a crash).</summary>
    public static readonly TimeSpan ScrubPersistInterval = TimeSpan.FromSeconds(2);

    /// <summary>Bad blocks a scrub keeps listed (and in its progress file); more are still logged and counted.</summary>
    public const int ScrubBadBlocksListedMax = 10_000;

    /// <summary>
    /// Leaves of one volume's map kept in the dense form (3 KiB each, 12 MiB here) after writes unpacked them; older
    /// ones are packed again (decision 0010). The leaves a volume is writing stay fast to change, and the map's memory
    /// stays about 4 bytes per mapped block however much of the volume has been written.
    /// </summary>
    public const int DenseLeavesPerMapMax = 4096;

    /// <summary>
    /// Default budget of the map cache (<see cref="StoreOptions.MapCacheBytes"/>, decisions 0013, 0019): the packed
    /// leaves loaded at open and the CRCs of full-run ones (4 bytes per mapped block) that may stay in memory. 1 GiB
    /// holds the CRCs of 256 GiB written sequentially; beyond that the parts read longest ago leave memory and are
    /// rebuilt from the metadata store when something needs them.
    /// </summary>
    public const long MapCacheBytesDefault = 1L << 30;
}
