namespace Platter.VhostUser;

/// <summary>Every limit of the vhost-user-blk back-end, in one place with its reason.</summary>
public static class VhostUserLimits
{
    /// <summary>
    /// Queues per device (GET_QUEUE_NUM). Each started queue has its own worker thread blocked on its kick eventfd, so
    /// this bounds threads per VM; a guest uses min(vCPUs, num-queues) of them, and 8 covers the VMs a small node runs.
    /// </summary>
    public const int QueuesMax = 8;

    /// <summary>
    /// Data segments per request (config seg_max). The header and the status byte take two more descriptors; a driver
    /// that sends more gets an I/O error for that request. 126 + 2 fits QEMU's default queue of 128.
    /// </summary>
    public const int DataSegmentsMax = 126;

    /// <summary>Segments a request holds after translation: a descriptor that spans two memory regions becomes two.</summary>
    internal const int SegmentsPerRequestMax = DataSegmentsMax + 2 + 8;

    /// <summary>
    /// Descriptors of one indirect table (VIRTIO_RING_F_INDIRECT_DESC). A bigger table is a broken driver and breaks the
    /// queue; 1024 is QEMU's own bound (VIRTQUEUE_MAX_SIZE), and a request keeps at most
    /// <see cref="DataSegmentsMax"/> data segments anyway. It also bounds the walk of a hostile table.
    /// </summary>
    public const int IndirectDescriptorsMax = 1024;

    /// <summary>
    /// Requests naming at least this many bytes run on the thread pool, beside the queue's own thread, when more requests
    /// wait behind them; smaller ones run on the queue's thread. Handing a request over costs a few microseconds (a work
    /// item and maybe a thread wake-up), a tenth of what the engine spends moving 64 KiB (about 150 µs per MiB of reads
    /// and more for writes, docs/PERFORMANCE.md), while a 4 KiB request is done in less than the hand-over costs.
    /// </summary>
    public const int OffloadBytesMin = 64 * 1024;

    /// <summary>
    /// A read or write whose data pieces average less than this goes through one pooled buffer: one engine call and a
    /// copy instead of one engine call per piece. Linux hands over a request as a list of guest pages, 4 KiB each unless
    /// physically contiguous; measured per 4 KiB piece, an engine call cost about 1 µs more than copying the piece
    /// (docs/PERFORMANCE.md). From 8 KiB on the copy costs about as much as the call it saves.
    /// </summary>
    public const int BounceSegmentBytesMax = 8 * 1024;

    /// <summary>Bytes of the largest read bounced (see <see cref="BounceSegmentBytesMax"/>): a guest's page list is at most seg_max pages; larger reads go piece by piece rather than hold a bigger buffer.</summary>
    public const int BounceBytesMax = 1024 * 1024;

    /// <summary>
    /// Bytes of write data copied out of guest memory per engine call: a write is copied into a buffer of the server's
    /// before the engine checksums and stores it (a guest may change its pages under I/O), a larger write in pieces of
    /// this size. 1 MiB is the engine's largest extent and about what Linux sends at most in one request.
    /// </summary>
    public const int WriteBufferBytes = 1024 * 1024;

    /// <summary>
    /// Writes of this size or more are copied into a page-aligned native buffer, smaller ones into a pooled array: the
    /// engine writes large aligned writes past the page cache when asked to (<c>platter serve --direct-writes</c>, from
    /// 128 KiB on), and from an aligned buffer it does so without copying the data once more.
    /// </summary>
    public const int AlignedWriteBytesMin = 128 * 1024;

    /// <summary>Alignment of the native write buffers: a page, what O_DIRECT asks of a buffer's address.</summary>
    public const int WriteBufferAlignment = 4096;

    /// <summary>Native write buffers (of <see cref="WriteBufferBytes"/>) a queue keeps for reuse; more in flight are allocated and freed. 4 MiB per busy queue at most.</summary>
    public const int WriteBuffersPooled = 4;

    /// <summary>Bytes one read or write request may move (64 MiB): far above what Linux sends (its max_sectors), low enough that one request cannot hold the engine for long.</summary>
    public const long RequestBytesMax = 64L * 1024 * 1024;

    /// <summary>Ranges in one DISCARD or WRITE_ZEROES request (config max_discard_seg / max_write_zeroes_seg).</summary>
    public const int DiscardRangesMax = 16;

    /// <summary>Sectors of one discard or write-zeroes range: 4 GiB; the engine unmaps whole blocks as a metadata update.</summary>
    public const uint DiscardSectorsMax = 8u * 1024 * 1024;

    /// <summary>
    /// Payload bytes of one control message. The largest we accept is SET_MEM_TABLE with 8 regions (264 bytes) or
    /// GET_CONFIG with its 256-byte config; anything bigger is a broken or hostile front-end and ends the connection.
    /// </summary>
    public const int MessagePayloadMax = 4096;

    /// <summary>Memory regions of SET_MEM_TABLE (the protocol's own limit without CONFIGURE_MEM_SLOTS).</summary>
    public const int MemoryRegionsMax = 8;

    /// <summary>Descriptors one control message may carry (one per memory region).</summary>
    public const int DescriptorsPerMessageMax = 8;

    /// <summary>Bytes of config space served (VHOST_USER_MAX_CONFIG_SIZE); the virtio-blk config itself is 60.</summary>
    public const int ConfigBytesMax = 256;
}
