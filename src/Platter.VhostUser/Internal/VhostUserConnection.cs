using System.Buffers.Binary;
using Microsoft.Extensions.Logging;
using Platter.Volumes;

namespace Platter.VhostUser.Internal;

/// <summary>
/// One front-end (QEMU) connected to a volume's socket: the control messages on a blocking thread of its own, the
/// guest memory they map, and the queues they start.
/// </summary>
/// <remarks>
/// <para>Offered and honoured: VIRTIO_F_VERSION_1, VIRTIO_RING_F_INDIRECT_DESC, VHOST_USER_F_PROTOCOL_FEATURES; protocol features MQ, REPLY_ACK,
/// CONFIG (QEMU's vhost-user-blk needs CONFIG to read the capacity) and INFLIGHT_SHMFD (GET/SET_INFLIGHT_FD: the
/// shared area in which every taken request is marked until it is on the used ring, so that after a crash of the
/// server the next one resubmits what was in flight; <see cref="InflightArea"/>). Not offered, hence refused if sent
/// anyway: dirty logging for migration (SET_LOG_BASE/SET_LOG_FD), the back-end request channel (so no config-change notice on resize: the guest sees a new
/// size after it reconnects), IOMMU, packed rings, memory slots. Such a message gets a failure reply when the front-end
/// asked for one, and otherwise ends the connection with a log line naming it.</para>
/// <para>A malformed message (bad version, oversized payload, a payload shorter than its request needs, a queue index
/// out of range, memory that cannot be mapped) ends this connection only; the socket keeps accepting.</para>
/// </remarks>
internal sealed unsafe class VhostUserConnection : IDisposable
{
    private readonly int _fd;
    private readonly IVolumeHandle _volume;
    private readonly bool _readOnly;
    private readonly ILogger _log;
    private readonly string _name;
    private readonly byte[] _payload = new byte[VhostUserLimits.MessagePayloadMax];
    private readonly int[] _fds = new int[VhostUserLimits.DescriptorsPerMessageMax];
    private readonly VringState[] _vrings = new VringState[VhostUserLimits.QueuesMax];
    private int _fdCount;
    private ulong _features;
    private ulong _protocolFeatures;
    private bool _featuresSet;
    private GuestMemory? _memory;
    // The in-flight area of SET_INFLIGHT_FD, or null: requests are then not tracked across a crash.
    private InflightArea? _inflight;
    private int _closed;

    private sealed class VringState
    {
        public uint Size;
        public ushort Base;
        public ulong Descriptors;
        public ulong Available;
        public ulong Used;
        public bool AddressSet;
        public int CallFd = -1;
        // Null until the front-end says: a ring the front-end never enables nor disables is served once kicked (older
        // QEMU vhost-user-blk front-ends never send SET_VRING_ENABLE; later ones do, before or after the kick).
        public bool? Enabled;
        public BlkQueue? Queue;
    }

    /// <summary>Serves <paramref name="volume"/> (read-only when <paramref name="readOnly"/>) on <paramref name="fd"/>, a connected, blocking unix stream socket its owner closes after <see cref="Dispose"/>; <paramref name="log"/> gets the connection's events.</summary>
    public VhostUserConnection(int fd, IVolumeHandle volume, bool readOnly, ILogger log)
    {
        _fd = fd;
        _volume = volume;
        _readOnly = readOnly || volume.IsReadOnly;
        _log = log;
        _name = volume.Name;
        for (int i = 0; i < _vrings.Length; i++) _vrings[i] = new VringState();
    }

    public ulong OfferedFeatures => VirtioBlk.Features(_readOnly) | (1UL << VhostUserProtocol.FeatureProtocolFeatures);

    public static ulong OfferedProtocolFeatures =>
        (1UL << VhostUserProtocol.ProtocolMultiQueue) | (1UL << VhostUserProtocol.ProtocolReplyAck) | (1UL << VhostUserProtocol.ProtocolConfig)
        | (1UL << VhostUserProtocol.ProtocolInflightShmfd);

    /// <summary>Serves messages until the front-end hangs up, breaks the protocol, or <see cref="Close"/> is called.</summary>
    public void Run()
    {
        try
        {
            while (Volatile.Read(ref _closed) == 0)
            {
                if (!TryReceive(out uint request, out uint flags, out int size)) break;
                try
                {
                    Handle(request, flags, _payload.AsSpan(0, size));
                }
                finally
                {
                    for (int i = 0; i < _fdCount; i++) Native.CloseIfOpen(ref _fds[i]);
                    _fdCount = 0;
                }
            }
        }
        catch (VhostUserException e)
        {
            if (Volatile.Read(ref _closed) == 0) _log.LogWarning("vhost-user-blk {Volume}: connection closed: {Reason}", _name, e.Message);
        }
        finally
        {
            // The front-end sees the end at once (and QEMU's reconnect starts), whoever closes the descriptor later.
            Close();
        }
    }

    /// <summary>Wakes <see cref="Run"/> (from another thread) so that it returns; safe to call twice.</summary>
    public void Close()
    {
        if (Interlocked.Exchange(ref _closed, 1) == 0) Native.shutdown(_fd, Native.SHUT_RDWR);
    }

    public void Dispose()
    {
        Close();
        StopAll();
        _memory?.Dispose();
        _memory = null;
        // After the queues: they write the area until they stop.
        _inflight?.Dispose();
        _inflight = null;
        foreach (var v in _vrings) Native.CloseIfOpen(ref v.CallFd);
    }

    private void StopAll()
    {
        foreach (var v in _vrings)
        {
            if (v.Queue is null) continue;
            v.Queue.Dispose();
            v.Queue = null;
        }
    }

    private void Handle(uint request, uint flags, ReadOnlySpan<byte> payload)
    {
        if ((flags & VhostUserProtocol.VersionMask) != VhostUserProtocol.Version)
            throw new VhostUserException($"message version {flags & VhostUserProtocol.VersionMask}, expected {VhostUserProtocol.Version}");
        bool ackWanted = (flags & VhostUserProtocol.FlagNeedReply) != 0 && (_protocolFeatures & (1UL << VhostUserProtocol.ProtocolReplyAck)) != 0;
        _log.LogDebug("vhost-user-blk {Volume}: {Request} ({Bytes} bytes, {Fds} fds)", _name, VhostUserProtocol.Name(request), payload.Length, _fdCount);
        string? failure = null;
        switch (request)
        {
            case VhostUserProtocol.GetFeatures:
                ReplyU64(request, OfferedFeatures);
                return;
            case VhostUserProtocol.SetFeatures:
            {
                ulong features = U64(payload, request);
                if ((features & ~OfferedFeatures) != 0)
                {
                    failure = $"front-end acked features 0x{features & ~OfferedFeatures:x} that were not offered";
                    break;
                }
                _features = features;
                _featuresSet = true;
                _log.LogInformation("vhost-user-blk {Volume}: driver features 0x{Features:x}{Indirect}", _name, features,
                    (features & (1UL << VirtioBlk.FeatureIndirectDescriptors)) != 0 ? " (indirect descriptors)" : "");
                // Without protocol features rings start enabled; with them SET_VRING_ENABLE decides.
                if ((features & (1UL << VhostUserProtocol.FeatureProtocolFeatures)) == 0)
                    foreach (var v in _vrings) v.Enabled = true;
                break;
            }
            case VhostUserProtocol.SetOwner:
                break;
            case VhostUserProtocol.ResetOwner:
                StopAll();
                _featuresSet = false;
                _features = 0;
                break;
            case VhostUserProtocol.GetProtocolFeatures:
                ReplyU64(request, OfferedProtocolFeatures);
                return;
            case VhostUserProtocol.SetProtocolFeatures:
            {
                ulong features = U64(payload, request);
                if ((features & ~OfferedProtocolFeatures) != 0)
                {
                    failure = $"front-end acked protocol features 0x{features & ~OfferedProtocolFeatures:x} that were not offered";
                    break;
                }
                _protocolFeatures = features;
                break;
            }
            case VhostUserProtocol.GetQueueNum:
                ReplyU64(request, VhostUserLimits.QueuesMax);
                return;
            case VhostUserProtocol.SetMemTable:
                failure = SetMemTable(payload);
                break;
            case VhostUserProtocol.SetVringNum:
            {
                var (v, num) = VringStateMessage(payload, request);
                if (v.Queue is not null) failure = "SET_VRING_NUM on a running queue";
                else if (num == 0 || num > SplitVirtqueue.SizeMax || !uint.IsPow2(num)) failure = $"queue size {num} is not a power of two up to {SplitVirtqueue.SizeMax}";
                else v.Size = num;
                break;
            }
            case VhostUserProtocol.SetVringBase:
            {
                var (v, num) = VringStateMessage(payload, request);
                if (v.Queue is not null) failure = "SET_VRING_BASE on a running queue";
                else if (num > ushort.MaxValue) failure = $"queue base {num} is not a 16-bit index (packed rings are not offered)";
                else v.Base = (ushort)num;
                break;
            }
            case VhostUserProtocol.SetVringAddr:
            {
                if (payload.Length < 40) throw new VhostUserException($"SET_VRING_ADDR payload of {payload.Length} bytes, expected 40");
                var v = Vring(BinaryPrimitives.ReadUInt32LittleEndian(payload));
                if (v.Queue is not null)
                {
                    failure = "SET_VRING_ADDR on a running queue";
                    break;
                }
                v.Descriptors = BinaryPrimitives.ReadUInt64LittleEndian(payload[8..]);
                v.Used = BinaryPrimitives.ReadUInt64LittleEndian(payload[16..]);
                v.Available = BinaryPrimitives.ReadUInt64LittleEndian(payload[24..]);
                v.AddressSet = true;
                break;
            }
            case VhostUserProtocol.GetVringBase:
            {
                var (v, _) = VringStateMessage(payload, request);
                uint index = BinaryPrimitives.ReadUInt32LittleEndian(payload);
                // Stopping waits for in-flight requests, so the base reported covers exactly what reached the used ring.
                ushort next = v.Base;
                if (v.Queue is not null)
                {
                    next = v.Queue.Stop();
                    Native.CloseIfOpen(ref v.CallFd);
                    v.CallFd = v.Queue.DetachCallFd();
                    v.Queue.Dispose();
                    v.Queue = null;
                }
                v.Base = next;
                Span<byte> reply = stackalloc byte[8];
                BinaryPrimitives.WriteUInt32LittleEndian(reply, index);
                BinaryPrimitives.WriteUInt32LittleEndian(reply[4..], next);
                Reply(request, reply);
                return;
            }
            case VhostUserProtocol.SetVringKick:
                failure = SetVringKick(payload);
                break;
            case VhostUserProtocol.SetVringCall:
            {
                ulong value = U64(payload, request);
                var v = Vring((uint)(value & VhostUserProtocol.VringIndexMask));
                int fd = (value & VhostUserProtocol.VringNoFd) != 0 ? -1 : TakeFd(request);
                if (v.Queue is not null) v.Queue.ReplaceCallFd(fd);
                else
                {
                    Native.CloseIfOpen(ref v.CallFd);
                    v.CallFd = fd;
                }
                break;
            }
            case VhostUserProtocol.SetVringErr:
            {
                // The back-end never reports ring errors through this descriptor (it logs them); accepted and closed.
                ulong value = U64(payload, request);
                Vring((uint)(value & VhostUserProtocol.VringIndexMask));
                break;
            }
            case VhostUserProtocol.SetVringEnable:
            {
                var (v, num) = VringStateMessage(payload, request);
                v.Enabled = num != 0;
                v.Queue?.SetEnabled(num != 0);
                break;
            }
            case VhostUserProtocol.GetConfig:
            {
                if (payload.Length < 12) throw new VhostUserException($"GET_CONFIG payload of {payload.Length} bytes");
                uint offset = BinaryPrimitives.ReadUInt32LittleEndian(payload);
                uint size = BinaryPrimitives.ReadUInt32LittleEndian(payload[4..]);
                if (size > VhostUserLimits.ConfigBytesMax || offset > VhostUserLimits.ConfigBytesMax - size)
                    throw new VhostUserException($"GET_CONFIG of {size} bytes at {offset}: more than the {VhostUserLimits.ConfigBytesMax}-byte config space");
                Span<byte> config = stackalloc byte[VhostUserLimits.ConfigBytesMax];
                VirtioBlk.WriteConfig(config, _volume.SizeBytes);
                Span<byte> reply = stackalloc byte[12 + (int)size];
                payload[..12].CopyTo(reply);
                config.Slice((int)offset, (int)size).CopyTo(reply[12..]);
                Reply(request, reply);
                return;
            }
            case VhostUserProtocol.GetInflightFd:
                GetInflightFd(payload);
                return;
            case VhostUserProtocol.SetInflightFd:
                failure = SetInflightFd(payload);
                break;
            case VhostUserProtocol.SetConfig:
                // No field of the virtio-blk config is writable here (CONFIG_WCE is not offered).
                failure = "SET_CONFIG: the config space is read-only (VIRTIO_BLK_F_CONFIG_WCE is not offered)";
                break;
            default:
                if (!ackWanted) throw new VhostUserException($"{VhostUserProtocol.Name(request)} is not supported by this back-end");
                failure = $"{VhostUserProtocol.Name(request)} is not supported by this back-end";
                break;
        }
        if (failure is not null) _log.LogWarning("vhost-user-blk {Volume}: {Request} refused: {Failure}", _name, VhostUserProtocol.Name(request), failure);
        if (ackWanted) ReplyU64(request, failure is null ? 0UL : 1UL);
        else if (failure is not null) throw new VhostUserException(failure);
    }

    private string? SetMemTable(ReadOnlySpan<byte> payload)
    {
        if (payload.Length < 8) throw new VhostUserException($"SET_MEM_TABLE payload of {payload.Length} bytes");
        uint count = BinaryPrimitives.ReadUInt32LittleEndian(payload);
        if (count == 0 || count > VhostUserLimits.MemoryRegionsMax) return $"SET_MEM_TABLE with {count} regions (1 to {VhostUserLimits.MemoryRegionsMax})";
        if (payload.Length < 8 + 32 * (int)count) throw new VhostUserException($"SET_MEM_TABLE payload of {payload.Length} bytes for {count} regions");
        if (_fdCount != count) return $"SET_MEM_TABLE with {count} regions but {_fdCount} descriptors";
        var regions = new (ulong, ulong, ulong, ulong)[count];
        for (int i = 0; i < count; i++)
        {
            var r = payload.Slice(8 + 32 * i, 32);
            regions[i] = (BinaryPrimitives.ReadUInt64LittleEndian(r), BinaryPrimitives.ReadUInt64LittleEndian(r[8..]),
                BinaryPrimitives.ReadUInt64LittleEndian(r[16..]), BinaryPrimitives.ReadUInt64LittleEndian(r[24..]));
        }
        var fds = new int[count];
        for (int i = 0; i < count; i++) fds[i] = TakeFd(VhostUserProtocol.SetMemTable);
        GuestMemory memory;
        try
        {
            memory = GuestMemory.Map(regions, fds);
        }
        catch (VhostUserException e)
        {
            return e.Message;
        }
        // A new table while queues run (memory hotplug): stop them, swap, start them again on the new mapping.
        var running = new List<int>();
        for (int i = 0; i < _vrings.Length; i++)
        {
            var v = _vrings[i];
            if (v.Queue is null) continue;
            v.Base = v.Queue.Stop();
            running.Add(i);
        }
        var old = _memory;
        _memory = memory;
        var restartFailures = new List<string>();
        foreach (int i in running)
        {
            var v = _vrings[i];
            var q = v.Queue!;
            int kick = q.DetachKickFd();
            int call = q.DetachCallFd();
            q.Dispose();
            v.Queue = null;
            v.CallFd = call;
            if (StartQueue(i, kick) is { } p) restartFailures.Add(p);
        }
        old?.Dispose();
        _log.LogInformation("vhost-user-blk {Volume}: guest memory mapped ({Regions} region(s), {Bytes} bytes)", _name, count,
            regions.Sum(r => (decimal)r.Item2));
        return restartFailures.Count == 0 ? null : string.Join("; ", restartFailures);
    }

    /// <summary>
    /// GET_INFLIGHT_FD: a new, empty in-flight area of the asked shape for the front-end to keep and hand back with
    /// SET_INFLIGHT_FD (also to the next server, after a crash). A shape not served gets a zero-sized answer without a
    /// descriptor, which QEMU takes as "no tracking".
    /// </summary>
    private void GetInflightFd(ReadOnlySpan<byte> payload)
    {
        if ((_protocolFeatures & (1UL << VhostUserProtocol.ProtocolInflightShmfd)) == 0)
            throw new VhostUserException("GET_INFLIGHT_FD without INFLIGHT_SHMFD negotiated");
        if (payload.Length < VhostUserProtocol.InflightDescriptionBytes) throw new VhostUserException($"GET_INFLIGHT_FD payload of {payload.Length} bytes");
        ushort queues = BinaryPrimitives.ReadUInt16LittleEndian(payload[16..]);
        ushort queueSize = BinaryPrimitives.ReadUInt16LittleEndian(payload[18..]);
        Span<byte> reply = stackalloc byte[VhostUserProtocol.InflightDescriptionPaddedBytes];
        reply.Clear();
        BinaryPrimitives.WriteUInt16LittleEndian(reply[16..], queues);
        BinaryPrimitives.WriteUInt16LittleEndian(reply[18..], queueSize);
        if (InflightArea.CheckShape(queues, queueSize) is { } problem)
        {
            _log.LogWarning("vhost-user-blk {Volume}: GET_INFLIGHT_FD refused: {Problem}; requests are not tracked across a restart", _name, problem);
            Reply(VhostUserProtocol.GetInflightFd, reply);
            return;
        }
        int fd = InflightArea.Create(queues, queueSize, out ulong bytes);
        try
        {
            BinaryPrimitives.WriteUInt64LittleEndian(reply, bytes);
            Reply(VhostUserProtocol.GetInflightFd, reply, fd);
        }
        finally
        {
            Native.close(fd);
        }
    }

    /// <summary>SET_INFLIGHT_FD: maps the front-end's in-flight area (checked, <see cref="InflightArea.Map"/>); queues started from here on use it.</summary>
    private string? SetInflightFd(ReadOnlySpan<byte> payload)
    {
        if ((_protocolFeatures & (1UL << VhostUserProtocol.ProtocolInflightShmfd)) == 0)
            throw new VhostUserException("SET_INFLIGHT_FD without INFLIGHT_SHMFD negotiated");
        if (payload.Length < VhostUserProtocol.InflightDescriptionBytes) throw new VhostUserException($"SET_INFLIGHT_FD payload of {payload.Length} bytes");
        int fd = TakeFd(VhostUserProtocol.SetInflightFd);
        try
        {
            foreach (var v in _vrings)
                if (v.Queue is not null) return "SET_INFLIGHT_FD while a queue runs";
            ulong size = BinaryPrimitives.ReadUInt64LittleEndian(payload);
            ulong offset = BinaryPrimitives.ReadUInt64LittleEndian(payload[8..]);
            ushort queues = BinaryPrimitives.ReadUInt16LittleEndian(payload[16..]);
            ushort queueSize = BinaryPrimitives.ReadUInt16LittleEndian(payload[18..]);
            var area = InflightArea.Map(fd, size, offset, queues, queueSize, out string? problem);
            if (area is null) return problem;
            _inflight?.Dispose();
            _inflight = area;
            _log.LogInformation("vhost-user-blk {Volume}: in-flight tracking on ({Queues} queue(s) of {Size})", _name, queues, queueSize);
            return null;
        }
        finally
        {
            Native.close(fd);
        }
    }

    private string? SetVringKick(ReadOnlySpan<byte> payload)
    {
        ulong value = U64(payload, VhostUserProtocol.SetVringKick);
        uint index = (uint)(value & VhostUserProtocol.VringIndexMask);
        var v = Vring(index);
        if ((value & VhostUserProtocol.VringNoFd) != 0) return "SET_VRING_KICK without a descriptor (polling) is not supported";
        int kick = TakeFd(VhostUserProtocol.SetVringKick);
        if (v.Queue is not null)
        {
            // A new kick descriptor for a running queue: restart it on the new one.
            v.Base = v.Queue.Stop();
            Native.CloseIfOpen(ref v.CallFd);
            v.CallFd = v.Queue.DetachCallFd();
            v.Queue.Dispose();
            v.Queue = null;
        }
        return StartQueue((int)index, kick);
    }

    /// <summary>Starts queue <paramref name="index"/> with its kick descriptor (owned from here on, even on failure).</summary>
    private string? StartQueue(int index, int kick)
    {
        var v = _vrings[index];
        string? problem = null;
        if (_memory is null) problem = "no SET_MEM_TABLE before the queue started";
        else if (!v.AddressSet) problem = "no SET_VRING_ADDR before the queue started";
        else if (v.Size == 0) problem = "no SET_VRING_NUM before the queue started";
        else if (!_featuresSet) problem = "no SET_FEATURES before the queue started";
        SplitVirtqueue? queue = null;
        bool indirect = (_features & (1UL << VirtioBlk.FeatureIndirectDescriptors)) != 0;
        InflightQueue? inflight = null;
        if (problem is null && _inflight is not null) inflight = _inflight.Queue(index, v.Size, out problem);
        if (problem is null) queue = SplitVirtqueue.Create(_memory!, v.Size, v.Descriptors, v.Available, v.Used, v.Base, out problem, indirect, inflight);
        if (queue is null)
        {
            Native.CloseIfOpen(ref kick);
            return $"queue {index}: {problem}";
        }
        bool flush = (_features & (1UL << VirtioBlk.FeatureFlush)) != 0;
        var target = new BlkTarget(_volume, _readOnly, writeThrough: !flush, _name);
        int call = v.CallFd;
        v.CallFd = -1;
        v.Queue = new BlkQueue(index, queue, target, kick, call, v.Enabled ?? true, _log);
        v.Queue.Start();
        if (queue!.ResubmitCount > 0)
            _log.LogInformation("vhost-user-blk {Volume}: queue {Queue} resubmits {Count} request(s) in flight when the last server stopped",
                _name, index, queue.ResubmitCount);
        _log.LogDebug("vhost-user-blk {Volume}: queue {Queue} started (size {Size}, base {Base}, available taken {Taken})", _name, index, v.Size, v.Base,
            queue.LastAvailableIndex);
        return null;
    }

    private VringState Vring(uint index)
    {
        if (index >= _vrings.Length) throw new VhostUserException($"queue index {index}: this device has {_vrings.Length} queues");
        return _vrings[index];
    }

    private (VringState, uint) VringStateMessage(ReadOnlySpan<byte> payload, uint request)
    {
        if (payload.Length < 8) throw new VhostUserException($"{VhostUserProtocol.Name(request)} payload of {payload.Length} bytes, expected 8");
        return (Vring(BinaryPrimitives.ReadUInt32LittleEndian(payload)), BinaryPrimitives.ReadUInt32LittleEndian(payload[4..]));
    }

    private static ulong U64(ReadOnlySpan<byte> payload, uint request)
    {
        if (payload.Length < 8) throw new VhostUserException($"{VhostUserProtocol.Name(request)} payload of {payload.Length} bytes, expected 8");
        return BinaryPrimitives.ReadUInt64LittleEndian(payload);
    }

    private int TakeFd(uint request)
    {
        for (int i = 0; i < _fdCount; i++)
        {
            if (_fds[i] < 0) continue;
            int fd = _fds[i];
            _fds[i] = -1;
            return fd;
        }
        throw new VhostUserException($"{VhostUserProtocol.Name(request)} came without its file descriptor");
    }

    private void ReplyU64(uint request, ulong value)
    {
        Span<byte> b = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(b, value);
        Reply(request, b);
    }

    /// <summary>Sends a reply; <paramref name="fd"/>, when not -1, rides on its first byte (SCM_RIGHTS) and stays the caller's.</summary>
    private void Reply(uint request, ReadOnlySpan<byte> payload, int fd = -1)
    {
        Span<byte> message = stackalloc byte[VhostUserProtocol.HeaderBytes + payload.Length];
        BinaryPrimitives.WriteUInt32LittleEndian(message, request);
        BinaryPrimitives.WriteUInt32LittleEndian(message[4..], VhostUserProtocol.Version | VhostUserProtocol.FlagReply);
        BinaryPrimitives.WriteUInt32LittleEndian(message[8..], (uint)payload.Length);
        payload.CopyTo(message[VhostUserProtocol.HeaderBytes..]);
        fixed (byte* p = message)
        {
            int done = 0;
            if (fd >= 0)
            {
                // CMSG_SPACE(4) = 16 + 8: the header and one descriptor, padded.
                byte* control = stackalloc byte[24];
                new Span<byte>(control, 24).Clear();
                *(nuint*)control = (nuint)(Native.CmsgHeaderBytes + 4);
                *(int*)(control + 8) = Native.SOL_SOCKET;
                *(int*)(control + 12) = Native.SCM_RIGHTS;
                *(int*)(control + 16) = fd;
                var iov = new Native.IoVec { Base = p, Length = (nuint)message.Length };
                var msg = new Native.MsgHdr { Iov = &iov, IovLength = 1, Control = control, ControlLength = 24 };
                nint sent;
                while ((sent = Native.sendmsg(_fd, &msg, Native.MSG_NOSIGNAL)) < 0 && Native.Errno == Native.EINTR)
                {
                }
                if (sent <= 0) throw new VhostUserException($"sending a reply failed: errno {Native.Errno}");
                done = (int)sent;
            }
            while (done < message.Length)
            {
                nint n = Native.write(_fd, p + done, (nuint)(message.Length - done));
                if (n < 0 && Native.Errno == Native.EINTR) continue;
                if (n <= 0) throw new VhostUserException($"writing a reply failed: errno {Native.Errno}");
                done += (int)n;
            }
        }
    }

    /// <summary>
    /// Reads one message: the header with recvmsg (the descriptors ride on its first byte), then the payload. False on a
    /// clean hang-up between messages.
    /// </summary>
    private bool TryReceive(out uint request, out uint flags, out int size)
    {
        request = flags = 0;
        size = 0;
        byte* header = stackalloc byte[VhostUserProtocol.HeaderBytes];
        // Room for DescriptorsPerMessageMax descriptors: CMSG_SPACE(8 * 4) = 16 + 32.
        byte* control = stackalloc byte[64];
        var iov = new Native.IoVec { Base = header, Length = VhostUserProtocol.HeaderBytes };
        var msg = new Native.MsgHdr { Iov = &iov, IovLength = 1, Control = control, ControlLength = 64 };
        nint got;
        while ((got = Native.recvmsg(_fd, &msg, Native.MSG_CMSG_CLOEXEC)) < 0 && Native.Errno == Native.EINTR)
        {
        }
        if (got < 0) throw new VhostUserException($"recvmsg failed: errno {Native.Errno}");
        if (got == 0) return false;
        CollectFds(control, (int)msg.ControlLength);
        if ((msg.Flags & Native.MSG_CTRUNC) != 0) throw new VhostUserException("a message carried more descriptors than any request needs");
        ReadExactly(header + got, VhostUserProtocol.HeaderBytes - (int)got);
        request = *(uint*)header;
        flags = *(uint*)(header + 4);
        uint length = *(uint*)(header + 8);
        if (length > VhostUserLimits.MessagePayloadMax)
            throw new VhostUserException($"{VhostUserProtocol.Name(request)} with a {length}-byte payload (at most {VhostUserLimits.MessagePayloadMax})");
        size = (int)length;
        fixed (byte* p = _payload) ReadExactly(p, size);
        return true;
    }

    private void CollectFds(byte* control, int length)
    {
        int offset = 0;
        while (offset + Native.CmsgHeaderBytes <= length)
        {
            nuint cmsgLength = *(nuint*)(control + offset);
            int level = *(int*)(control + offset + 8);
            int type = *(int*)(control + offset + 12);
            if (cmsgLength < Native.CmsgHeaderBytes || (nuint)offset + cmsgLength > (nuint)length) break;
            if (level == Native.SOL_SOCKET && type == Native.SCM_RIGHTS)
            {
                int n = ((int)cmsgLength - Native.CmsgHeaderBytes) / 4;
                for (int i = 0; i < n; i++)
                {
                    int fd = *(int*)(control + offset + Native.CmsgHeaderBytes + 4 * i);
                    if (_fdCount < _fds.Length) _fds[_fdCount++] = fd;
                    else Native.close(fd);
                }
            }
            offset += ((int)cmsgLength + 7) & ~7;
        }
    }

    private void ReadExactly(byte* into, int count)
    {
        int done = 0;
        while (done < count)
        {
            nint n = Native.read(_fd, into + done, (nuint)(count - done));
            if (n < 0 && Native.Errno == Native.EINTR) continue;
            if (n < 0) throw new VhostUserException($"read failed: errno {Native.Errno}");
            if (n == 0) throw new VhostUserException("the front-end hung up in the middle of a message");
            done += (int)n;
        }
    }
}
