using System.Buffers.Binary;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Win32.SafeHandles;
using Platter.Storage;
using Platter.VhostUser.Internal;

namespace Platter.VhostUser.Tests;

/// <summary>
/// The control protocol end to end in-process: a small front-end of our own (<see cref="TestFrontEnd"/>) speaks
/// vhost-user over a socketpair to a <see cref="VhostUserConnection"/> serving a real engine volume, shares "guest"
/// memory through a file descriptor (SCM_RIGHTS), sets up a queue, kicks and waits for the call eventfd. QEMU and a
/// Linux guest are the real test (tests/Platter.Guest.Tests); this one is fast and reaches the hostile cases.
/// </summary>
public sealed unsafe partial class ProtocolTests : IDisposable
{
    private const ushort QueueSize = 16;
    private const ulong GuestBytes = 4 * 1024 * 1024;
    private const long VolumeBytes = 8 * 1024 * 1024;

    private readonly TempDirectory _dir = new("platter-vhost-proto");
    private readonly VolumeStore _store;
    private readonly IVolumeHandle _volume;
    // What the connection serves: the volume, with a hook a test can run before each write reaches it.
    private readonly HookedVolume _served;
    private readonly SafeFileHandle _memoryFile;
    private readonly byte* _mapped;
    private readonly FakeGuest _guest;
    private readonly int _serverFd;
    private readonly TestFrontEnd _client;
    private readonly VhostUserConnection _connection;
    private readonly Thread _thread;

    public ProtocolTests()
    {
        _store = VolumeStore.Open(_dir.Combine("store"));
        _store.CreateVolume("v", VolumeBytes);
        _volume = ((IVolumeBackend)_store).OpenVolumeHandle("v");
        // The guest's RAM: a shared file the "front-end" maps too, as QEMU's memfd.
        var path = _dir.Combine("guest-ram");
        _memoryFile = File.OpenHandle(path, FileMode.CreateNew, FileAccess.ReadWrite);
        RandomAccess.SetLength(_memoryFile, (long)GuestBytes);
        _mapped = (byte*)Native.mmap(null, (nuint)GuestBytes, Native.PROT_READ | Native.PROT_WRITE, Native.MAP_SHARED,
            (int)_memoryFile.DangerousGetHandle(), 0);
        Assert.True(_mapped != (byte*)-1);
        _guest = new FakeGuest(_mapped, GuestBytes, QueueSize);
        int* pair = stackalloc int[2];
        Assert.Equal(0, Native.socketpair(Native.AF_UNIX, Native.SOCK_STREAM | Native.SOCK_CLOEXEC, 0, pair));
        _serverFd = pair[0];
        _client = new TestFrontEnd(pair[1]);
        _served = new HookedVolume(_volume);
        _connection = new VhostUserConnection(_serverFd, _served, readOnly: false, NullLogger.Instance);
        _thread = new Thread(_connection.Run) { IsBackground = true };
        _thread.Start();
    }

    public void Dispose()
    {
        _client.Dispose();
        _thread.Join();
        _connection.Dispose();
        DisposeInflightArea();
        Native.close(_serverFd);
        _guest.Dispose();
        Native.munmap(_mapped, (nuint)GuestBytes);
        _memoryFile.Dispose();
        _volume.Dispose();
        _store.Dispose();
        _dir.Dispose();
    }

    [Fact]
    public void Guest_requests_read_write_flush_discard_and_get_id_through_a_queue()
    {
        var (kick, call) = StartQueue();
        var data = new byte[8192];
        new Random(7).NextBytes(data);
        data.CopyTo(_guest.Bytes(FakeGuest.BuffersGpa + 4096, data.Length));

        Assert.Equal(VirtioBlk.StatusOk, Request(kick, call, VirtioBlk.TypeOut, sector: 8, dataGpa: FakeGuest.BuffersGpa + 4096, dataBytes: 8192, writable: false));
        var back = new byte[8192];
        ReadVolume(4096, back);
        Assert.Equal(data, back);

        _guest.Bytes(FakeGuest.BuffersGpa + 65536, 8192).Clear();
        Assert.Equal(VirtioBlk.StatusOk, Request(kick, call, VirtioBlk.TypeIn, sector: 8, dataGpa: FakeGuest.BuffersGpa + 65536, dataBytes: 8192, writable: true));
        Assert.Equal(data, _guest.Bytes(FakeGuest.BuffersGpa + 65536, 8192).ToArray());
        Assert.Equal(8192u + 1, _guest.UsedElement(_guest.UsedIndex - 1).Length);

        Assert.Equal(VirtioBlk.StatusOk, Request(kick, call, VirtioBlk.TypeFlush, 0, 0, 0, writable: false));

        // DISCARD of the first 4 KiB written: it then reads as zeros.
        var range = _guest.Bytes(FakeGuest.BuffersGpa + 200_000, 16);
        BinaryPrimitives.WriteUInt64LittleEndian(range, 8);
        BinaryPrimitives.WriteUInt32LittleEndian(range[8..], 8);
        BinaryPrimitives.WriteUInt32LittleEndian(range[12..], 0);
        Assert.Equal(VirtioBlk.StatusOk, Request(kick, call, VirtioBlk.TypeDiscard, 0, FakeGuest.BuffersGpa + 200_000, 16, writable: false));
        ReadVolume(4096, back);
        Assert.True(back.AsSpan(0, 4096).IndexOfAnyExcept((byte)0) < 0);
        Assert.Equal(data.AsSpan(4096).ToArray(), back.AsSpan(4096).ToArray());

        // WRITE_ZEROES with unmap over the second 4 KiB.
        BinaryPrimitives.WriteUInt64LittleEndian(range, 16);
        BinaryPrimitives.WriteUInt32LittleEndian(range[12..], VirtioBlk.WriteZeroesUnmap);
        Assert.Equal(VirtioBlk.StatusOk, Request(kick, call, VirtioBlk.TypeWriteZeroes, 0, FakeGuest.BuffersGpa + 200_000, 16, writable: false));
        ReadVolume(4096, back);
        Assert.True(back.AsSpan().IndexOfAnyExcept((byte)0) < 0);

        Assert.Equal(VirtioBlk.StatusOk, Request(kick, call, VirtioBlk.TypeGetId, 0, FakeGuest.BuffersGpa + 300_000, 20, writable: true));
        Assert.Equal("v", System.Text.Encoding.ASCII.GetString(_guest.Bytes(FakeGuest.BuffersGpa + 300_000, 20)).TrimEnd('\0'));

        Assert.Equal(VirtioBlk.StatusUnsupported, Request(kick, call, 77, 0, 0, 0, writable: false));
        // Past the end of the volume, and a length that is not a whole sector.
        Assert.Equal(VirtioBlk.StatusIoError, Request(kick, call, VirtioBlk.TypeIn, sector: VolumeBytes / 512, dataGpa: FakeGuest.BuffersGpa, dataBytes: 512, writable: true));
        Assert.Equal(VirtioBlk.StatusIoError, Request(kick, call, VirtioBlk.TypeOut, sector: 0, dataGpa: FakeGuest.BuffersGpa + 4096, dataBytes: 100, writable: false));
        // A data buffer outside guest memory: an I/O error, and the queue keeps working.
        Assert.Equal(VirtioBlk.StatusIoError, Request(kick, call, VirtioBlk.TypeIn, sector: 0, dataGpa: GuestBytes - 512, dataBytes: 4096, writable: true));
        Assert.Equal(VirtioBlk.StatusOk, Request(kick, call, VirtioBlk.TypeFlush, 0, 0, 0, writable: false));

        // GET_VRING_BASE stops the queue and reports how far it got.
        var reply = _client.Call(VhostUserProtocol.GetVringBase, State(0, 0));
        Assert.Equal((uint)_guest.UsedIndex, BinaryPrimitives.ReadUInt32LittleEndian(reply.AsSpan(4)));
        Native.close(kick);
        Native.close(call);
    }

    /// <summary>
    /// Several large requests in one kick, each in an indirect table (as Linux lays them out once INDIRECT_DESC is
    /// negotiated), reads with their data in 4 KiB descriptors as a guest's page list: they run side by side, come back
    /// on the used ring once each, in whatever order they finish, and move the right bytes.
    /// </summary>
    [Fact]
    public void Large_requests_in_indirect_tables_run_together_and_each_comes_back_once()
    {
        var (kick, call) = StartQueue();
        const int requests = 4;
        const uint bytes = 128 * 1024;
        const ulong tables = 1 << 20, headers = (1 << 20) + 65536, writeData = 2 << 20, readData = 3 << 20;
        var data = new byte[requests * bytes];
        new Random(11).NextBytes(data);
        data.CopyTo(_guest.Bytes(writeData, data.Length));

        void Post(bool read)
        {
            for (int i = 0; i < requests; i++)
            {
                ulong table = tables + 4096UL * (ulong)i, header = headers + 32UL * (ulong)i, status = header + 16;
                BinaryPrimitives.WriteUInt32LittleEndian(_guest.Bytes(header, 4), read ? VirtioBlk.TypeIn : VirtioBlk.TypeOut);
                BinaryPrimitives.WriteUInt64LittleEndian(_guest.Bytes(header + 8, 8), (ulong)i * bytes / 512);
                _guest.Bytes(status, 1)[0] = 0xff;
                int n = 0;
                _guest.SetIndirectDescriptor(table, n, header, 16, SplitVirtqueue.DescNext, (ushort)(n + 1));
                n++;
                if (read)
                {
                    for (uint page = 0; page < bytes / 4096; page++, n++)
                        _guest.SetIndirectDescriptor(table, n, readData + (ulong)i * bytes + 4096UL * page, 4096,
                            SplitVirtqueue.DescNext | SplitVirtqueue.DescWrite, (ushort)(n + 1));
                }
                else
                {
                    _guest.SetIndirectDescriptor(table, n, writeData + (ulong)i * bytes, bytes, SplitVirtqueue.DescNext, (ushort)(n + 1));
                    n++;
                }
                _guest.SetIndirectDescriptor(table, n, status, 1, SplitVirtqueue.DescWrite, 0);
                n++;
                _guest.SetDescriptor(i, table, (uint)(16 * n), SplitVirtqueue.DescIndirect, 0);
            }
            ushort before = _guest.UsedIndex;
            for (int i = 0; i < requests; i++) _guest.Publish((ushort)i);
            Native.SignalEventFd(kick);
            WaitForUsed(call, (ushort)(before + requests));
            var seen = new HashSet<uint>();
            for (int k = 0; k < requests; k++)
            {
                var (id, length) = _guest.UsedElement((ushort)(before + k));
                Assert.True(id < requests && seen.Add(id), $"used entry {k} names chain {id}");
                Assert.Equal(read ? bytes + 1 : 1u, length);
                Assert.Equal(VirtioBlk.StatusOk, _guest.Bytes(headers + 32UL * id + 16, 1)[0]);
            }
        }

        Post(read: false);
        var back = new byte[data.Length];
        ReadVolume(0, back);
        Assert.Equal(data, back);
        Post(read: true);
        Assert.Equal(data, _guest.Bytes(readData, data.Length).ToArray());
        Native.close(kick);
        Native.close(call);
    }

    private void WaitForUsed(int call, ushort target)
    {
        var wait = System.Diagnostics.Stopwatch.StartNew();
        var fds = stackalloc Native.PollFd[1];
        while (_guest.UsedIndex != target)
        {
            fds[0] = new Native.PollFd { Fd = call, Events = Native.POLLIN };
            Native.poll(fds, 1, 1000);
            if ((fds[0].Revents & Native.POLLIN) != 0) Native.DrainEventFd(call);
            Assert.True(wait.Elapsed < TimeSpan.FromSeconds(30), $"used index {_guest.UsedIndex}, expected {target} within 30 s");
        }
    }

    [Fact]
    public void Config_space_reports_the_capacity_and_the_limits()
    {
        Handshake();
        var request = new byte[12 + 60];
        BinaryPrimitives.WriteUInt32LittleEndian(request.AsSpan(4), 60);
        var reply = _client.Call(VhostUserProtocol.GetConfig, request);
        Assert.Equal(72, reply.Length);
        Assert.Equal((ulong)VolumeBytes / 512, BinaryPrimitives.ReadUInt64LittleEndian(reply.AsSpan(12)));
        Assert.Equal((uint)VhostUserLimits.DataSegmentsMax, BinaryPrimitives.ReadUInt32LittleEndian(reply.AsSpan(12 + 12)));
    }

    [Theory]
    [InlineData("oversized")]
    [InlineData("version")]
    [InlineData("unknown")]
    [InlineData("queue-index")]
    public void A_malformed_message_closes_the_connection(string what)
    {
        switch (what)
        {
            case "oversized":
                _client.SendHeader(VhostUserProtocol.SetOwner, 1, VhostUserLimits.MessagePayloadMax + 1);
                break;
            case "version":
                _client.Send(VhostUserProtocol.SetOwner, [], flags: 2);
                break;
            case "unknown":
                _client.Send(999, []);
                break;
            case "queue-index":
                _client.Send(VhostUserProtocol.SetVringNum, State(VhostUserLimits.QueuesMax, 16));
                break;
        }
        Assert.True(_thread.Join(TimeSpan.FromSeconds(30)), "the connection should end");
        Assert.True(_client.AtEof());
    }

    [Fact]
    public void Acked_features_that_were_not_offered_are_refused_with_a_failure_reply()
    {
        _client.Call(VhostUserProtocol.GetProtocolFeatures, []);
        _client.Send(VhostUserProtocol.SetProtocolFeatures, U64(VhostUserConnection.OfferedProtocolFeatures));
        // Event index suppression (bit 29) is not offered.
        var ack = _client.Call(VhostUserProtocol.SetFeatures, U64((1UL << 32) | (1UL << VirtioBlk.FeatureEventIndex)), needReply: true);
        Assert.NotEqual(0UL, BinaryPrimitives.ReadUInt64LittleEndian(ack));
    }

    private void Handshake()
    {
        _client.Send(VhostUserProtocol.SetOwner, []);
        ulong features = BinaryPrimitives.ReadUInt64LittleEndian(_client.Call(VhostUserProtocol.GetFeatures, []));
        Assert.NotEqual(0UL, features & (1UL << VirtioBlk.FeatureVersion1));
        Assert.NotEqual(0UL, features & (1UL << VirtioBlk.FeatureDiscard));
        Assert.Equal(0UL, features & (1UL << VirtioBlk.FeatureReadOnly));
        ulong protocol = BinaryPrimitives.ReadUInt64LittleEndian(_client.Call(VhostUserProtocol.GetProtocolFeatures, []));
        _client.Send(VhostUserProtocol.SetProtocolFeatures, U64(protocol));
        _client.Send(VhostUserProtocol.SetFeatures, U64(features));
    }

    /// <summary>
    /// Sets up and starts queue 0 (base <paramref name="vringBase"/>, <paramref name="beforeRings"/> run after the
    /// feature handshake); with <paramref name="refusedAtStart"/> it stops after SET_VRING_KICK, which is expected to fail.
    /// </summary>
    private (int Kick, int Call) StartQueue(uint vringBase = 0, Action? beforeRings = null, bool refusedAtStart = false)
    {
        Handshake();
        beforeRings?.Invoke();
        var table = new byte[8 + 32];
        BinaryPrimitives.WriteUInt32LittleEndian(table, 1);
        BinaryPrimitives.WriteUInt64LittleEndian(table.AsSpan(8), 0);
        BinaryPrimitives.WriteUInt64LittleEndian(table.AsSpan(16), GuestBytes);
        BinaryPrimitives.WriteUInt64LittleEndian(table.AsSpan(24), FakeGuest.UserBase);
        BinaryPrimitives.WriteUInt64LittleEndian(table.AsSpan(32), 0);
        var ack = _client.Call(VhostUserProtocol.SetMemTable, table, [(int)_memoryFile.DangerousGetHandle()], needReply: true);
        Assert.Equal(0UL, BinaryPrimitives.ReadUInt64LittleEndian(ack));
        _client.Send(VhostUserProtocol.SetVringNum, State(0, QueueSize));
        _client.Send(VhostUserProtocol.SetVringBase, State(0, vringBase));
        var address = new byte[40];
        BinaryPrimitives.WriteUInt64LittleEndian(address.AsSpan(8), FakeGuest.UserBase + FakeGuest.DescriptorsGpa);
        BinaryPrimitives.WriteUInt64LittleEndian(address.AsSpan(16), FakeGuest.UserBase + FakeGuest.UsedGpa);
        BinaryPrimitives.WriteUInt64LittleEndian(address.AsSpan(24), FakeGuest.UserBase + FakeGuest.AvailableGpa);
        _client.Send(VhostUserProtocol.SetVringAddr, address);
        int kick = Native.eventfd(0, Native.EFD_CLOEXEC);
        int call = Native.eventfd(0, Native.EFD_CLOEXEC);
        _client.Send(VhostUserProtocol.SetVringCall, U64(0), [call]);
        _client.Send(VhostUserProtocol.SetVringKick, U64(0), [kick]);
        if (refusedAtStart) return (kick, call);
        var enabled = _client.Call(VhostUserProtocol.SetVringEnable, State(0, 1), needReply: true);
        Assert.Equal(0UL, BinaryPrimitives.ReadUInt64LittleEndian(enabled));
        return (kick, call);
    }

    private ushort _nextHead;

    /// <summary>Posts one request (header, optional data, status), kicks, waits for the call, returns the status.</summary>
    private byte Request(int kick, int call, uint type, ulong sector, ulong dataGpa, uint dataBytes, bool writable)
    {
        ushort head = (ushort)(_nextHead % (QueueSize - 2));
        _nextHead += 3;
        ulong status = WriteChain(head, type, sector, dataGpa, dataBytes, writable);
        ushort usedBefore = _guest.UsedIndex;
        _guest.Publish(head);
        Native.SignalEventFd(kick);
        var wait = System.Diagnostics.Stopwatch.StartNew();
        var fds = stackalloc Native.PollFd[1];
        while (_guest.UsedIndex == usedBefore)
        {
            fds[0] = new Native.PollFd { Fd = call, Events = Native.POLLIN };
            Native.poll(fds, 1, 1000);
            if ((fds[0].Revents & Native.POLLIN) != 0) Native.DrainEventFd(call);
            Assert.True(wait.Elapsed < TimeSpan.FromSeconds(30), "no completion within 30 s");
        }
        Assert.Equal(head, (ushort)_guest.UsedElement(usedBefore).Id);
        return _guest.Bytes(status, 1)[0];
    }

    /// <summary>
    /// Writes a request's chain from descriptor <paramref name="head"/> (header, optional data, status: up to three
    /// descriptors) with its header at a place of its own; returns where its status byte is (set to 0xff).
    /// </summary>
    private ulong WriteChain(ushort head, uint type, ulong sector, ulong dataGpa, uint dataBytes, bool writable)
    {
        ulong header = FakeGuest.BuffersGpa + 400_000 + (ulong)head * 32;
        BinaryPrimitives.WriteUInt32LittleEndian(_guest.Bytes(header, 4), type);
        BinaryPrimitives.WriteUInt64LittleEndian(_guest.Bytes(header + 8, 8), sector);
        ulong status = header + 16;
        _guest.Bytes(status, 1)[0] = 0xff;
        ushort statusDescriptor = (ushort)(head + (dataBytes > 0 ? 2 : 1));
        _guest.SetDescriptor(head, header, 16, SplitVirtqueue.DescNext, (ushort)(head + 1));
        if (dataBytes > 0)
            _guest.SetDescriptor(head + 1, dataGpa, dataBytes, (ushort)(SplitVirtqueue.DescNext | (writable ? SplitVirtqueue.DescWrite : 0)), statusDescriptor);
        _guest.SetDescriptor(statusDescriptor, status, 1, SplitVirtqueue.DescWrite, 0);
        return status;
    }

    // The engine completes reads inline; a helper keeps the test methods free of blocking waits on tasks.
    private void ReadVolume(long offset, byte[] into)
    {
        var read = _volume.ReadAsync(offset, into);
        Assert.True(read.IsCompleted);
        read.GetAwaiter().GetResult();
    }

    private static byte[] U64(ulong value)
    {
        var b = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(b, value);
        return b;
    }

    private static byte[] State(uint index, uint num)
    {
        var b = new byte[8];
        BinaryPrimitives.WriteUInt32LittleEndian(b, index);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(4), num);
        return b;
    }
}

/// <summary>A minimal vhost-user front-end for tests: sends messages (with descriptors), reads replies.</summary>
internal sealed unsafe class TestFrontEnd(int fd) : IDisposable
{
    public void Send(uint request, ReadOnlySpan<byte> payload, ReadOnlySpan<int> fds = default, uint flags = VhostUserProtocol.Version)
    {
        var message = new byte[VhostUserProtocol.HeaderBytes + payload.Length];
        BinaryPrimitives.WriteUInt32LittleEndian(message, request);
        BinaryPrimitives.WriteUInt32LittleEndian(message.AsSpan(4), flags);
        BinaryPrimitives.WriteUInt32LittleEndian(message.AsSpan(8), (uint)payload.Length);
        payload.CopyTo(message.AsSpan(VhostUserProtocol.HeaderBytes));
        byte* control = stackalloc byte[64];
        fixed (byte* p = message)
        {
            var iov = new Native.IoVec { Base = p, Length = (nuint)message.Length };
            var msg = new Native.MsgHdr { Iov = &iov, IovLength = 1 };
            if (fds.Length > 0)
            {
                *(nuint*)control = (nuint)(Native.CmsgHeaderBytes + 4 * fds.Length);
                *(int*)(control + 8) = Native.SOL_SOCKET;
                *(int*)(control + 12) = Native.SCM_RIGHTS;
                for (int i = 0; i < fds.Length; i++) *(int*)(control + 16 + 4 * i) = fds[i];
                msg.Control = control;
                msg.ControlLength = (nuint)(Native.CmsgHeaderBytes + ((4 * fds.Length + 7) & ~7));
            }
            Assert.Equal(message.Length, (int)Native.sendmsg(fd, &msg, Native.MSG_NOSIGNAL));
        }
    }

    /// <summary>A header announcing <paramref name="size"/> payload bytes, without the payload.</summary>
    public void SendHeader(uint request, uint flags, int size)
    {
        var header = new byte[12];
        BinaryPrimitives.WriteUInt32LittleEndian(header, request);
        BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(4), flags);
        BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(8), (uint)size);
        fixed (byte* p = header) Native.write(fd, p, 12);
    }

    /// <summary>Sends and returns the reply's payload.</summary>
    public byte[] Call(uint request, ReadOnlySpan<byte> payload, ReadOnlySpan<int> fds = default, bool needReply = false)
    {
        Send(request, payload, fds, VhostUserProtocol.Version | (needReply ? VhostUserProtocol.FlagNeedReply : 0));
        var header = Read(12);
        Assert.Equal(request, BinaryPrimitives.ReadUInt32LittleEndian(header));
        Assert.Equal(VhostUserProtocol.Version | VhostUserProtocol.FlagReply, BinaryPrimitives.ReadUInt32LittleEndian(header.AsSpan(4)));
        return Read((int)BinaryPrimitives.ReadUInt32LittleEndian(header.AsSpan(8)));
    }

    /// <summary>Sends and returns the reply's payload and the descriptor that came with it (-1 if none).</summary>
    public byte[] CallReceivingFd(uint request, ReadOnlySpan<byte> payload, out int received)
    {
        Send(request, payload);
        var header = new byte[12];
        byte* control = stackalloc byte[64];
        received = -1;
        fixed (byte* p = header)
        {
            var iov = new Native.IoVec { Base = p, Length = 12 };
            var msg = new Native.MsgHdr { Iov = &iov, IovLength = 1, Control = control, ControlLength = 64 };
            Assert.Equal(12, (int)Native.recvmsg(fd, &msg, Native.MSG_CMSG_CLOEXEC));
            if (msg.ControlLength >= Native.CmsgHeaderBytes + 4 && *(int*)(control + 12) == Native.SCM_RIGHTS) received = *(int*)(control + 16);
        }
        Assert.Equal(request, BinaryPrimitives.ReadUInt32LittleEndian(header));
        return Read((int)BinaryPrimitives.ReadUInt32LittleEndian(header.AsSpan(8)));
    }

    public bool AtEof()
    {
        byte b;
        return Native.read(fd, &b, 1) == 0;
    }

    private byte[] Read(int count)
    {
        var buffer = new byte[count];
        int done = 0;
        fixed (byte* p = buffer)
        {
            while (done < count)
            {
                nint n = Native.read(fd, p + done, (nuint)(count - done));
                Assert.True(n > 0, "the back-end closed the connection");
                done += (int)n;
            }
        }
        return buffer;
    }

    public void Dispose() => Native.close(fd);
}
