using System.Buffers;
using System.Buffers.Binary;
using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using Microsoft.Extensions.Logging;

namespace Platter.Nbd.Internal;

internal sealed partial class NbdConnection
{
    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    // Option replies are composed here: header (20) + at most two strings of StringBytesMax and a few fields.
    private readonly byte[] _scratch = new byte[20 + 16 + 2 * NbdLimits.StringBytesMax + 64];
    private bool _tls;
    private bool _structured;
    private bool _extended;
    private bool _noZeroes;
    private string? _metaExportName;
    private readonly List<string> _metaNames = [];
    private int _optionCount;

    private async Task<bool> HandshakeAsync()
    {
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(_stopping, _abort.Token);
        if (_server.Options.HandshakeTimeout != Timeout.InfiniteTimeSpan) linked.CancelAfter(_server.Options.HandshakeTimeout);
        CancellationToken ct = linked.Token;

        BinaryPrimitives.WriteUInt64BigEndian(_scratch, Protocol.NbdMagic);
        BinaryPrimitives.WriteUInt64BigEndian(_scratch.AsSpan(8), Protocol.IHaveOpt);
        BinaryPrimitives.WriteUInt16BigEndian(_scratch.AsSpan(16), Protocol.FlagFixedNewstyle | Protocol.FlagNoZeroes);
        await _writer.SendRawAsync(_scratch.AsMemory(0, 18), ct).ConfigureAwait(false);

        byte[] header = new byte[16];
        if (!await _reader.ReadExactAsync(header.AsMemory(0, 4), ct).ConfigureAwait(false)) return false;
        uint clientFlags = BinaryPrimitives.ReadUInt32BigEndian(header);
        if ((clientFlags & ~(Protocol.ClientFlagFixedNewstyle | Protocol.ClientFlagNoZeroes)) != 0)
            throw new NbdProtocolException($"unknown client flags 0x{clientFlags:x}");
        _noZeroes = (clientFlags & Protocol.ClientFlagNoZeroes) != 0;

        while (true)
        {
            if (++_optionCount > NbdLimits.OptionsPerConnectionMax) throw new NbdProtocolException("too many options");
            if (!await _reader.ReadExactAsync(header, ct).ConfigureAwait(false)) return false;
            if (BinaryPrimitives.ReadUInt64BigEndian(header) != Protocol.IHaveOpt) throw new NbdProtocolException("bad option magic");
            uint option = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8));
            uint length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(12));

            if (length > NbdLimits.OptionBytesMax)
            {
                // EXPORT_NAME cannot be answered with an error; anything huge is not worth reading.
                if (option == Protocol.OptExportName || length > NbdLimits.OptionDiscardBytesMax)
                    throw new NbdProtocolException($"option {option} length {length} over limit");
                if (!await _reader.SkipAsync(length, ct).ConfigureAwait(false)) return false;
                await SendOptionErrorAsync(option, Protocol.RepErrTooBig, "option data too large", ct).ConfigureAwait(false);
                continue;
            }

            byte[] data = ArrayPool<byte>.Shared.Rent((int)Math.Max(length, 1));
            try
            {
                if (!await _reader.ReadExactAsync(data.AsMemory(0, (int)length), ct).ConfigureAwait(false)) return false;
                bool? outcome = await HandleOptionAsync(option, data.AsMemory(0, (int)length), ct).ConfigureAwait(false);
                if (outcome is { } enter) return enter;
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(data);
            }
        }
    }

    /// <returns>null to keep negotiating, true to enter transmission, false to end the connection.</returns>
    private async ValueTask<bool?> HandleOptionAsync(uint option, ReadOnlyMemory<byte> data, CancellationToken ct)
    {
        if (_server.TlsRequired && !_tls && option != Protocol.OptStartTls && option != Protocol.OptAbort)
        {
            if (option == Protocol.OptExportName) throw new NbdProtocolException("EXPORT_NAME before required TLS");
            _refusal = "TLS is required";
            await SendOptionErrorAsync(option, Protocol.RepErrTlsReqd, "TLS is required", ct).ConfigureAwait(false);
            return null;
        }

        switch (option)
        {
            case Protocol.OptExportName:
                return await HandleExportNameAsync(data, ct).ConfigureAwait(false);

            case Protocol.OptAbort:
                // The client may already have closed; a failed ACK is not an error.
                try { await SendOptionReplyAsync(option, Protocol.RepAck, 0, ct).ConfigureAwait(false); }
                catch (IOException) { }
                return false;

            case Protocol.OptList:
                if (data.Length != 0)
                    await SendOptionErrorAsync(option, Protocol.RepErrInvalid, "LIST takes no data", ct).ConfigureAwait(false);
                else
                    await HandleListAsync(ct).ConfigureAwait(false);
                return null;

            case Protocol.OptStartTls:
                await HandleStartTlsAsync(data.Length, ct).ConfigureAwait(false);
                return null;

            case Protocol.OptInfo:
            case Protocol.OptGo:
                return await HandleInfoGoAsync(option, data, ct).ConfigureAwait(false) ? true : null;

            case Protocol.OptStructuredReply:
                if (data.Length != 0)
                    await SendOptionErrorAsync(option, Protocol.RepErrInvalid, "STRUCTURED_REPLY takes no data", ct).ConfigureAwait(false);
                else if (_extended)
                    await SendOptionErrorAsync(option, Protocol.RepErrExtHeaderReqd, "extended headers already negotiated", ct).ConfigureAwait(false);
                else if (_structured)
                    await SendOptionErrorAsync(option, Protocol.RepErrInvalid, "structured replies already negotiated", ct).ConfigureAwait(false);
                else
                {
                    _structured = true;
                    await SendOptionReplyAsync(option, Protocol.RepAck, 0, ct).ConfigureAwait(false);
                }
                return null;

            case Protocol.OptExtendedHeaders:
                if (data.Length != 0)
                    await SendOptionErrorAsync(option, Protocol.RepErrInvalid, "EXTENDED_HEADERS takes no data", ct).ConfigureAwait(false);
                else if (_extended)
                    await SendOptionErrorAsync(option, Protocol.RepErrInvalid, "extended headers already negotiated", ct).ConfigureAwait(false);
                else
                {
                    _extended = true;
                    _structured = true;
                    await SendOptionReplyAsync(option, Protocol.RepAck, 0, ct).ConfigureAwait(false);
                }
                return null;

            case Protocol.OptListMetaContext:
            case Protocol.OptSetMetaContext:
                await HandleMetaContextAsync(option, data, ct).ConfigureAwait(false);
                return null;

            default:
                await SendOptionErrorAsync(option, Protocol.RepErrUnsup, "option not supported", ct).ConfigureAwait(false);
                return null;
        }
    }

    private async ValueTask<bool> HandleExportNameAsync(ReadOnlyMemory<byte> data, CancellationToken ct)
    {
        // This option cannot fail politely: every refusal is a hard disconnect (spec: "MUST terminate the session").
        if (_extended) throw new NbdProtocolException("EXPORT_NAME after extended headers");
        if (data.Length > NbdLimits.StringBytesMax || !TryDecode(data.Span, out string requested))
            throw new NbdProtocolException("bad export name");
        INbdExport export = TakeHeldOrOpenExport(requested, out _, out _, out string refusal) ?? throw new NbdProtocolException(refusal);
        try
        {
            BinaryPrimitives.WriteUInt64BigEndian(_scratch, (ulong)export.Size);
            BinaryPrimitives.WriteUInt16BigEndian(_scratch.AsSpan(8), TransmissionFlags(export));
            int n = 10;
            if (!_noZeroes)
            {
                _scratch.AsSpan(10, 124).Clear();
                n += 124;
            }
            await _writer.SendRawAsync(_scratch.AsMemory(0, n), ct).ConfigureAwait(false);
        }
        catch
        {
            export.Dispose();
            throw;
        }
        EnterTransmission(export, requested, blockSizeRequested: false);
        return true;
    }

    private async ValueTask HandleListAsync(CancellationToken ct)
    {
        foreach (var (name, description) in _server.Exports.List())
        {
            int n = 0;
            Span<byte> body = _scratch.AsSpan(20);
            int nameLength = EncodeTruncated(name, body[4..], NbdLimits.StringBytesMax);
            BinaryPrimitives.WriteUInt32BigEndian(body, (uint)nameLength);
            n = 4 + nameLength;
            if (!string.IsNullOrEmpty(description)) n += EncodeTruncated(description, body[n..], NbdLimits.StringBytesMax);
            await SendOptionReplyAsync(Protocol.OptList, Protocol.RepServer, n, ct).ConfigureAwait(false);
        }
        await SendOptionReplyAsync(Protocol.OptList, Protocol.RepAck, 0, ct).ConfigureAwait(false);
    }

    private async ValueTask HandleStartTlsAsync(int dataLength, CancellationToken ct)
    {
        X509Certificate2? certificate = _server.Options.TlsCertificate;
        if (dataLength != 0)
        {
            await SendOptionErrorAsync(Protocol.OptStartTls, Protocol.RepErrInvalid, "STARTTLS takes no data", ct).ConfigureAwait(false);
            return;
        }
        if (_tls)
        {
            await SendOptionErrorAsync(Protocol.OptStartTls, Protocol.RepErrInvalid, "TLS already active", ct).ConfigureAwait(false);
            return;
        }
        if (certificate is null)
        {
            await SendOptionErrorAsync(Protocol.OptStartTls, Protocol.RepErrPolicy, "TLS not configured", ct).ConfigureAwait(false);
            return;
        }
        await SendOptionReplyAsync(Protocol.OptStartTls, Protocol.RepAck, 0, ct).ConfigureAwait(false);

        // The client must wait for the ACK before starting TLS, so nothing may be buffered yet; bytes here
        // would be a ClientHello we already pulled off the socket, which SslStream could never see.
        if (_reader.TryRead(out var pending))
        {
            bool extra = pending.Buffer.Length > 0;
            _reader.AdvanceTo(pending.Buffer.Start);
            if (extra) throw new NbdProtocolException("data sent before STARTTLS reply");
        }
        await _reader.CompleteAsync().ConfigureAwait(false);

        X509Certificate2? clientCa = _server.Options.TlsClientCertificateAuthority;
        var ssl = new SslStream(_transport, leaveInnerStreamOpen: true);
        _ssl = ssl;
        _stream = ssl;
        var auth = new SslServerAuthenticationOptions
        {
            ServerCertificate = certificate,
            ClientCertificateRequired = clientCa is not null,
            EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
            CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
        };
        if (clientCa is not null)
            auth.RemoteCertificateValidationCallback = (_, cert, _, _) => ValidateClientCertificate(cert, clientCa);
        await ssl.AuthenticateAsServerAsync(auth, ct).ConfigureAwait(false);

        _reader = CreateReader(ssl);
        _writer.SetStream(ssl);
        _tls = true;
        // The spec: no negotiation state survives STARTTLS.
        _structured = false;
        _extended = false;
        _metaExportName = null;
        _metaNames.Clear();
        _log.LogDebug("NBD {Peer}: TLS established ({Protocol})", _peer, ssl.SslProtocol);
    }

    private static bool ValidateClientCertificate(X509Certificate? certificate, X509Certificate2 authority)
    {
        if (certificate is null) return false;
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.Add(authority);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        using var leaf = new X509Certificate2(certificate);
        return chain.Build(leaf);
    }

    private async ValueTask<bool> HandleInfoGoAsync(uint option, ReadOnlyMemory<byte> data, CancellationToken ct)
    {
        bool go = option == Protocol.OptGo;
        ReadOnlySpan<byte> d = data.Span;
        if (d.Length < 6)
        {
            await SendOptionErrorAsync(option, Protocol.RepErrInvalid, "option too short", ct).ConfigureAwait(false);
            return false;
        }
        uint nameLength = BinaryPrimitives.ReadUInt32BigEndian(d);
        if (nameLength > d.Length - 6 || nameLength > NbdLimits.StringBytesMax)
        {
            await SendOptionErrorAsync(option, Protocol.RepErrInvalid, "bad name length", ct).ConfigureAwait(false);
            return false;
        }
        ReadOnlySpan<byte> nameBytes = d.Slice(4, (int)nameLength);
        ReadOnlySpan<byte> rest = d[(4 + (int)nameLength)..];
        int infoCount = BinaryPrimitives.ReadUInt16BigEndian(rest);
        if (rest.Length != 2 + 2 * infoCount)
        {
            await SendOptionErrorAsync(option, Protocol.RepErrInvalid, "bad information request list", ct).ConfigureAwait(false);
            return false;
        }
        bool wantName = false, wantDescription = false, wantBlockSize = false;
        for (int i = 0; i < infoCount; i++)
        {
            switch (BinaryPrimitives.ReadUInt16BigEndian(rest[(2 + 2 * i)..]))
            {
                case Protocol.InfoName: wantName = true; break;
                case Protocol.InfoDescription: wantDescription = true; break;
                case Protocol.InfoBlockSize: wantBlockSize = true; break;
            }
        }
        if (!TryDecode(nameBytes, out string requested))
        {
            await SendOptionErrorAsync(option, Protocol.RepErrInvalid, "export name is not valid UTF-8", ct).ConfigureAwait(false);
            return false;
        }

        INbdExport? export = TakeHeldOrOpenExport(requested, out string? canonical, out uint openError, out string openMessage);
        if (export is null)
        {
            await SendOptionErrorAsync(option, openError, openMessage, ct).ConfigureAwait(false);
            _refusal = openMessage == "unknown export" ? $"unknown export '{requested}'" : openMessage;
            return false;
        }
        bool entered = false;
        try
        {
            Span<byte> body = _scratch.AsSpan(20);
            BinaryPrimitives.WriteUInt16BigEndian(body, Protocol.InfoExport);
            BinaryPrimitives.WriteUInt64BigEndian(body[2..], (ulong)export.Size);
            BinaryPrimitives.WriteUInt16BigEndian(body[10..], TransmissionFlags(export));
            await SendOptionReplyAsync(option, Protocol.RepInfo, 12, ct).ConfigureAwait(false);

            if (wantName || canonical != requested)
            {
                body = _scratch.AsSpan(20);
                BinaryPrimitives.WriteUInt16BigEndian(body, Protocol.InfoName);
                int n = EncodeTruncated(canonical ?? requested, body[2..], NbdLimits.StringBytesMax);
                await SendOptionReplyAsync(option, Protocol.RepInfo, 2 + n, ct).ConfigureAwait(false);
            }
            if (wantDescription && !string.IsNullOrEmpty(export.Description))
            {
                body = _scratch.AsSpan(20);
                BinaryPrimitives.WriteUInt16BigEndian(body, Protocol.InfoDescription);
                int n = EncodeTruncated(export.Description, body[2..], NbdLimits.StringBytesMax);
                await SendOptionReplyAsync(option, Protocol.RepInfo, 2 + n, ct).ConfigureAwait(false);
            }

            // Always sent (servers may volunteer it). The minimum is only raised above 1 for a client that
            // asked, because only such a client promises to honour it; everyone else may send any alignment.
            var (minimum, preferred, maximum) = BlockSizes(export, wantBlockSize);
            body = _scratch.AsSpan(20);
            BinaryPrimitives.WriteUInt16BigEndian(body, Protocol.InfoBlockSize);
            BinaryPrimitives.WriteUInt32BigEndian(body[2..], minimum);
            BinaryPrimitives.WriteUInt32BigEndian(body[6..], preferred);
            BinaryPrimitives.WriteUInt32BigEndian(body[10..], maximum);
            await SendOptionReplyAsync(option, Protocol.RepInfo, 14, ct).ConfigureAwait(false);

            await SendOptionReplyAsync(option, Protocol.RepAck, 0, ct).ConfigureAwait(false);
            if (go)
            {
                EnterTransmission(export, requested, wantBlockSize);
                entered = true;
            }
            return go;
        }
        finally
        {
            if (!entered) export.Dispose();
        }
    }

    private async ValueTask HandleMetaContextAsync(uint option, ReadOnlyMemory<byte> data, CancellationToken ct)
    {
        bool set = option == Protocol.OptSetMetaContext;
        // SET replaces the selection even when it fails.
        if (set)
        {
            _metaNames.Clear();
            _metaExportName = null;
        }
        if (!_structured)
        {
            await SendOptionErrorAsync(option, Protocol.RepErrInvalid, "structured replies not negotiated", ct).ConfigureAwait(false);
            return;
        }

        // Parse fully before answering: a syntactically invalid request must fail as a whole.
        string exportName;
        var queries = new List<string>();
        {
            ReadOnlySpan<byte> d = data.Span;
            string? error = null;
            uint reply = Protocol.RepErrInvalid;
            exportName = "";
            if (d.Length < 8) error = "option too short";
            else
            {
                uint nameLength = BinaryPrimitives.ReadUInt32BigEndian(d);
                if (nameLength > d.Length - 8 || nameLength > NbdLimits.StringBytesMax) error = "bad name length";
                else if (!TryDecode(d.Slice(4, (int)nameLength), out exportName)) error = "export name is not valid UTF-8";
                else
                {
                    d = d[(4 + (int)nameLength)..];
                    uint count = BinaryPrimitives.ReadUInt32BigEndian(d);
                    d = d[4..];
                    if (count > NbdLimits.MetaContextQueriesMax)
                    {
                        error = "too many queries";
                        reply = Protocol.RepErrTooBig;
                    }
                    for (uint i = 0; error is null && i < count; i++)
                    {
                        if (d.Length < 4) { error = "truncated query"; break; }
                        uint queryLength = BinaryPrimitives.ReadUInt32BigEndian(d);
                        if (queryLength > d.Length - 4 || queryLength > NbdLimits.StringBytesMax) { error = "bad query length"; break; }
                        if (!TryDecode(d.Slice(4, (int)queryLength), out string query)) { error = "query is not valid UTF-8"; break; }
                        queries.Add(query);
                        d = d[(4 + (int)queryLength)..];
                    }
                    if (error is null && d.Length != 0) error = "trailing data";
                }
            }
            if (error is not null)
            {
                await SendOptionErrorAsync(option, reply, error, ct).ConfigureAwait(false);
                return;
            }
        }

        INbdExport? export = TakeHeldOrOpenExport(exportName, out string? canonical, out uint openError, out string openMessage);
        if (export is null)
        {
            await SendOptionErrorAsync(option, openError, openMessage, ct).ConfigureAwait(false);
            return;
        }
        var names = new List<string>();
        bool hold = false;
        try
        {
            if (set)
            {
                foreach (string query in queries)
                {
                    if (FindProvider(query) is not { } provider || names.Contains(query)) continue;
                    if (provider.Open(export, query) is null) continue;
                    names.Add(query);
                }
                if (names.Count > NbdLimits.MetaContextsSelectedMax)
                {
                    await SendOptionErrorAsync(option, Protocol.RepErrTooBig, "too many contexts selected", ct).ConfigureAwait(false);
                    return;
                }
            }
            else if (queries.Count == 0)
            {
                foreach (var provider in _server.MetaProviders)
                    foreach (string name in provider.List(export, null))
                        if (!names.Contains(name) && names.Count < NbdLimits.BlockStatusExtentsMax) names.Add(name);
            }
            else
            {
                foreach (string query in queries)
                {
                    if (FindProvider(query) is not { } provider) continue;
                    foreach (string name in provider.List(export, query))
                        if (!names.Contains(name) && names.Count < NbdLimits.BlockStatusExtentsMax) names.Add(name);
                }
            }
            hold = true;
        }
        finally
        {
            if (hold) Hold(export, canonical!);
            else export.Dispose();
        }

        for (int i = 0; i < names.Count; i++)
        {
            Span<byte> body = _scratch.AsSpan(20);
            // Context ids are 1-based positions in the selection; LIST replies carry 0 as the spec asks.
            BinaryPrimitives.WriteUInt32BigEndian(body, set ? (uint)(i + 1) : 0);
            int n = EncodeTruncated(names[i], body[4..], NbdLimits.StringBytesMax);
            await SendOptionReplyAsync(option, Protocol.RepMetaContext, 4 + n, ct).ConfigureAwait(false);
        }
        if (set)
        {
            _metaNames.AddRange(names);
            _metaExportName = exportName;
        }
        await SendOptionReplyAsync(option, Protocol.RepAck, 0, ct).ConfigureAwait(false);
    }

    private INbdMetaContextProvider? FindProvider(string query)
    {
        int colon = query.IndexOf(':');
        if (colon <= 0) return null;
        ReadOnlySpan<char> ns = query.AsSpan(0, colon);
        foreach (var provider in _server.MetaProviders)
            if (ns.SequenceEqual(provider.Namespace)) return provider;
        return null;
    }

    /// <summary>
    /// The export the last LIST or SET_META_CONTEXT opened, kept open for the GO (or INFO, or EXPORT_NAME) that
    /// usually follows: clients negotiate contexts first, then enter transmission on the same export, and opening it
    /// twice cost a second open and close per connection (on RBD a second RADOS connection and lock acquisition, and
    /// an open closed straight away, which librbd 16.2 does not always survive: issue 10). Disposed when another
    /// export is asked for, or with the connection.
    /// </summary>
    private INbdExport? _heldExport;
    private string? _heldExportName;

    private void Hold(INbdExport export, string canonical)
    {
        if (!ReferenceEquals(_heldExport, export)) ReleaseHeldExport();
        _heldExport = export;
        _heldExportName = canonical;
    }

    private void ReleaseHeldExport()
    {
        var held = _heldExport;
        _heldExport = null;
        _heldExportName = null;
        try { held?.Dispose(); }
        catch (Exception e) { _log.LogWarning(e, "NBD {Peer}: disposing export failed", _peer); }
    }

    /// <summary>
    /// The held export when it is the one asked for (the caller owns it from now on), else <see cref="OpenExport"/>
    /// after releasing any held one.
    /// </summary>
    private INbdExport? TakeHeldOrOpenExport(string requested, out string? canonical, out uint error, out string message)
    {
        string? wanted = requested.Length == 0 ? _server.Exports.DefaultExportName : requested;
        if (_heldExport is { } held && wanted is not null && wanted == _heldExportName)
        {
            _heldExport = null;
            _heldExportName = null;
            canonical = wanted;
            error = 0;
            message = "";
            return held;
        }
        ReleaseHeldExport();
        return OpenExport(requested, out canonical, out error, out message);
    }

    /// <summary>
    /// Opens the export a client asked for. Null with <paramref name="error"/> and <paramref name="message"/> set when
    /// there is none (NBD_REP_ERR_UNKNOWN, "unknown export") or when it exists but cannot be opened: then the reason
    /// is logged and sent (NBD_REP_ERR_SHUTDOWN while the server or store is going away, else NBD_REP_ERR_UNKNOWN,
    /// the spec's "export not available") with the reason (e.g. which server holds a volume), so neither the operator nor the client mistakes it for a wrong name.
    /// </summary>
    private INbdExport? OpenExport(string requested, out string? canonical, out uint error, out string message)
    {
        canonical = requested.Length == 0 ? _server.Exports.DefaultExportName : requested;
        error = Protocol.RepErrUnknown;
        message = "unknown export";
        if (canonical is null) return null;
        try
        {
            return _server.Exports.TryOpen(canonical);
        }
        catch (NbdExportUnavailableException e)
        {
            _log.LogWarning("NBD {Peer}: export '{Export}' exists but cannot be opened: {Reason}", _peer, canonical, e.Message);
            if (e.ShuttingDown) error = Protocol.RepErrShutdown;
            message = $"export '{canonical}' cannot be opened: {e.Message}";
            return null;
        }
        catch (Exception e)
        {
            _log.LogError(e, "NBD {Peer}: opening export '{Export}' failed", _peer, canonical);
            message = $"export '{canonical}' cannot be opened: {e.Message}";
            return null;
        }
    }

    private ushort TransmissionFlags(INbdExport export)
    {
        ushort flags = Protocol.TxHasFlags | Protocol.TxSendFlush | Protocol.TxSendFua | Protocol.TxSendTrim
            | Protocol.TxSendWriteZeroes | Protocol.TxSendCache | Protocol.TxSendFastZero;
        // DF only means something when READ can be fragmented, i.e. with chunked replies.
        if (_structured) flags |= Protocol.TxSendDf;
        if (export.CanMultiConn) flags |= Protocol.TxCanMultiConn;
        if (export.IsReadOnly) flags |= Protocol.TxReadOnly;
        return flags;
    }

    private static (uint Minimum, uint Preferred, uint Maximum) BlockSizes(INbdExport export, bool requested)
    {
        uint minimum = 1;
        uint exportMinimum = export.MinimumBlockSize;
        if (requested && exportMinimum > 1 && exportMinimum <= 65536 && uint.IsPow2(exportMinimum)) minimum = exportMinimum;
        uint preferred = export.PreferredBlockSize;
        if (!uint.IsPow2(preferred) || preferred > NbdLimits.PayloadBytesMax) preferred = 4096;
        preferred = Math.Max(preferred, Math.Max(minimum, 512));
        return (minimum, preferred, NbdLimits.PayloadBytesMax);
    }

    private ValueTask SendOptionReplyAsync(uint option, uint type, int dataLength, CancellationToken ct)
    {
        BinaryPrimitives.WriteUInt64BigEndian(_scratch, Protocol.OptionReplyMagic);
        BinaryPrimitives.WriteUInt32BigEndian(_scratch.AsSpan(8), option);
        BinaryPrimitives.WriteUInt32BigEndian(_scratch.AsSpan(12), type);
        BinaryPrimitives.WriteUInt32BigEndian(_scratch.AsSpan(16), (uint)dataLength);
        return _writer.SendRawAsync(_scratch.AsMemory(0, 20 + dataLength), ct);
    }

    private ValueTask SendOptionErrorAsync(uint option, uint type, string message, CancellationToken ct)
    {
        _log.LogDebug("NBD {Peer}: option {Option} refused (0x{Reply:x}): {Message}", _peer, option, type, message);
        int n = EncodeTruncated(message, _scratch.AsSpan(20), NbdLimits.ErrorMessageBytesMax);
        return SendOptionReplyAsync(option, type, n, ct);
    }

    private static bool TryDecode(ReadOnlySpan<byte> bytes, out string value)
    {
        try
        {
            value = StrictUtf8.GetString(bytes);
        }
        catch (DecoderFallbackException)
        {
            value = "";
            return false;
        }
        return !value.Contains('\0');
    }

    /// <summary>UTF-8 encodes at most <paramref name="maxBytes"/> bytes without splitting a character.</summary>
    private static int EncodeTruncated(string text, Span<byte> destination, int maxBytes)
    {
        destination = destination[..Math.Min(destination.Length, maxBytes)];
        if (Encoding.UTF8.GetByteCount(text) <= destination.Length) return Encoding.UTF8.GetBytes(text, destination);
        Encoder encoder = Encoding.UTF8.GetEncoder();
        encoder.Convert(text, destination, flush: true, out _, out int bytesUsed, out _);
        return bytesUsed;
    }
}
