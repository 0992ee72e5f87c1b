namespace Platter.Nbd.Internal;

/// <summary>Wire constants of the NBD protocol (doc/proto.md of NetworkBlockDevice/nbd). All fields are big-endian.</summary>
internal static class Protocol
{
    public const ulong NbdMagic = 0x4e42444d41474943;      // "NBDMAGIC"
    public const ulong IHaveOpt = 0x49484156454F5054;      // "IHAVEOPT"
    public const ulong OptionReplyMagic = 0x3e889045565a9;

    public const uint RequestMagic = 0x25609513;
    public const uint ExtendedRequestMagic = 0x21e41c71;
    public const uint SimpleReplyMagic = 0x67446698;
    public const uint StructuredReplyMagic = 0x668e33ef;
    public const uint ExtendedReplyMagic = 0x6e8a278c;

    // Handshake flags (server) and client flags.
    public const ushort FlagFixedNewstyle = 1 << 0;
    public const ushort FlagNoZeroes = 1 << 1;
    public const uint ClientFlagFixedNewstyle = 1 << 0;
    public const uint ClientFlagNoZeroes = 1 << 1;

    // Transmission flags.
    public const ushort TxHasFlags = 1 << 0;
    public const ushort TxReadOnly = 1 << 1;
    public const ushort TxSendFlush = 1 << 2;
    public const ushort TxSendFua = 1 << 3;
    public const ushort TxRotational = 1 << 4;
    public const ushort TxSendTrim = 1 << 5;
    public const ushort TxSendWriteZeroes = 1 << 6;
    public const ushort TxSendDf = 1 << 7;
    public const ushort TxCanMultiConn = 1 << 8;
    public const ushort TxSendCache = 1 << 10;
    public const ushort TxSendFastZero = 1 << 11;

    // Options.
    public const uint OptExportName = 1;
    public const uint OptAbort = 2;
    public const uint OptList = 3;
    public const uint OptStartTls = 5;
    public const uint OptInfo = 6;
    public const uint OptGo = 7;
    public const uint OptStructuredReply = 8;
    public const uint OptListMetaContext = 9;
    public const uint OptSetMetaContext = 10;
    public const uint OptExtendedHeaders = 11;

    // Option replies.
    public const uint RepAck = 1;
    public const uint RepServer = 2;
    public const uint RepInfo = 3;
    public const uint RepMetaContext = 4;
    public const uint RepErrUnsup = 0x80000000 + 1;
    public const uint RepErrPolicy = 0x80000000 + 2;
    public const uint RepErrInvalid = 0x80000000 + 3;
    public const uint RepErrPlatform = 0x80000000 + 4;
    public const uint RepErrTlsReqd = 0x80000000 + 5;
    public const uint RepErrUnknown = 0x80000000 + 6;
    public const uint RepErrShutdown = 0x80000000 + 7;
    public const uint RepErrBlockSizeReqd = 0x80000000 + 8;
    public const uint RepErrTooBig = 0x80000000 + 9;
    public const uint RepErrExtHeaderReqd = 0x80000000 + 10;

    // NBD_INFO types.
    public const ushort InfoExport = 0;
    public const ushort InfoName = 1;
    public const ushort InfoDescription = 2;
    public const ushort InfoBlockSize = 3;

    // Commands.
    public const ushort CmdRead = 0;
    public const ushort CmdWrite = 1;
    public const ushort CmdDisc = 2;
    public const ushort CmdFlush = 3;
    public const ushort CmdTrim = 4;
    public const ushort CmdCache = 5;
    public const ushort CmdWriteZeroes = 6;
    public const ushort CmdBlockStatus = 7;

    // Command flags.
    public const ushort CmdFlagFua = 1 << 0;
    public const ushort CmdFlagNoHole = 1 << 1;
    public const ushort CmdFlagDf = 1 << 2;
    public const ushort CmdFlagReqOne = 1 << 3;
    public const ushort CmdFlagFastZero = 1 << 4;
    public const ushort CmdFlagPayloadLen = 1 << 5;

    // Reply chunk flags and types.
    public const ushort ReplyFlagDone = 1 << 0;
    public const ushort ReplyTypeNone = 0;
    public const ushort ReplyTypeOffsetData = 1;
    public const ushort ReplyTypeOffsetHole = 2;
    public const ushort ReplyTypeBlockStatus = 5;
    public const ushort ReplyTypeBlockStatusExt = 6;
    public const ushort ReplyTypeError = 0x8000 + 1;
    public const ushort ReplyTypeErrorOffset = 0x8000 + 2;

    public const int CompactRequestSize = 28;
    public const int ExtendedRequestSize = 32;
    public const int SimpleReplySize = 16;
    public const int StructuredReplySize = 20;
    public const int ExtendedReplySize = 32;
}
