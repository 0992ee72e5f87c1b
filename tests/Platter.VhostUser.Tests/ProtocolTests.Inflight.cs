using System.Buffers.Binary;
using Platter.VhostUser.Internal;

namespace Platter.VhostUser.Tests;

/// <summary>
/// In-flight tracking (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD) as QEMU's vhost-user-blk uses it: GET_INFLIGHT_FD for a
/// shared area on first start, SET_INFLIGHT_FD with the same area on every start, also to a new server after the old
/// one died. The area's layout is written here from QEMU's docs/interop/vhost-user.rst ("Inflight I/O tracking"), not
/// from the server's code, so these tests also pin the layout a front-end keeps across servers.
/// </summary>
public sealed unsafe partial class ProtocolTests
{
    // Per queue: u64 features, u16 version, u16 desc_num, u16 last_batch_head, u16 used_idx; then per descriptor:
    // u8 inflight, 5 bytes padding, u16 next, u64 counter.
    private const int RegionVersion = 8, RegionDescNum = 10, RegionLastBatchHead = 12, RegionUsedIdx = 14, RegionHeaderBytes = 16;
    private const int EntryBytes = 16, EntryNext = 6, EntryCounter = 8;

    private int _inflightFd = -1;
    private byte* _inflight;
    private ulong _inflightBytes;

    private void DisposeInflightArea()
    {
        if (_inflight is not null) Native.munmap(_inflight, (nuint)_inflightBytes);
        Native.CloseIfOpen(ref _inflightFd);
    }

    /// <summary>GET_INFLIGHT_FD, then maps the area as the front-end does; returns its size.</summary>
    private ulong GetInflightArea(ushort queues, ushort queueSize)
    {
        var reply = _client.CallReceivingFd(VhostUserProtocol.GetInflightFd, InflightDescription(0, 0, queues, queueSize), out _inflightFd);
        Assert.Equal(24, reply.Length);
        _inflightBytes = BinaryPrimitives.ReadUInt64LittleEndian(reply);
        Assert.True(_inflightFd >= 0, "GET_INFLIGHT_FD came without a descriptor");
        Assert.True(_inflightBytes >= (ulong)queues * (RegionHeaderBytes + EntryBytes * (ulong)queueSize), $"an area of {_inflightBytes} bytes");
        _inflight = (byte*)Native.mmap(null, (nuint)_inflightBytes, Native.PROT_READ | Native.PROT_WRITE, Native.MAP_SHARED, _inflightFd, 0);
        Assert.True(_inflight != (byte*)-1);
        return _inflightBytes;
    }

    /// <summary>SET_INFLIGHT_FD with <paramref name="fd"/>; returns the REPLY_ACK value (0: accepted).</summary>
    private ulong SetInflightArea(int fd, ulong bytes, ushort queues, ushort queueSize, ulong offset = 0) =>
        BinaryPrimitives.ReadUInt64LittleEndian(_client.Call(VhostUserProtocol.SetInflightFd, InflightDescription(bytes, offset, queues, queueSize), [fd],
            needReply: true));

    private static byte[] InflightDescription(ulong bytes, ulong offset, ushort queues, ushort queueSize)
    {
        // QEMU sends its struct with the padding to 8 bytes: 24 bytes.
        var b = new byte[24];
        BinaryPrimitives.WriteUInt64LittleEndian(b, bytes);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(8), offset);
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(16), queues);
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(18), queueSize);
        return b;
    }

    private ref ushort RegionField(int offset) => ref *(ushort*)(_inflight + offset);
    private ref byte EntryFlag(int head) => ref *(_inflight + RegionHeaderBytes + EntryBytes * head);
    private ref ushort EntryNextOf(int head) => ref *(ushort*)(_inflight + RegionHeaderBytes + EntryBytes * head + EntryNext);
    private ref ulong EntryCounterOf(int head) => ref *(ulong*)(_inflight + RegionHeaderBytes + EntryBytes * head + EntryCounter);

    /// <summary>A region header as a server that used it leaves it: version 1, <paramref name="descNum"/> entries.</summary>
    private void InUse(int descNum)
    {
        RegionField(RegionVersion) = 1;
        RegionField(RegionDescNum) = (ushort)descNum;
    }

    private void AssertNothingInFlight()
    {
        for (int h = 0; h < QueueSize; h++) Assert.True(EntryFlag(h) == 0, $"descriptor {h} is still marked in flight");
        Assert.Equal(_guest.UsedIndex, RegionField(RegionUsedIdx));
    }

    [Fact]
    public void The_server_marks_each_request_in_its_inflight_area_until_it_is_on_the_used_ring()
    {
        var (kick, call) = StartQueue(beforeRings: () =>
        {
            ulong bytes = GetInflightArea(1, QueueSize);
            Assert.Equal(0UL, SetInflightArea(_inflightFd, bytes, 1, QueueSize));
        });
        // The server made the area a memfd no one can shrink under its mapping.
        Assert.NotEqual(0, Native.fcntl(_inflightFd, Native.F_GET_SEALS, 0) & Native.F_SEAL_SHRINK);
        // Initialised when the queue started: version 1, one entry per descriptor.
        Assert.Equal(1, RegionField(RegionVersion));
        Assert.Equal(QueueSize, RegionField(RegionDescNum));

        var data = new byte[4096];
        new Random(5).NextBytes(data);
        data.CopyTo(_guest.Bytes(FakeGuest.BuffersGpa, data.Length));
        Assert.Equal(VirtioBlk.StatusOk, Request(kick, call, VirtioBlk.TypeOut, 0, FakeGuest.BuffersGpa, 4096, writable: false));
        Assert.Equal(VirtioBlk.StatusOk, Request(kick, call, VirtioBlk.TypeFlush, 0, 0, 0, writable: false));
        // Taken in order (counters 0 and 1 on heads 0 and 3), each cleared once its used entry was published; the
        // last batch is the last request completed.
        Assert.Equal(0UL, EntryCounterOf(0));
        Assert.Equal(1UL, EntryCounterOf(3));
        Assert.Equal(3, RegionField(RegionLastBatchHead));
        AssertNothingInFlight();
        Native.close(kick);
        Native.close(call);
    }

    /// <summary>A driver may shrink a queue below the size QEMU made the area for: tracking works on the first entries.</summary>
    [Fact]
    public void A_ring_smaller_than_the_inflight_area_is_tracked()
    {
        var (kick, call) = StartQueue(beforeRings: () =>
        {
            ulong bytes = GetInflightArea(1, QueueSize * 4);
            Assert.Equal(0UL, SetInflightArea(_inflightFd, bytes, 1, QueueSize * 4));
        });
        Assert.Equal(QueueSize * 4, RegionField(RegionDescNum));
        Assert.Equal(VirtioBlk.StatusOk, Request(kick, call, VirtioBlk.TypeFlush, 0, 0, 0, writable: false));
        Assert.Equal(VirtioBlk.StatusOk, Request(kick, call, VirtioBlk.TypeFlush, 0, 0, 0, writable: false));
        Assert.Equal(3, RegionField(RegionLastBatchHead));
        Assert.Equal(1UL, EntryCounterOf(3));
        AssertNothingInFlight();
        Native.close(kick);
        Native.close(call);
    }

    /// <summary>
    /// A server died with requests in flight that completed out of order: it had taken A (head 0), B (head 3) and C
    /// (head 6), completed B, and A and C were marked in its in-flight area (C taken first). QEMU reconnects to a new
    /// server, hands it the area, and, not knowing better, restarts the ring at the used index (1), where the available
    /// ring names B. The new server must complete A and C, never B again, and go on with what the guest queues next.
    /// With <paramref name="diedPublishingB"/> the old server died between publishing B on the used ring and clearing
    /// its mark: the area's used_idx is behind the ring and its last batch is B, which must not be resubmitted.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Requests_in_flight_when_the_server_died_are_completed_after_reconnect(bool diedPublishingB)
    {
        const ulong dataA = FakeGuest.BuffersGpa, dataB = FakeGuest.BuffersGpa + 8192, dataC = FakeGuest.BuffersGpa + 16384, readD = FakeGuest.BuffersGpa + 32768;
        var random = new Random(17);
        byte[] a = new byte[4096], b = new byte[4096], c = new byte[4096];
        random.NextBytes(a);
        random.NextBytes(b);
        random.NextBytes(c);
        ulong statusA = 0, statusC = 0;
        var (kick, call) = StartQueue(vringBase: 1, beforeRings: () =>
        {
            ulong bytes = GetInflightArea(1, QueueSize);
            a.CopyTo(_guest.Bytes(dataA, 4096));
            b.CopyTo(_guest.Bytes(dataB, 4096));
            c.CopyTo(_guest.Bytes(dataC, 4096));
            statusA = WriteChain(0, VirtioBlk.TypeOut, 0, dataA, 4096, writable: false);
            ulong statusB = WriteChain(3, VirtioBlk.TypeOut, 16, dataB, 4096, writable: false);
            statusC = WriteChain(6, VirtioBlk.TypeOut, 8, dataC, 4096, writable: false);
            _guest.Publish(0);
            _guest.Publish(3);
            _guest.Publish(6);
            // What the dead server left: B on the used ring, A and C marked, C taken before A.
            _guest.Bytes(statusB, 1)[0] = VirtioBlk.StatusOk;
            _guest.SetUsed(0, 3, 1, usedIndex: 1);
            RegionField(RegionDescNum) = QueueSize;
            EntryCounterOf(6) = 40;
            EntryFlag(6) = 1;
            EntryCounterOf(0) = 41;
            EntryFlag(0) = 1;
            RegionField(RegionLastBatchHead) = 3;
            if (diedPublishingB)
            {
                EntryCounterOf(3) = 42;
                EntryFlag(3) = 1;
                EntryNextOf(3) = 0;
                RegionField(RegionUsedIdx) = 0;
            }
            else
            {
                RegionField(RegionUsedIdx) = 1;
            }
            RegionField(RegionVersion) = 1;
            Assert.Equal(0UL, SetInflightArea(_inflightFd, bytes, 1, QueueSize));
        });

        // Resubmitted at start: A and C reach the used ring without a kick.
        WaitForUsed(call, 3);
        var completed = new HashSet<uint> { _guest.UsedElement(1).Id, _guest.UsedElement(2).Id };
        Assert.Equal(new uint[] { 0, 6 }, completed.Order());
        Assert.Equal(VirtioBlk.StatusOk, _guest.Bytes(statusA, 1)[0]);
        Assert.Equal(VirtioBlk.StatusOk, _guest.Bytes(statusC, 1)[0]);

        // The next request the guest queues (D, a read of A's data) is taken from where the old server stopped.
        ulong statusD = WriteChain(9, VirtioBlk.TypeIn, 0, readD, 4096, writable: true);
        _guest.Publish(9);
        Native.SignalEventFd(kick);
        WaitForUsed(call, 4);
        Assert.Equal(9u, _guest.UsedElement(3).Id);
        Assert.Equal(VirtioBlk.StatusOk, _guest.Bytes(statusD, 1)[0]);
        Assert.Equal(a, _guest.Bytes(readD, 4096).ToArray());

        // Stopping waits for everything taken: nothing more came back (B was not run again) and the base covers D.
        var reply = _client.Call(VhostUserProtocol.GetVringBase, State(0, 0));
        Assert.Equal(4u, BinaryPrimitives.ReadUInt32LittleEndian(reply.AsSpan(4)));
        Assert.Equal(4, _guest.UsedIndex);
        var back = new byte[4096];
        ReadVolume(0, back);
        Assert.Equal(a, back);
        ReadVolume(8 * 512, back);
        Assert.Equal(c, back);
        // B's data never reached the volume: only the dead server "completed" it.
        ReadVolume(16 * 512, back);
        Assert.True(back.AsSpan().IndexOfAnyExcept((byte)0) < 0, "B was run again after the reconnect");
        AssertNothingInFlight();
        Native.close(kick);
        Native.close(call);
    }

    /// <summary>
    /// An in-flight area the server cannot trust is refused: at SET_INFLIGHT_FD (its shape, its file) with a failure
    /// reply, the connection going on; or when the queue starts (what the region says) with the connection closed,
    /// the server process unharmed either way.
    /// </summary>
    [Theory]
    [InlineData("no-queues", false)]
    [InlineData("queue-size-not-power-of-two", false)]
    [InlineData("area-too-small", false)]
    [InlineData("area-past-end-of-file", false)]
    [InlineData("offset-not-page-aligned", false)]
    [InlineData("plain-file", false)]
    [InlineData("version", true)]
    [InlineData("desc-num", true)]
    [InlineData("flag", true)]
    [InlineData("last-batch-head", true)]
    [InlineData("used-index-far-behind", true)]
    [InlineData("area-smaller-than-ring", true)]
    [InlineData("flag-past-ring", true)]
    public void A_malformed_inflight_area_is_refused(string what, bool atQueueStart)
    {
        ulong ack = 0;
        var (kick, call) = StartQueue(refusedAtStart: atQueueStart, beforeRings: () =>
        {
            ushort areaQueueSize = (ushort)(what switch
            {
                "area-smaller-than-ring" => QueueSize / 2,
                "flag-past-ring" => QueueSize * 2,
                _ => QueueSize,
            });
            ulong bytes = GetInflightArea(1, areaQueueSize);
            int fd = _inflightFd;
            ushort queues = 1;
            ulong offset = 0;
            using var plain = what == "plain-file" ? File.OpenHandle(_dir.Combine("plain"), FileMode.CreateNew, FileAccess.ReadWrite) : null;
            switch (what)
            {
                case "no-queues": queues = 0; break;
                case "queue-size-not-power-of-two": areaQueueSize = 12; break;
                case "area-too-small": bytes = 64; break;
                case "area-past-end-of-file": bytes += 4096; break;
                case "offset-not-page-aligned": offset = 64; break;
                case "plain-file":
                    RandomAccess.SetLength(plain!, (long)bytes);
                    fd = (int)plain!.DangerousGetHandle();
                    break;
                case "version": RegionField(RegionVersion) = 2; break;
                case "desc-num":
                    InUse(QueueSize / 2);
                    break;
                case "flag":
                    InUse(QueueSize);
                    EntryFlag(5) = 2;
                    break;
                case "last-batch-head":
                    // The used ring moved one past the area's used_idx, and the batch to clear names no descriptor.
                    InUse(QueueSize);
                    _guest.SetUsed(0, 0, 1, usedIndex: 1);
                    RegionField(RegionLastBatchHead) = 1000;
                    break;
                case "flag-past-ring":
                    // The area is for queues of 32 and the ring has 16: an entry past 16 can be no head of it.
                    InUse(QueueSize * 2);
                    EntryFlag(QueueSize + 3) = 1;
                    break;
                case "used-index-far-behind":
                    InUse(QueueSize);
                    RegionField(RegionUsedIdx) = unchecked((ushort)-100);
                    break;
            }
            ack = SetInflightArea(fd, bytes, queues, areaQueueSize, offset);
        });
        if (atQueueStart)
        {
            Assert.Equal(0UL, ack);
            Assert.True(_thread.Join(TimeSpan.FromSeconds(30)), "the connection should end when the queue cannot start");
            Assert.True(_client.AtEof());
        }
        else
        {
            Assert.NotEqual(0UL, ack);
            // Refused, not fatal: the queue runs, untracked.
            Assert.Equal(VirtioBlk.StatusOk, Request(kick, call, VirtioBlk.TypeFlush, 0, 0, 0, writable: false));
        }
        Native.close(kick);
        Native.close(call);
    }
}
