using System.Runtime.CompilerServices;

namespace Platter.VhostUser.Internal;

/// <summary>
/// The shared memory of VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD (QEMU docs/interop/vhost-user.rst, "Inflight I/O
/// tracking"): one region per queue in which the back-end marks each chain head it has taken and clears it once the
/// chain is on the used ring. The front-end keeps the memory across a back-end crash and hands it to the next
/// back-end (SET_INFLIGHT_FD), which resubmits what is still marked. Without it a request in flight when the server
/// died is lost: QEMU restarts the ring at the used index, and with completions out of order the available entries
/// from there on no longer name the requests that were in flight.
/// </summary>
/// <remarks>
/// <para>Layout (split virtqueues, little-endian), per queue, each <see cref="QueueRegionBytes"/> long and back to
/// back: a 16-byte header (u64 features = 0, u16 version = 1 or 0 for "never used", u16 desc_num = the queue size,
/// u16 last_batch_head, u16 used_idx) and desc_num 16-byte entries (u8 inflight, 5 bytes padding, u16 next, u64
/// counter). The size per queue is the one libvhost-user (qemu-storage-daemon) uses, so a region moves between the
/// two back-ends.</para>
/// <para>The front-end can write this memory at any time: everything read from it is read once into locals and
/// checked (version, size, indices, flag values) before use, like a descriptor; a region that fails the checks refuses
/// the queue, and the connection ends. The descriptor must be a file that cannot shrink under the mapping (a sealed
/// memfd, as <see cref="Create"/> makes), since touching a mapping past the end of its file kills the process.</para>
/// </remarks>
internal sealed unsafe class InflightArea : IDisposable
{
    public const ushort Version = 1;
    private const int HeaderBytes = 16;
    private const int EntryBytes = 16;
    private const int Alignment = 64;

    private byte* _base;
    private readonly nuint _length;

    private InflightArea(byte* mapped, nuint length, int queueCount, ushort queueSize)
    {
        _base = mapped;
        _length = length;
        QueueCount = queueCount;
        QueueSize = queueSize;
    }

    /// <summary>Queues the area has a region for (num_queues of SET_INFLIGHT_FD).</summary>
    public int QueueCount { get; }

    /// <summary>Entries per queue region: every queue tracked in it must have this size.</summary>
    public ushort QueueSize { get; }

    /// <summary>Bytes of one queue's region: header and entries, rounded up to a cache line.</summary>
    public static ulong QueueRegionBytes(uint queueSize) => (HeaderBytes + EntryBytes * (ulong)queueSize + Alignment - 1) & ~(ulong)(Alignment - 1);

    /// <summary>Bytes of the largest area accepted: every queue at the largest size.</summary>
    public static ulong AreaBytesMax => VhostUserLimits.QueuesMax * QueueRegionBytes(SplitVirtqueue.SizeMax);

    /// <summary>Null when <paramref name="queueCount"/> queues of <paramref name="queueSize"/> cannot be tracked here, else the reason.</summary>
    public static string? CheckShape(ulong queueCount, ulong queueSize)
    {
        if (queueCount == 0 || queueCount > VhostUserLimits.QueuesMax) return $"{queueCount} queues (1 to {VhostUserLimits.QueuesMax})";
        if (queueSize == 0 || queueSize > SplitVirtqueue.SizeMax || !ulong.IsPow2(queueSize))
            return $"queue size {queueSize} is not a power of two up to {SplitVirtqueue.SizeMax}";
        return null;
    }

    /// <summary>
    /// GET_INFLIGHT_FD: a new zeroed area (version 0 everywhere: nothing in flight) for the front-end to keep, as a memfd
    /// sealed against shrinking. Returns its descriptor (the caller sends and closes it) and its size.
    /// </summary>
    public static int Create(int queueCount, ushort queueSize, out ulong sizeBytes)
    {
        sizeBytes = (ulong)queueCount * QueueRegionBytes(queueSize);
        int fd = Native.memfd_create("platter-vhost-inflight", Native.MFD_CLOEXEC | Native.MFD_ALLOW_SEALING);
        if (fd < 0) throw new VhostUserException($"memfd_create for the in-flight area failed: errno {Native.Errno}");
        // Zero-filled by the kernel; sealed so that no one (the front-end included) can shrink it under a mapping.
        if (Native.ftruncate(fd, (long)sizeBytes) != 0
            || Native.fcntl(fd, Native.F_ADD_SEALS, Native.F_SEAL_SHRINK | Native.F_SEAL_GROW | Native.F_SEAL_SEAL) != 0)
        {
            int errno = Native.Errno;
            Native.close(fd);
            throw new VhostUserException($"sizing and sealing the in-flight area failed: errno {errno}");
        }
        return fd;
    }

    /// <summary>
    /// SET_INFLIGHT_FD: maps <paramref name="sizeBytes"/> at <paramref name="offset"/> of <paramref name="fd"/> (not
    /// taken: the caller closes it) after checking the shape, that the file holds the range and that it cannot shrink
    /// (sealed by us, or sealable now). Null with the reason otherwise.
    /// </summary>
    public static InflightArea? Map(int fd, ulong sizeBytes, ulong offset, ulong queueCount, ulong queueSize, out string? problem)
    {
        problem = CheckShape(queueCount, queueSize);
        if (problem is not null) return null;
        ulong needed = queueCount * QueueRegionBytes((uint)queueSize);
        if (sizeBytes < needed || sizeBytes > AreaBytesMax)
        {
            problem = $"an in-flight area of {sizeBytes} bytes for {queueCount} queues of {queueSize} (needs {needed}, at most {AreaBytesMax})";
            return null;
        }
        if (offset % 4096 != 0 || offset > long.MaxValue - sizeBytes)
        {
            problem = $"in-flight area offset {offset} is not a page boundary in range";
            return null;
        }
        int seals = Native.fcntl(fd, Native.F_GET_SEALS, 0);
        if (seals < 0 || ((seals & Native.F_SEAL_SHRINK) == 0 && Native.fcntl(fd, Native.F_ADD_SEALS, Native.F_SEAL_SHRINK) != 0))
        {
            problem = $"the in-flight area's descriptor is not a memfd sealed against shrinking (errno {Native.Errno}): it could vanish under the mapping";
            return null;
        }
        long fileBytes = Native.lseek(fd, 0, Native.SEEK_END);
        if (fileBytes < 0 || (ulong)fileBytes < offset + sizeBytes)
        {
            problem = $"the in-flight area's file holds {fileBytes} bytes, fewer than offset {offset} + size {sizeBytes}";
            return null;
        }
        void* p = Native.mmap(null, (nuint)sizeBytes, Native.PROT_READ | Native.PROT_WRITE, Native.MAP_SHARED, fd, (long)offset);
        if (p == (void*)-1)
        {
            problem = $"mapping the in-flight area failed: errno {Native.Errno}";
            return null;
        }
        return new InflightArea((byte*)p, (nuint)sizeBytes, (int)queueCount, (ushort)queueSize);
    }

    /// <summary>
    /// Queue <paramref name="index"/>'s region for a ring of <paramref name="size"/> descriptors, or null with the reason.
    /// The ring may be smaller than the area's queue size (a driver may shrink a queue; QEMU sizes the area by the
    /// device's maximum): the region still has the area's entry count, of which the ring uses the first.
    /// </summary>
    public InflightQueue? Queue(int index, uint size, out string? problem)
    {
        ObjectDisposedException.ThrowIf(_base is null, this);
        problem = null;
        if (index >= QueueCount) problem = $"the in-flight area tracks {QueueCount} queues, not queue {index}";
        else if (size > QueueSize) problem = $"the in-flight area has {QueueSize} entries per queue, fewer than the queue's {size}";
        return problem is null ? new InflightQueue(_base + (ulong)index * QueueRegionBytes(QueueSize), QueueSize, (ushort)size) : null;
    }

    /// <summary>Unmaps; the queues using it must be stopped first.</summary>
    public void Dispose()
    {
        if (_base is null) return;
        Native.munmap(_base, _length);
        _base = null;
    }

    internal static int EntryOffset(int head) => HeaderBytes + EntryBytes * head;
}

/// <summary>
/// One queue's in-flight region (see <see cref="InflightArea"/>): <see cref="Recover"/> once when the queue starts,
/// then <see cref="Mark"/> for every head taken and <see cref="BeforeUsed"/>/<see cref="AfterUsed"/> around every used
/// entry published. Marks come from the one thread that pops; the used steps are serialised by the queue's used lock;
/// they touch different fields of different entries.
/// </summary>
/// <param name="region">The queue's region.</param>
/// <param name="entries">Its entry count (desc_num: the area's queue size).</param>
/// <param name="size">The ring's size: every head is below it.</param>
internal sealed unsafe class InflightQueue(byte* region, ushort entries, ushort size)
{
    private ulong _counter;

    private ref ushort LastBatchHead => ref *(ushort*)(region + 12);
    private ref ushort UsedIndex => ref *(ushort*)(region + 14);
    private byte* Entry(int head) => region + InflightArea.EntryOffset(head);

    /// <summary>
    /// Brings the region in line with the used ring (whose index the ring shows now) and returns the heads still in
    /// flight, oldest first, for resubmission; null with the reason when the region is malformed. A region never used
    /// (version 0) is initialised: nothing in flight.
    /// </summary>
    public ushort[]? Recover(ushort ringUsedIndex, out string? problem)
    {
        problem = null;
        // One read of each header field: the front-end could change them under us.
        ushort version = Volatile.Read(ref *(ushort*)(region + 8));
        if (version == 0)
        {
            new Span<byte>(region + 16, InflightArea.EntryOffset(entries) - 16).Clear();
            Unsafe.WriteUnaligned(region, 0UL);
            *(ushort*)(region + 10) = entries;
            LastBatchHead = 0;
            UsedIndex = ringUsedIndex;
            Volatile.Write(ref *(ushort*)(region + 8), InflightArea.Version);
            _counter = 0;
            return [];
        }
        if (version != InflightArea.Version)
        {
            problem = $"in-flight region version {version} (only {InflightArea.Version} is known)";
            return null;
        }
        ushort descNum = Volatile.Read(ref *(ushort*)(region + 10));
        if (descNum != entries)
        {
            problem = $"in-flight region for {descNum} descriptors in an area of {entries} per queue";
            return null;
        }
        ushort regionUsed = Volatile.Read(ref UsedIndex);
        if (regionUsed != ringUsedIndex)
        {
            // The back-end died between publishing a batch on the used ring and clearing its entries: the batch's list
            // starts at last_batch_head and has as many entries as the used index moved.
            ushort batch = (ushort)(ringUsedIndex - regionUsed);
            if (batch > size)
            {
                problem = $"in-flight region used index {regionUsed} is {batch} entries behind the ring's {ringUsedIndex} on a queue of {size}";
                return null;
            }
            ushort head = Volatile.Read(ref LastBatchHead);
            for (int i = 0; i < batch; i++)
            {
                if (head >= size)
                {
                    problem = $"in-flight region last batch names descriptor {head} on a queue of {size}";
                    return null;
                }
                byte* e = Entry(head);
                Volatile.Write(ref *e, (byte)0);
                head = Unsafe.ReadUnaligned<ushort>(e + 6);
            }
            Volatile.Write(ref UsedIndex, ringUsedIndex);
        }
        var pending = new List<(ulong Counter, ushort Head)>();
        ulong newest = 0;
        for (int h = 0; h < entries; h++)
        {
            byte* e = Entry(h);
            byte flag = Volatile.Read(ref *e);
            if (flag == 0) continue;
            if (flag != 1 || h >= size)
            {
                problem = $"in-flight region entry {h} has flag {flag} (0, or 1 below the queue size {size})";
                return null;
            }
            ulong counter = Unsafe.ReadUnaligned<ulong>(e + 8);
            pending.Add((counter, (ushort)h));
            newest = Math.Max(newest, counter);
        }
        pending.Sort();
        _counter = pending.Count == 0 ? 0 : newest + 1;
        var heads = new ushort[pending.Count];
        for (int i = 0; i < heads.Length; i++) heads[i] = pending[i].Head;
        return heads;
    }

    /// <summary>Marks <paramref name="head"/> taken, after the others (before its request runs).</summary>
    public void Mark(ushort head)
    {
        byte* e = Entry(head);
        Unsafe.WriteUnaligned(e + 8, _counter++);
        // Release: the counter is in place before the flag that makes the entry count.
        Volatile.Write(ref *e, (byte)1);
    }

    /// <summary>Links <paramref name="head"/> as the last batch, before its used entry is published.</summary>
    public void BeforeUsed(ushort head)
    {
        byte* e = Entry(head);
        Unsafe.WriteUnaligned(e + 6, LastBatchHead);
        Volatile.Write(ref LastBatchHead, head);
    }

    /// <summary>Clears <paramref name="head"/> and records the used index, after its used entry is published.</summary>
    public void AfterUsed(ushort head, ushort usedIndex)
    {
        Volatile.Write(ref *Entry(head), (byte)0);
        Volatile.Write(ref UsedIndex, usedIndex);
    }
}
