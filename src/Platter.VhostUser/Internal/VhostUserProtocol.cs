namespace Platter.VhostUser.Internal;

/// <summary>vhost-user wire constants (QEMU docs/interop/vhost-user.rst).</summary>
internal static class VhostUserProtocol
{
    public const int HeaderBytes = 12;
    public const uint Version = 1;
    public const uint VersionMask = 3;
    public const uint FlagReply = 1 << 2;
    public const uint FlagNeedReply = 1 << 3;

    public const int FeatureProtocolFeatures = 30;

    // Protocol features offered.
    public const int ProtocolMultiQueue = 0;
    public const int ProtocolReplyAck = 3;
    public const int ProtocolConfig = 9;
    public const int ProtocolInflightShmfd = 12;

    /// <summary>The inflight description of GET/SET_INFLIGHT_FD: u64 mmap_size, u64 mmap_offset, u16 num_queues, u16 queue_size (QEMU pads it to 24).</summary>
    public const int InflightDescriptionBytes = 20;
    public const int InflightDescriptionPaddedBytes = 24;

    // Requests (front-end to back-end).
    public const uint GetFeatures = 1;
    public const uint SetFeatures = 2;
    public const uint SetOwner = 3;
    public const uint ResetOwner = 4;
    public const uint SetMemTable = 5;
    public const uint SetLogBase = 6;
    public const uint SetLogFd = 7;
    public const uint SetVringNum = 8;
    public const uint SetVringAddr = 9;
    public const uint SetVringBase = 10;
    public const uint GetVringBase = 11;
    public const uint SetVringKick = 12;
    public const uint SetVringCall = 13;
    public const uint SetVringErr = 14;
    public const uint GetProtocolFeatures = 15;
    public const uint SetProtocolFeatures = 16;
    public const uint GetQueueNum = 17;
    public const uint SetVringEnable = 18;
    public const uint GetConfig = 24;
    public const uint SetConfig = 25;
    public const uint GetInflightFd = 31;
    public const uint SetInflightFd = 32;

    /// <summary>SET_VRING_KICK/CALL/ERR payload: bits 0-7 the queue, bit 8 "no descriptor" (polling).</summary>
    public const ulong VringIndexMask = 0xff;
    public const ulong VringNoFd = 1 << 8;

    public static string Name(uint request) => request switch
    {
        GetFeatures => "GET_FEATURES",
        SetFeatures => "SET_FEATURES",
        SetOwner => "SET_OWNER",
        ResetOwner => "RESET_OWNER",
        SetMemTable => "SET_MEM_TABLE",
        SetLogBase => "SET_LOG_BASE",
        SetLogFd => "SET_LOG_FD",
        SetVringNum => "SET_VRING_NUM",
        SetVringAddr => "SET_VRING_ADDR",
        SetVringBase => "SET_VRING_BASE",
        GetVringBase => "GET_VRING_BASE",
        SetVringKick => "SET_VRING_KICK",
        SetVringCall => "SET_VRING_CALL",
        SetVringErr => "SET_VRING_ERR",
        GetProtocolFeatures => "GET_PROTOCOL_FEATURES",
        SetProtocolFeatures => "SET_PROTOCOL_FEATURES",
        GetQueueNum => "GET_QUEUE_NUM",
        SetVringEnable => "SET_VRING_ENABLE",
        GetConfig => "GET_CONFIG",
        SetConfig => "SET_CONFIG",
        GetInflightFd => "GET_INFLIGHT_FD",
        SetInflightFd => "SET_INFLIGHT_FD",
        _ => $"request {request}",
    };
}
