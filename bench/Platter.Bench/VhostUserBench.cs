using System.Buffers.Binary;
using System.Diagnostics;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

/// <summary>
/// A vhost-user-blk front-end that drives a back-end the way QEMU and a Linux guest do, without a guest: it shares a
/// memfd as "guest RAM" (SET_MEM_TABLE with SCM_RIGHTS), lays out one split virtqueue in it, keeps DEPTH requests in
/// flight (header, data and status descriptors per request), kicks the kick eventfd once per batch and waits on the
/// call eventfd. The same client drives Platter's back-end and qemu-storage-daemon's, so their numbers compare; it
/// knows nothing of Platter (its own libc calls, its own ring code).
/// </summary>
/// <remarks>
/// Usage: Platter.Bench --vhost-user --socket PATH --size BYTES [--rw randread|randwrite|read|write] [--bs 4096]
/// [--depth 32] [--seconds 10] [--segment-bytes N] [--indirect]. Prints one line:
/// <c>ops=N seconds=S iops=I mbps=M p99us=P errors=E</c>. <c>--segment-bytes</c> splits each request's data into
/// descriptors of that size, as a guest's page list (default: one descriptor); <c>--indirect</c> negotiates
/// VIRTIO_RING_F_INDIRECT_DESC and puts each chain in an indirect table, as Linux does once it is offered;
/// <c>--inflight</c> negotiates VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD and hands the back-end its in-flight area
/// (GET_INFLIGHT_FD, SET_INFLIGHT_FD), as QEMU's vhost-user-blk does whenever it is offered. EVENT_IDX is
/// not negotiated, for either back-end: every completion batch raises a call.
/// </remarks>
internal static unsafe partial class VhostUserBench
{
    private const int QueueSize = 256;
    private const ulong DescriptorsGpa = 0;
    private const ulong AvailableGpa = 4096;
    private const ulong UsedGpa = 8192;
    private const ulong HeadersGpa = 16384;
    private const ulong StatusGpa = 20480;
    private const ulong TablesGpa = 65536;
    private const ulong DataGpa = 1 << 20;

    public static int Run(string[] args)
    {
        string? socketPath = null;
        long size = 0;
        string rw = "randread";
        int bs = 4096, depth = 32, segmentBytes = 0;
        bool indirect = false, inflight = false;
        double seconds = 10;
        for (int i = 1; i < args.Length; i++)
        {
            string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
            switch (args[i])
            {
                case "--socket": socketPath = Next(); break;
                case "--size": size = long.Parse(Next()); break;
                case "--rw": rw = Next(); break;
                case "--bs": bs = int.Parse(Next()); break;
                case "--depth": depth = int.Parse(Next()); break;
                case "--segment-bytes": segmentBytes = int.Parse(Next()); break;
                case "--indirect": indirect = true; break;
                case "--inflight": inflight = true; break;
                case "--seconds": seconds = double.Parse(Next(), System.Globalization.CultureInfo.InvariantCulture); break;
                default: throw new ArgumentException($"unknown argument {args[i]}");
            }
        }
        if (socketPath is null || size <= 0) throw new ArgumentException("--socket and --size are required");
        if (bs % 512 != 0 || bs <= 0 || size < bs) throw new ArgumentException("--bs must be a multiple of 512 and at most --size");
        if (segmentBytes == 0) segmentBytes = bs;
        if (segmentBytes % 512 != 0 || bs % segmentBytes != 0) throw new ArgumentException("--segment-bytes must divide --bs in multiples of 512");
        int segments = bs / segmentBytes, perChain = segments + 2;
        if ((ulong)(perChain * 16 * 64) > DataGpa - TablesGpa) throw new ArgumentException("too many segments per request");
        int ringPerRequest = indirect ? 1 : perChain;
        if (depth < 1 || depth * ringPerRequest > QueueSize || depth > 64) throw new ArgumentException($"--depth 1 to {Math.Min(64, QueueSize / ringPerRequest)}");
        bool read = rw is "randread" or "read";
        bool random = rw is "randread" or "randwrite";
        if (rw is not ("randread" or "randwrite" or "read" or "write")) throw new ArgumentException($"unknown --rw {rw}");

        ulong memoryBytes = DataGpa + (ulong)depth * (ulong)bs;
        memoryBytes = (memoryBytes + (2 << 20) - 1) & ~((2UL << 20) - 1);
        int memfd = memfd_create("bench-guest-ram", 0);
        Check(memfd >= 0, "memfd_create");
        Check(ftruncate(memfd, (long)memoryBytes) == 0, "ftruncate");
        byte* ram = (byte*)mmap(null, (nuint)memoryBytes, 3, 1, memfd, 0);
        Check(ram != (byte*)-1, "mmap");
        Random.Shared.NextBytes(new Span<byte>(ram + DataGpa, (int)(memoryBytes - DataGpa)));
        new Span<byte>(ram, (int)DataGpa).Clear();

        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        socket.Connect(new UnixDomainSocketEndPoint(socketPath));
        socket.Blocking = true;
        int fd = (int)socket.SafeHandle.DangerousGetHandle();
        int kick = eventfd(0, 0), call = eventfd(0, 0);
        Check(kick >= 0 && call >= 0, "eventfd");

        // QEMU's order: owner, features, protocol features, memory, then the ring.
        Send(fd, 3 /* SET_OWNER */, []);
        ulong features = Get(fd, 1 /* GET_FEATURES */);
        const ulong version1 = 1UL << 32, protocolFeatures = 1UL << 30, flush = 1UL << 9, indirectDesc = 1UL << 28;
        Check((features & version1) != 0, "the back-end does not offer VIRTIO_F_VERSION_1");
        Check(!indirect || (features & indirectDesc) != 0, "the back-end does not offer VIRTIO_RING_F_INDIRECT_DESC");
        bool haveProtocol = (features & protocolFeatures) != 0;
        const ulong inflightShmfd = 1UL << 12;
        if (haveProtocol)
        {
            ulong offered = Get(fd, 15 /* GET_PROTOCOL_FEATURES */);
            Check(!inflight || (offered & inflightShmfd) != 0, "the back-end does not offer INFLIGHT_SHMFD");
            SendU64(fd, 16 /* SET_PROTOCOL_FEATURES */, inflight ? inflightShmfd : 0);
        }
        else
        {
            Check(!inflight, "the back-end does not offer protocol features (INFLIGHT_SHMFD)");
        }
        if (inflight) ShareInflightArea(fd);
        SendU64(fd, 2 /* SET_FEATURES */, version1 | (features & (protocolFeatures | flush)) | (indirect ? indirectDesc : 0));
        Span<byte> table = stackalloc byte[8 + 32];
        table.Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(table, 1);
        BinaryPrimitives.WriteUInt64LittleEndian(table[8..], 0); // guest-physical address
        BinaryPrimitives.WriteUInt64LittleEndian(table[16..], memoryBytes);
        BinaryPrimitives.WriteUInt64LittleEndian(table[24..], (ulong)ram); // the front-end's own address
        BinaryPrimitives.WriteUInt64LittleEndian(table[32..], 0); // mmap offset
        Send(fd, 5 /* SET_MEM_TABLE */, table, memfd);
        SendState(fd, 8 /* SET_VRING_NUM */, 0, QueueSize);
        SendState(fd, 10 /* SET_VRING_BASE */, 0, 0);
        Span<byte> address = stackalloc byte[40];
        address.Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(address[8..], (ulong)(ram + DescriptorsGpa));
        BinaryPrimitives.WriteUInt64LittleEndian(address[16..], (ulong)(ram + UsedGpa));
        BinaryPrimitives.WriteUInt64LittleEndian(address[24..], (ulong)(ram + AvailableGpa));
        Send(fd, 9 /* SET_VRING_ADDR */, address);
        SendU64(fd, 13 /* SET_VRING_CALL */, 0, call);
        SendU64(fd, 12 /* SET_VRING_KICK */, 0, kick);
        if (haveProtocol) SendState(fd, 18 /* SET_VRING_ENABLE */, 0, 1);

        // Request slot i is the chain header -> data segments -> status: in the ring from descriptor perChain * i, or in
        // slot i's indirect table that ring descriptor i names.
        for (int i = 0; i < depth; i++)
        {
            byte* chainTable = indirect ? ram + TablesGpa + (ulong)(i * perChain * 16) : ram + DescriptorsGpa;
            int first = indirect ? 0 : i * perChain;
            SetDescriptor(chainTable, first, HeadersGpa + 16UL * (ulong)i, 16, 1, (ushort)(first + 1));
            for (int k = 0; k < segments; k++)
                // Pieces in reverse order: a guest's pages are scattered, and a back-end must not find them contiguous.
                SetDescriptor(chainTable, first + 1 + k, DataGpa + (ulong)i * (ulong)bs + (ulong)((segments - 1 - k) * segmentBytes), (uint)segmentBytes,
                    (ushort)(1 | (read ? 2 : 0)), (ushort)(first + 2 + k));
            SetDescriptor(chainTable, first + perChain - 1, StatusGpa + (ulong)i, 1, 2, 0);
            if (indirect) SetDescriptor(ram + DescriptorsGpa, i, TablesGpa + (ulong)(i * perChain * 16), (uint)(perChain * 16), 4 /* INDIRECT */, 0);
        }
        var available = (ushort*)(ram + AvailableGpa);
        var used = ram + UsedGpa;
        ushort availableIndex = 0, lastUsed = 0;
        long blocks = size / bs, nextBlock = 0;
        var rng = new Random(1);
        var started = new long[depth];
        var latencies = new long[1 << 22];
        long latencyCount = 0, ops = 0, errors = 0;
        int inFlight = 0;

        void Publish(int slot)
        {
            long block = random ? rng.NextInt64(blocks) : nextBlock++ % blocks;
            byte* header = ram + HeadersGpa + 16 * slot;
            Unsafe.WriteUnaligned(header, read ? 0u : 1u);
            Unsafe.WriteUnaligned(header + 4, 0u);
            Unsafe.WriteUnaligned(header + 8, (ulong)(block * bs / 512));
            ram[StatusGpa + (ulong)slot] = 0xff;
            available[2 + availableIndex % QueueSize] = (ushort)(slot * ringPerRequest);
            availableIndex++;
            started[slot] = Stopwatch.GetTimestamp();
            inFlight++;
        }

        for (int i = 0; i < depth; i++) Publish(i);
        Volatile.Write(ref available[1], availableIndex);
        Signal(kick);
        var clock = Stopwatch.StartNew();
        long endTicks = (long)(seconds * Stopwatch.Frequency);
        long drainDeadline = endTicks + 10 * Stopwatch.Frequency;
        var poll = new PollFd { Fd = call, Events = 1 };
        while (inFlight > 0)
        {
            long now = clock.ElapsedTicks;
            if (now > drainDeadline) throw new InvalidOperationException($"{inFlight} requests still in flight 10 s after the end");
            ushort usedIndex = Volatile.Read(ref *(ushort*)(used + 2));
            if (usedIndex == lastUsed)
            {
                poll.Revents = 0;
                if (pollfds(&poll, 1, 1000) > 0) Drain(call);
                continue;
            }
            bool stopping = now >= endTicks;
            long stamp = Stopwatch.GetTimestamp();
            while (lastUsed != usedIndex)
            {
                uint id = Unsafe.ReadUnaligned<uint>(used + 4 + 8 * (lastUsed % QueueSize));
                lastUsed++;
                int slot = (int)id / ringPerRequest;
                if (id % ringPerRequest != 0 || slot >= depth) throw new InvalidOperationException($"the back-end returned descriptor {id}, which no request heads");
                inFlight--;
                if (ram[StatusGpa + (ulong)slot] != 0) errors++;
                ops++;
                if (latencyCount < latencies.Length) latencies[latencyCount++] = stamp - started[slot];
                if (!stopping) Publish(slot);
            }
            if (!stopping)
            {
                Volatile.Write(ref available[1], availableIndex);
                Signal(kick);
            }
        }
        double elapsed = Math.Min(clock.Elapsed.TotalSeconds, seconds + (double)(clock.ElapsedTicks - endTicks) / Stopwatch.Frequency);
        Array.Sort(latencies, 0, (int)latencyCount);
        double p99 = latencyCount == 0 ? 0 : latencies[(int)Math.Min(latencyCount - 1, latencyCount * 99 / 100)] * 1e6 / Stopwatch.Frequency;
        double iops = ops / elapsed;
        Console.WriteLine(FormattableString.Invariant(
            $"ops={ops} seconds={elapsed:F2} iops={iops:F0} mbps={iops * bs / 1e6:F1} p99us={p99:F0} errors={errors}"));
        socket.Close();
        close(kick);
        close(call);
        munmap(ram, (nuint)memoryBytes);
        close(memfd);
        return errors == 0 ? 0 : 1;
    }

    private static void SetDescriptor(byte* table, int index, ulong address, uint length, ushort flags, ushort next)
    {
        byte* d = table + 16 * (ulong)index;
        Unsafe.WriteUnaligned(d, address);
        Unsafe.WriteUnaligned(d + 8, length);
        Unsafe.WriteUnaligned(d + 12, flags);
        Unsafe.WriteUnaligned(d + 14, next);
    }

    /// <summary>QEMU's steps on a device start: GET_INFLIGHT_FD for one queue of QueueSize, map the area, SET_INFLIGHT_FD with it.</summary>
    private static void ShareInflightArea(int fd)
    {
        Span<byte> description = stackalloc byte[24];
        description.Clear();
        BinaryPrimitives.WriteUInt16LittleEndian(description[16..], 1);
        BinaryPrimitives.WriteUInt16LittleEndian(description[18..], QueueSize);
        Send(fd, 31 /* GET_INFLIGHT_FD */, description);
        Span<byte> reply = stackalloc byte[12 + 24];
        byte* control = stackalloc byte[24];
        int area = -1;
        fixed (byte* p = reply)
        {
            var iov = new IoVec { Base = p, Length = (nuint)reply.Length };
            var msg = new MsgHdr { Iov = &iov, IovLength = 1, Control = control, ControlLength = 24 };
            Check(recvmsg(fd, &msg, 0) == reply.Length, "reading the GET_INFLIGHT_FD reply");
            if (msg.ControlLength >= 20 && *(int*)(control + 12) == 1 /* SCM_RIGHTS */) area = *(int*)(control + 16);
        }
        ulong bytes = BinaryPrimitives.ReadUInt64LittleEndian(reply[12..]);
        Check(area >= 0 && bytes > 0, "GET_INFLIGHT_FD (no area)");
        // The front-end keeps it mapped (QEMU does, to hand it to the next back-end).
        Check(mmap(null, (nuint)bytes, 3, 1, area, 0) != (void*)-1, "mapping the in-flight area");
        reply.Slice(12, 24).CopyTo(description);
        Send(fd, 32 /* SET_INFLIGHT_FD */, description, area);
    }

    private static void SendU64(int fd, uint request, ulong value, int passFd = -1)
    {
        Span<byte> b = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(b, value);
        Send(fd, request, b, passFd);
    }

    private static void SendState(int fd, uint request, uint index, uint num)
    {
        Span<byte> b = stackalloc byte[8];
        BinaryPrimitives.WriteUInt32LittleEndian(b, index);
        BinaryPrimitives.WriteUInt32LittleEndian(b[4..], num);
        Send(fd, request, b);
    }

    private static ulong Get(int fd, uint request)
    {
        Send(fd, request, []);
        Span<byte> reply = stackalloc byte[20];
        ReadExactly(fd, reply);
        Check(BinaryPrimitives.ReadUInt32LittleEndian(reply) == request && BinaryPrimitives.ReadUInt32LittleEndian(reply[8..]) == 8,
            $"reply to request {request}");
        return BinaryPrimitives.ReadUInt64LittleEndian(reply[12..]);
    }

    private static void Send(int fd, uint request, ReadOnlySpan<byte> payload, int passFd = -1)
    {
        Span<byte> message = stackalloc byte[12 + payload.Length];
        BinaryPrimitives.WriteUInt32LittleEndian(message, request);
        BinaryPrimitives.WriteUInt32LittleEndian(message[4..], 1); // version 1, no reply wanted
        BinaryPrimitives.WriteUInt32LittleEndian(message[8..], (uint)payload.Length);
        payload.CopyTo(message[12..]);
        byte* control = stackalloc byte[24];
        fixed (byte* p = message)
        {
            var iov = new IoVec { Base = p, Length = (nuint)message.Length };
            var msg = new MsgHdr { Iov = &iov, IovLength = 1 };
            if (passFd >= 0)
            {
                *(nuint*)control = 20; // CMSG_LEN(4)
                *(int*)(control + 8) = 1; // SOL_SOCKET
                *(int*)(control + 12) = 1; // SCM_RIGHTS
                *(int*)(control + 16) = passFd;
                msg.Control = control;
                msg.ControlLength = 24;
            }
            Check(sendmsg(fd, &msg, 0x4000) == message.Length, $"sendmsg of request {request}");
        }
    }

    private static void ReadExactly(int fd, Span<byte> into)
    {
        fixed (byte* p = into)
        {
            int done = 0;
            while (done < into.Length)
            {
                nint n = read(fd, p + done, (nuint)(into.Length - done));
                Check(n > 0, "reading a reply");
                done += (int)n;
            }
        }
    }

    private static void Signal(int fd)
    {
        ulong one = 1;
        write(fd, &one, 8);
    }

    private static void Drain(int fd)
    {
        ulong value;
        read(fd, &value, 8);
    }

    private static void Check(bool ok, string what)
    {
        if (!ok) throw new InvalidOperationException($"{what} failed (errno {Marshal.GetLastPInvokeError()})");
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct IoVec
    {
        public void* Base;
        public nuint Length;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct MsgHdr
    {
        public void* Name;
        public uint NameLength;
        public IoVec* Iov;
        public nuint IovLength;
        public void* Control;
        public nuint ControlLength;
        public int Flags;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct PollFd
    {
        public int Fd;
        public short Events;
        public short Revents;
    }

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int memfd_create(string name, uint flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int ftruncate(int fd, long length);

    [LibraryImport("libc", SetLastError = true)]
    private static partial void* mmap(void* address, nuint length, int protection, int flags, int fd, long offset);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int munmap(void* address, nuint length);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int eventfd(uint initial, int flags);

    [LibraryImport("libc", SetLastError = true, EntryPoint = "poll")]
    private static partial int pollfds(PollFd* fds, nuint count, int timeoutMs);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint recvmsg(int fd, MsgHdr* message, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint sendmsg(int fd, MsgHdr* message, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint read(int fd, void* buffer, nuint count);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint write(int fd, void* buffer, nuint count);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int close(int fd);
}
