namespace Platter.Nbd;

/// <summary>
/// Every bound the NBD server enforces, in one place, each with the reason it exists.
/// A client that exceeds a bound gets the protocol's error or loses its connection; it never
/// makes the server allocate without limit or wait forever.
/// </summary>
public static class NbdLimits
{
    /// <summary>
    /// Largest READ/WRITE payload (advertised as the maximum block size). 32 MiB is the size the spec says
    /// every client may use without being considered a denial of service, and what QEMU caps itself to.
    /// </summary>
    public const int PayloadBytesMax = 32 * 1024 * 1024;

    /// <summary>
    /// Largest WRITE payload that is read and thrown away (in small pieces, never held in memory) so that an
    /// over-size write can be answered EINVAL and the connection stays in step, as nbdkit does. Twice the maximum
    /// block size: a client that sends more than that is not confused about the limit, it is not an NBD client,
    /// and reading its gigabytes would only waste the link; the connection is closed instead.
    /// </summary>
    public const long WritePayloadDiscardBytesMax = 2L * PayloadBytesMax;

    /// <summary>
    /// Requests one connection may have in flight before the server stops reading from it (backpressure).
    /// 64 covers QEMU's and libnbd's default queue depths with room to spare, and bounds the reply queue.
    /// </summary>
    public const int InFlightRequestsPerConnectionMax = 64;

    /// <summary>
    /// Payload bytes (write data received plus read data being prepared) one connection may hold at once.
    /// Two maximum-size requests: enough for streaming, and bounds memory per connection to a known amount
    /// whatever the queue depth.
    /// </summary>
    public const long InFlightPayloadBytesPerConnectionMax = 2L * PayloadBytesMax;

    /// <summary>
    /// Largest option payload read into memory during the handshake. The biggest legitimate option is
    /// SET/LIST_META_CONTEXT: an export name plus a handful of queries, each at most 4096 bytes.
    /// </summary>
    public const int OptionBytesMax = 64 * 1024;

    /// <summary>
    /// Oversized options up to this length are read and thrown away (in small pieces, never held in memory)
    /// and answered NBD_REP_ERR_TOO_BIG so negotiation can go on; beyond it the client is not an NBD client
    /// and the connection is closed rather than reading gigabytes of garbage.
    /// </summary>
    public const int OptionDiscardBytesMax = 1024 * 1024;

    /// <summary>Options one connection may send before it is dropped: stops a client looping on LIST forever.</summary>
    public const int OptionsPerConnectionMax = 1024;

    /// <summary>Longest export name, metadata context name or query: the spec's maximum string length.</summary>
    public const int StringBytesMax = 4096;

    /// <summary>Queries accepted in one LIST/SET_META_CONTEXT; more is answered NBD_REP_ERR_TOO_BIG.</summary>
    public const int MetaContextQueriesMax = 64;

    /// <summary>Contexts one connection may select; every one costs a chunk in each BLOCK_STATUS reply.</summary>
    public const int MetaContextsSelectedMax = 16;

    /// <summary>
    /// Extents in one BLOCK_STATUS chunk. The spec says servers SHOULD NOT send more than 2^20; 4096
    /// keeps a reply under 64 KiB and clients simply ask again from where the reply ended.
    /// </summary>
    public const int BlockStatusExtentsMax = 4096;

    /// <summary>Extents asked of the export per call while building a sparse READ reply.</summary>
    public const int ReadAllocationExtentsBatch = 64;

    /// <summary>Longest error message sent in an error chunk or option error (the spec's string limit).</summary>
    public const int ErrorMessageBytesMax = 4096;

    /// <summary>
    /// Default for concurrent connections per server (<c>platter serve --max-connections</c>): each may pin
    /// <see cref="InFlightPayloadBytesPerConnectionMax"/>, so this bounds the server's request memory (256 x 64 MiB).
    /// </summary>
    public const int ConnectionsMax = 256;

    /// <summary>
    /// Default for concurrent connections from one peer (an IP address, or one process on the unix socket):
    /// a quarter of <see cref="ConnectionsMax"/>, so one careless or greedy client can never take every slot and
    /// at least three others always find room. 64 is far above what one client uses: QEMU opens one connection
    /// per disk, nbdcopy and multi-conn clients four to eight.
    /// </summary>
    public const int ConnectionsPerPeerMax = 64;

    /// <summary>
    /// Default time a client has to finish negotiation (<c>platter serve --handshake-timeout</c>). Stops idle or
    /// half-open connections from holding a connection slot forever, so slots come back to new clients; transmission
    /// has no idle limit because a VM may not touch its disk for hours.
    /// </summary>
    public static readonly TimeSpan HandshakeTimeout = TimeSpan.FromSeconds(30);

    /// <summary>
    /// Socket send/receive buffer size. Large enough that a 4 MiB sequential stream does not stall on the
    /// kernel's default (~200 KiB) window; the kernel clamps it to net.core.[rw]mem_max.
    /// </summary>
    public const int SocketBufferBytes = 4 * 1024 * 1024;

    /// <summary>Size of the per-connection reply buffer: replies up to this size leave in one write.</summary>
    public const int ReplyBufferBytes = 64 * 1024;

    /// <summary>Minimum read size of the request pipe: one syscall takes in many small requests at once.</summary>
    public const int ReceiveSegmentBytes = 64 * 1024;

    /// <summary>
    /// Write payloads of this size or more are read from the stream straight into their buffer, not through the request
    /// pipe (one copy less). Smaller ones stay on the pipe: one of its reads takes in many small requests, where reading
    /// each payload on its own would cost a syscall per request. Half a pipe read: below it the pipe's reads are as few.
    /// </summary>
    public const int DirectPayloadBytesMin = ReceiveSegmentBytes / 2;
}
