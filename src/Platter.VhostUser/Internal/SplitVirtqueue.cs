using System.Runtime.CompilerServices;

namespace Platter.VhostUser.Internal;

/// <summary>A run of guest memory one descriptor (or the part of it inside one region) names, already translated.</summary>
internal unsafe struct Segment
{
    public byte* Host;
    public uint Length;
    public bool Writable;
}

/// <summary>What <see cref="SplitVirtqueue.TryPop"/> found.</summary>
internal enum PopResult
{
    Empty,
    Popped,
    /// <summary>The driver broke the ring itself (see <see cref="SplitVirtqueue.BrokenReason"/>); stop using the queue.</summary>
    Broken,
}

/// <summary>One descriptor chain read from the table: its segments and where its status byte is.</summary>
internal unsafe struct Chain
{
    /// <summary>Segments filled in the caller's array, in chain order (device-readable first).</summary>
    public int SegmentCount;
    /// <summary>Some descriptor named memory outside every region (or wrapped around): the request fails.</summary>
    public bool BadAddress;
    /// <summary>More segments than the request array holds (a driver that ignores seg_max): the request fails.</summary>
    public bool TooManySegments;
    /// <summary>The last byte of the last descriptor when it is device-writable and in guest memory, else null.</summary>
    public byte* Status;
    /// <summary>Bytes the chain's descriptors name, header and status included: what decides where it runs.</summary>
    public ulong Bytes;

    public readonly bool HasStatus => Status != null;
}

/// <summary>
/// A split virtqueue (virtio 1.1 section 2.6) over guest memory: the descriptor table, the available ring the driver
/// fills and the used ring the device fills. Everything read from the rings is read once into locals and checked before
/// use: indices against the queue size, chain length against the queue size (a loop in the chain ends there),
/// descriptor addresses against <see cref="GuestMemory"/>. Not thread-safe: one worker pops; completions push under the
/// owner's lock.
/// </summary>
/// <remarks>
/// Indirect descriptors (VIRTIO_RING_F_INDIRECT_DESC) are followed when negotiated: each entry of an indirect table is
/// read through <see cref="GuestMemory"/> like the ring's own, and its buffers are checked like any others. Event index
/// suppression (VIRTIO_RING_F_EVENT_IDX) is not offered, so the device interrupts unless the driver set
/// VIRTQ_AVAIL_F_NO_INTERRUPT.
/// </remarks>
internal sealed unsafe class SplitVirtqueue
{
    public const ushort DescNext = 1;
    public const ushort DescWrite = 2;
    public const ushort DescIndirect = 4;
    private const ushort AvailNoInterrupt = 1;
    public const uint SizeMax = 32768;

    private readonly GuestMemory _memory;
    private readonly byte* _descriptors;
    private readonly ushort* _available;
    private readonly byte* _used;
    private ushort _lastAvailable;
    private ushort _usedIndex;
    // In-flight tracking (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD), when the front-end set an area up; and the heads it
    // still had marked when the queue started, oldest first, taken before anything new from the available ring.
    private readonly InflightQueue? _inflight;
    private readonly ushort[] _resubmit;
    private int _resubmitted;

    private SplitVirtqueue(GuestMemory memory, ushort size, byte* descriptors, ushort* available, byte* used, ushort lastAvailable,
        bool indirectDescriptors, InflightQueue? inflight, ushort[] resubmit)
    {
        _memory = memory;
        IndirectDescriptors = indirectDescriptors;
        Size = size;
        _descriptors = descriptors;
        _available = available;
        _used = used;
        _lastAvailable = lastAvailable;
        _inflight = inflight;
        _resubmit = resubmit;
        // The driver zeroes the used ring when it sets the queue up; after a stop and restart the front-end hands back
        // our last available index and the used index in memory is ours from before.
        _usedIndex = Volatile.Read(ref *(ushort*)(used + 2));
    }

    public ushort Size { get; }

    /// <summary>VIRTIO_RING_F_INDIRECT_DESC was negotiated: chains may go on in an indirect table.</summary>
    public bool IndirectDescriptors { get; }

    /// <summary>Heads found in flight when the queue started (in-flight tracking), to be taken again first.</summary>
    public int ResubmitCount => _resubmit.Length;

    /// <summary>How many available entries the device has taken (what GET_VRING_BASE reports).</summary>
    public ushort LastAvailableIndex => _lastAvailable;

    public string? BrokenReason { get; private set; }

    /// <summary>
    /// Locates the rings (front-end virtual addresses, as SET_VRING_ADDR gives them) in guest memory; null with the reason
    /// when the size is not a power of two up to 32768, or a ring is not wholly inside one region or misaligned.
    /// With <paramref name="inflight"/> (in-flight tracking), also null when its region is malformed; otherwise the heads
    /// it still marks are resubmitted first, and the available entries taken are those completed (the used index) plus
    /// those resubmitted, whatever <paramref name="lastAvailable"/> says: after a crash the front-end can only guess
    /// the used index, which misses the requests that were in flight.
    /// </summary>
    public static SplitVirtqueue? Create(GuestMemory memory, uint size, ulong descriptorsUser, ulong availableUser, ulong usedUser,
        ushort lastAvailable, out string? problem, bool indirectDescriptors = false, InflightQueue? inflight = null)
    {
        problem = null;
        if (size == 0 || size > SizeMax || !uint.IsPow2(size))
        {
            problem = $"queue size {size} is not a power of two between 1 and {SizeMax}";
            return null;
        }
        byte* d = memory.TranslateUser(descriptorsUser, 16UL * size);
        byte* a = memory.TranslateUser(availableUser, 6UL + 2UL * size);
        byte* u = memory.TranslateUser(usedUser, 6UL + 8UL * size);
        if (d is null || a is null || u is null)
        {
            problem = $"a ring of the queue is outside guest memory (descriptors 0x{descriptorsUser:x}, available 0x{availableUser:x}, used 0x{usedUser:x})";
            return null;
        }
        // The virtio spec's alignments; the rings are then read with naturally aligned loads.
        if (((nint)d & 15) != 0 || ((nint)a & 1) != 0 || ((nint)u & 3) != 0)
        {
            problem = "a ring of the queue is misaligned";
            return null;
        }
        ushort[] resubmit = [];
        if (inflight is not null)
        {
            ushort usedIndex = Volatile.Read(ref *(ushort*)(u + 2));
            var pending = inflight.Recover(usedIndex, out problem);
            if (pending is null) return null;
            resubmit = pending;
            lastAvailable = (ushort)(usedIndex + pending.Length);
        }
        return new SplitVirtqueue(memory, (ushort)size, d, (ushort*)a, u, lastAvailable, indirectDescriptors, inflight, resubmit);
    }

    /// <summary>Takes the next available chain head, if any.</summary>
    public PopResult TryPop(out ushort head)
    {
        head = 0;
        if (BrokenReason is not null) return PopResult.Broken;
        if (_resubmitted < _resubmit.Length)
        {
            // Still marked in the region from before, with its counter: nothing to mark again.
            head = _resubmit[_resubmitted++];
            return PopResult.Popped;
        }
        // Acquire: the ring entry is read after the index that published it.
        ushort availableIndex = Volatile.Read(ref _available[1]);
        ushort pending = (ushort)(availableIndex - _lastAvailable);
        if (pending == 0) return PopResult.Empty;
        if (pending > Size) return Break($"the available index moved {pending} entries ahead on a queue of {Size}");
        ushort h = Volatile.Read(ref _available[2 + (_lastAvailable & (Size - 1))]);
        if (h >= Size) return Break($"available ring entry names descriptor {h} on a queue of {Size}");
        _lastAvailable++;
        // Marked before the request runs: if the back-end dies from here on, the next one resubmits it.
        _inflight?.Mark(h);
        head = h;
        return PopResult.Popped;
    }

    /// <summary>True when the driver has published entries not taken yet (a hint: <see cref="TryPop"/> decides).</summary>
    public bool HasAvailable => _resubmitted < _resubmit.Length || Volatile.Read(ref _available[1]) != _lastAvailable;

    private PopResult Break(string reason)
    {
        BrokenReason = reason;
        return PopResult.Broken;
    }

    /// <summary>
    /// Walks the chain from <paramref name="head"/> into <paramref name="segments"/>. False (and the queue broken) when
    /// the chain's structure is wrong: a next index past its table, more descriptors than the table has (a loop), a
    /// device-readable descriptor after a device-writable one, an indirect descriptor when
    /// VIRTIO_RING_F_INDIRECT_DESC was not negotiated, or one that also chains on (NEXT), sits in an indirect table
    /// itself, or names a table that is not a whole number of descriptors (at most
    /// <see cref="VhostUserLimits.IndirectDescriptorsMax"/>). A descriptor whose memory is not the guest's — data
    /// buffer or indirect table — only fails its request (<see cref="Chain.BadAddress"/>).
    /// </summary>
    public bool TryReadChain(ushort head, Span<Segment> segments, out Chain chain)
    {
        chain = default;
        // The table being walked: the ring's own (null: _descriptors, Size entries) or an indirect one, read descriptor
        // by descriptor through the memory map (it may straddle regions) at indirectGpa, indirectCount entries.
        bool inIndirect = false;
        ulong indirectGpa = 0;
        uint tableCount = Size;
        uint index = head;
        uint walked = 0;
        bool seenWritable = false;
        ulong lastAddress = 0;
        uint lastLength = 0;
        bool lastWritable = false;
        while (true)
        {
            // A chain has at most as many descriptors as its table: one more means it loops.
            if (++walked > tableCount)
            {
                Break($"descriptor chain from {head} is longer than its table ({tableCount}{(inIndirect ? ", indirect" : "")}): a loop");
                return false;
            }
            // One read of each field: the guest may change the table under us; only these copies are used.
            byte* d = _descriptors + 16 * index;
            if (inIndirect && (!_memory.TryTranslate(indirectGpa + 16UL * index, 16, out d, out ulong tableBytes) || tableBytes < 16))
            {
                // The table is not (wholly) guest memory: the request fails; nothing more of it can be read.
                chain.BadAddress = true;
                return true;
            }
            ulong address = Unsafe.ReadUnaligned<ulong>(d);
            uint length = Unsafe.ReadUnaligned<uint>(d + 8);
            ushort flags = Unsafe.ReadUnaligned<ushort>(d + 12);
            ushort next = Unsafe.ReadUnaligned<ushort>(d + 14);
            if ((flags & DescIndirect) != 0)
            {
                if (!IndirectDescriptors)
                {
                    Break("indirect descriptor (VIRTIO_RING_F_INDIRECT_DESC was not negotiated)");
                    return false;
                }
                if (inIndirect)
                {
                    Break($"indirect descriptor inside the indirect table of the chain from {head}");
                    return false;
                }
                if ((flags & DescNext) != 0)
                {
                    Break($"indirect descriptor {index} in the chain from {head} also has NEXT set");
                    return false;
                }
                if (length == 0 || length % 16 != 0 || length / 16 > VhostUserLimits.IndirectDescriptorsMax)
                {
                    Break($"indirect table of {length} bytes in the chain from {head} (a multiple of 16, at most {VhostUserLimits.IndirectDescriptorsMax} descriptors)");
                    return false;
                }
                // The write flag of the descriptor naming the table means nothing (virtio 1.1 2.7.5.3.2); the walk
                // goes on in the table from its first entry, and ends there.
                inIndirect = true;
                indirectGpa = address;
                tableCount = length / 16;
                index = 0;
                walked = 0;
                continue;
            }
            bool writable = (flags & DescWrite) != 0;
            if (!writable && seenWritable)
            {
                Break($"device-readable descriptor {index} after a device-writable one in the chain from {head}");
                return false;
            }
            seenWritable |= writable;
            if (length > 0 && !chain.BadAddress)
            {
                if (address + length < address)
                {
                    chain.BadAddress = true;
                }
                else
                {
                    ulong done = 0;
                    while (done < length)
                    {
                        if (!_memory.TryTranslate(address + done, length - done, out byte* host, out ulong contiguous))
                        {
                            chain.BadAddress = true;
                            break;
                        }
                        if (chain.SegmentCount == segments.Length)
                        {
                            chain.TooManySegments = true;
                            break;
                        }
                        segments[chain.SegmentCount++] = new Segment { Host = host, Length = (uint)contiguous, Writable = writable };
                        done += contiguous;
                    }
                    chain.Bytes += length;
                }
            }
            lastAddress = address;
            lastLength = length;
            lastWritable = writable;
            if ((flags & DescNext) == 0) break;
            if (next >= tableCount)
            {
                Break($"descriptor {index} names next descriptor {next} in a table of {tableCount}{(inIndirect ? " (indirect)" : "")}");
                return false;
            }
            index = next;
        }
        if (lastWritable && lastLength > 0 && lastAddress + lastLength - 1 >= lastAddress
            && _memory.TryTranslate(lastAddress + lastLength - 1, 1, out byte* status, out _))
        {
            chain.Status = status;
        }
        return true;
    }

    /// <summary>Returns a chain to the driver with the number of bytes written into it. The caller serialises pushes.</summary>
    public void PushUsed(ushort head, uint writtenBytes)
    {
        // In-flight tracking: a batch of one, linked before the used index moves and cleared after (a back-end that dies
        // in between leaves used_idx behind the ring, and the next one clears the batch instead of resubmitting it).
        _inflight?.BeforeUsed(head);
        byte* element = _used + 4 + 8 * (_usedIndex & (Size - 1));
        Unsafe.WriteUnaligned(element, (uint)head);
        Unsafe.WriteUnaligned(element + 4, writtenBytes);
        _usedIndex++;
        // Release: the element is visible before the index that publishes it.
        Volatile.Write(ref *(ushort*)(_used + 2), _usedIndex);
        _inflight?.AfterUsed(head, _usedIndex);
    }

    /// <summary>True unless the driver asked for no interrupts (VIRTQ_AVAIL_F_NO_INTERRUPT).</summary>
    public bool DriverWantsInterrupt()
    {
        // The used index store must be visible before the flag is read, or a driver that just re-enabled interrupts
        // and checked the used ring could miss both.
        Interlocked.MemoryBarrier();
        return (Volatile.Read(ref _available[0]) & AvailNoInterrupt) == 0;
    }
}
