using System.CommandLine;
using System.Net;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Console;
using Platter.Server;

namespace Platter.Cli;

/// <summary>platter serve: runs the server until SIGINT or SIGTERM.</summary>
internal static class ServeCommand
{
    // After SIGTERM, in-flight NBD requests get this long to finish before connections are cut; the store is
    // flushed and closed either way. A second signal cuts them at once.
    private static readonly TimeSpan InFlightGraceMax = TimeSpan.FromSeconds(30);

    public static Command Build(CliContext context)
    {
        var store = new Option<string?>("--store")
        {
            Description = "Store directory, created with a new store on first run; or rbd:POOL for volumes as RBD images in a Ceph pool " +
                          "(then the default sockets live in the default store directory). Default: $PLATTER_STORE, else $XDG_DATA_HOME/platter, else ~/.local/share/platter.",
            HelpName = "DIR|rbd:POOL",
        };
        var cephConf = new Option<string?>("--ceph-conf")
        {
            Description = "ceph.conf for an rbd: store (monitors, keyring). Default: $CEPH_CONF, else /etc/ceph/ceph.conf.",
            HelpName = "FILE",
        };
        var cephId = new Option<string>("--ceph-id")
        {
            Description = "Ceph user of an rbd: store, without 'client.'; its key comes from the keyring the configuration names.",
            HelpName = "NAME",
            DefaultValueFactory = _ => "admin",
        };
        var cephOpTimeout = new Option<int>("--ceph-op-timeout")
        {
            Description = "Seconds an I/O on an rbd: store may wait for the OSDs (while too few storage nodes are up) before the client " +
                          "gets an I/O error; 0 waits without limit.",
            HelpName = "SECONDS",
            DefaultValueFactory = _ => 300,
        };
        var cacheDir = new Option<string?>("--cache-dir")
        {
            Description = "Node cache for an rbd: store: a directory on a local SSD where volumes whose cache mode is writethrough or writeback " +
                          "(platter volume create --cache, platter volume set --cache) keep their read cache and write-back log. Refused with " +
                          "the embedded store, whose volumes are on this machine's disk already.",
            HelpName = "DIR",
        };
        var cacheSize = new Option<long>("--cache-size")
        {
            Description = "Local disk per cached volume (default 1G, at least 16M): a write-back volume's log gets 3/4 of it (the bound on its " +
                          "dirty data: writes wait for write-back beyond it), its read cache the rest; a write-through volume's read cache all of it.",
            HelpName = "SIZE",
            DefaultValueFactory = _ => 1L << 30,
            CustomParser = result =>
            {
                var text = result.Tokens.Count > 0 ? result.Tokens[0].Value : "";
                if (SizeParser.TryParse(text, out var bytes, out var error)) return bytes;
                result.AddError("--cache-size: " + error);
                return 0;
            },
        };
        var listen = new Option<string>("--listen")
        {
            Description = $"Also serve NBD on TCP at ADDR:PORT (e.g. 127.0.0.1:{PlatterHostOptions.DefaultNbdPort}; [::1]:PORT for IPv6, " +
                          "localhost:PORT, port 0 for any free port). Off by default ('none'): NBD has no login, so whoever reaches the " +
                          "port reads and writes every volume; even on 127.0.0.1 that is every local user. Use --tls-cert with " +
                          "--tls-client-ca to limit who may connect.",
            HelpName = "ADDR:PORT",
            DefaultValueFactory = _ => "none",
        };
        var socket = new Option<string?>("--socket")
        {
            Description = "NBD unix socket path, or 'none' to disable it. Default: nbd.sock in the store directory. Only the owner " +
                          "may connect unless --socket-mode/--socket-group say otherwise.",
            HelpName = "PATH",
        };
        var apiSocket = new Option<string?>("--api-socket")
        {
            Description = "Management API unix socket, or 'none' when --api-listen is used. Default: api.sock in the store directory. " +
                          "Only the owner may connect unless --socket-mode/--socket-group say otherwise.",
            HelpName = "PATH",
        };
        var socketMode = new Option<string?>("--socket-mode")
        {
            Description = "Permissions (octal) of the NBD and API unix sockets. Default 0600: only the owner (and root) may connect. " +
                          "0660 with --socket-group lets that group in too, e.g. libvirt's QEMU: --socket-group libvirt-qemu " +
                          "--socket-mode 0660 (its directory must let the group through: the store directory is private, so put the " +
                          "socket elsewhere with --socket /run/platter/nbd.sock).",
            HelpName = "MODE",
        };
        var socketGroup = new Option<string?>("--socket-group")
        {
            Description = "Group (name or id) that owns the NBD and API unix sockets; with --socket-mode 0660 its members may connect.",
            HelpName = "GROUP",
        };
        var maxConnections = new Option<int>("--max-connections")
        {
            Description = $"NBD connections served at once (default {Nbd.NbdLimits.ConnectionsMax}); each may hold up to 64 MiB of requests in flight.",
            HelpName = "N",
            DefaultValueFactory = _ => Nbd.NbdLimits.ConnectionsMax,
        };
        var maxPerClient = new Option<int?>("--max-connections-per-client")
        {
            Description = $"NBD connections one client may hold at once (default: a quarter of --max-connections, at most " +
                          $"{Nbd.NbdLimits.ConnectionsPerPeerMax}): a client is an IP address on TCP, a process on the unix socket. " +
                          "Keeps one greedy client from taking every connection.",
            HelpName = "N",
        };
        var handshakeTimeout = new Option<int>("--handshake-timeout")
        {
            Description = $"Seconds an NBD client has to finish its handshake before it is disconnected (default " +
                          $"{(int)Nbd.NbdLimits.HandshakeTimeout.TotalSeconds}), so idle connections do not hold slots.",
            HelpName = "SECONDS",
            DefaultValueFactory = _ => (int)Nbd.NbdLimits.HandshakeTimeout.TotalSeconds,
        };
        var apiListen = new Option<string?>("--api-listen")
        {
            Description = "Also serve the management API on TCP at ADDR:PORT (plain HTTP: keep it on a trusted network). Every request " +
                          "must carry 'Authorization: Bearer TOKEN'; the token is read from --api-token-file, else $PLATTER_API_TOKEN.",
            HelpName = "ADDR:PORT",
        };
        var apiTokenFile = new Option<string?>("--api-token-file")
        {
            Description = "File holding the bearer token for --api-listen (so the token stays out of the process list and the environment).",
            HelpName = "FILE",
        };
        var tlsCert = new Option<string?>("--tls-cert") { Description = "PEM certificate (chain) for NBD TLS; offers STARTTLS on NBD. Needs --tls-key.", HelpName = "FILE" };
        var tlsKey = new Option<string?>("--tls-key") { Description = "PEM private key of --tls-cert.", HelpName = "FILE" };
        var tlsRequired = new Option<bool>("--tls-required") { Description = "Refuse every NBD option but STARTTLS (and ABORT) until the client has started TLS. Needs --tls-cert." };
        var tlsClientCa = new Option<string?>("--tls-client-ca")
        {
            Description = "PEM CA certificate: NBD clients must present a certificate it issued. Needs --tls-cert; implies " +
                          "--tls-required (a client that never starts TLS would skip the certificate check).",
            HelpName = "FILE",
        };
        var readOnly = new Option<bool>("--read-only", "-r")
        {
            Description = "Serve every NBD export read-only, like qemu-nbd -r: clients see NBD_FLAG_READ_ONLY and writes, trims and " +
                          "write-zeroes get EPERM. The management API still creates, resizes, renames and deletes volumes.",
        };
        var salvage = new Option<bool>("--salvage")
        {
            Description = "Open a store whose metadata is damaged (one that `platter serve` refuses) to copy its intact volumes out: " +
                          "those whose metadata verifies are served read-only, the damage is logged, nothing is written to the store.",
        };
        var config = new Option<string?>(ServeConfig.OptionName)
        {
            Description = "Read settings from FILE: one 'name = value' per line, the names being these flags without '--' " +
                          "(store = /var/lib/platter, read-only = true); '#' starts a comment. Flags on the command line override the file.",
            HelpName = "FILE",
        };
        var verbose = new Option<bool>("--verbose", "-v") { Description = "Log debug detail as well: NBD connections and refused requests, and each management API request." };
        var logFormat = new Option<string>("--log-format")
        {
            Description = "Log as 'text' (one line per event: time, level, category such as nbd/api/store, message; under systemd with journald " +
                          "priorities instead of times) or 'json' (one JSON object per line).",
            HelpName = "text|json",
            DefaultValueFactory = _ => "text",
        };
        logFormat.AcceptOnlyFromAmong("text", "json");
        var noMetrics = new Option<bool>("--no-metrics")
        {
            Description = "Do not count per-volume I/O and do not serve /metrics (metrics are on by default; this exists to measure their cost).",
        };
        var directWrites = new Option<bool>("--direct-writes")
        {
            Description = "Write requests of 128 KiB or more to the disk directly, bypassing the host's page cache (O_DIRECT). On a busy host " +
                          "this halved the CPU and time of large writes and imports; on a quiet one it made them slower, and data just " +
                          "written is read back from the disk, not from memory. Off by default; measure before turning it on.",
        };
        var mapCache = new Option<long>("--map-cache", "--map-checksum-cache")
        {
            Description = "Memory for the volumes' maps loaded from the store (default 1G: the maps of about 256 GiB written sequentially, " +
                          "or 270 GiB written as scattered 4 KiB blocks). Past it, the parts read longest ago leave memory and are read again " +
                          "from the metadata store when a read needs them (a small stub per MiB stays). --map-checksum-cache is its old name.",
            HelpName = "SIZE",
            DefaultValueFactory = _ => Platter.Storage.StoreOptions.MapCacheBytesDefault,
            CustomParser = result =>
            {
                var text = result.Tokens.Count > 0 ? result.Tokens[0].Value : "";
                if (SizeParser.TryParse(text, out var bytes, out var error)) return bytes;
                result.AddError("--map-cache: " + error);
                return 0;
            },
        };
        var metricsListen = new Option<string?>("--metrics-listen")
        {
            Description = "Also serve Prometheus metrics at http://ADDR:PORT/metrics, without a token and nothing else on that listener.",
            HelpName = "ADDR:PORT",
        };

        var vhostUserDir = new Option<string?>("--vhost-user-dir")
        {
            Description = "Also serve every volume as a vhost-user-blk device for QEMU on this machine: one unix socket DIR/NAME.sock per " +
                          "volume (VOLUME@SNAPSHOT.sock, read-only, per snapshot), appearing and disappearing with the volumes. A volume is " +
                          "written through one front door at a time: NBD or vhost-user.",
            HelpName = "DIR",
        };

        var command = new Command("serve",
            "Run the Platter server: opens (or creates) the store, serves every volume as an NBD export of the same name " +
            "on a unix socket (and on TCP with --listen), and the management API on a unix socket. Logs one line per event to stdout. Stops cleanly " +
            "on SIGINT/SIGTERM: finishes in-flight requests (30 s at most; a second signal cuts them), writes node caches back to the " +
            "cluster (until a second signal), flushes, closes the store.")
        {
            store, cephConf, cephId, cephOpTimeout, cacheDir, cacheSize, listen, socket, apiSocket, socketMode, socketGroup, apiListen, apiTokenFile, tlsCert, tlsKey, tlsRequired, tlsClientCa,
            maxConnections, maxPerClient, handshakeTimeout, readOnly, salvage, config, verbose, logFormat, noMetrics, metricsListen, vhostUserDir, directWrites,
            mapCache,
        };
        command.SetAction(async (parse, ct) =>
        {
            var storeValue = parse.GetValue(store);
            Func<ILoggerFactory, Platter.Volumes.IVolumeBackend>? openBackend = null;
            string directory;
            if (storeValue is not null && storeValue.StartsWith("rbd:", StringComparison.Ordinal))
            {
                var pool = storeValue["rbd:".Length..];
                if (pool.Length == 0) throw new CliException("--store rbd:POOL needs a pool name");
                if (parse.GetValue(cephOpTimeout) < 0) throw new CliException("--ceph-op-timeout must be 0 or more seconds");
                var confFile = parse.GetValue(cephConf) ?? context.GetEnvironment("CEPH_CONF") ?? "/etc/ceph/ceph.conf";
                var id = parse.GetValue(cephId)!;
                var opTimeout = TimeSpan.FromSeconds(parse.GetValue(cephOpTimeout));
                openBackend = logging => Platter.Rbd.RbdBackend.Open(new Platter.Rbd.RbdBackendOptions
                {
                    Pool = pool,
                    ConfFile = confFile,
                    Id = id,
                    OperationTimeout = opTimeout,
                    // Off: with librbd writing from our buffers, a fenced (blocklisted) server's writes never complete
                    // instead of failing (Rbd ServerTests' zombie test), so a zombie would hang its clients forever.
                    ZeroCopyWrites = false,
                    LoggerFactory = logging,
                });
                directory = Path.GetFullPath(StorePaths.DefaultStoreDirectory(context.GetEnvironment));
            }
            else
            {
                if (parse.GetValue(cephConf) is not null) throw new CliException("--ceph-conf goes with --store rbd:POOL");
                if (parse.GetValue(cacheDir) is not null)
                    throw new CliException("--cache-dir is for cluster stores (--store rbd:POOL): the embedded store keeps its volumes on this machine's disk already");
                directory = Path.GetFullPath(parse.GetValue(store) ?? StorePaths.DefaultStoreDirectory(context.GetEnvironment));
            }
            var nbdTcp = ParseEndPoint(parse.GetValue(listen)!, "--listen", allowNone: true);
            var nbdSocket = NoneOr(parse.GetValue(socket), StorePaths.NbdSocketPath(directory));
            var apiTcp = parse.GetValue(apiListen) is { } a ? ParseEndPoint(a, "--api-listen", allowNone: true) : null;
            var apiUnix = NoneOr(parse.GetValue(apiSocket), StorePaths.ApiSocketPath(directory));
            string? token = null;
            if (apiTcp is not null)
            {
                token = parse.GetValue(apiTokenFile) is { } tokenFile ? ReadToken(tokenFile) : context.GetEnvironment(PlatterCli.ApiTokenEnvironmentVariable);
                if (string.IsNullOrEmpty(token)) throw new CliException("--api-listen needs a token: pass --api-token-file FILE or set PLATTER_API_TOKEN");
            }
            else if (apiUnix is null)
            {
                throw new CliException("--api-socket none needs --api-listen ADDR:PORT (the CLI has to reach the server somehow)");
            }

            var certPath = parse.GetValue(tlsCert);
            var keyPath = parse.GetValue(tlsKey);
            if ((certPath is null) != (keyPath is null)) throw new CliException("--tls-cert and --tls-key go together");
            var certificate = certPath is null ? null : LoadCertificate(certPath, keyPath!);
            var clientCa = parse.GetValue(tlsClientCa) is { } caPath ? LoadCa(caPath) : null;

            var options = new PlatterHostOptions
            {
                StoreDirectory = directory,
                OpenBackend = openBackend,
                NodeCache = new Platter.Cache.NodeCacheOptions
                {
                    Directory = parse.GetValue(cacheDir) is { } cd ? Path.GetFullPath(cd) : null,
                    SizeBytes = parse.GetValue(cacheSize),
                },
                NbdTcpEndPoint = nbdTcp,
                NbdSocketPath = nbdSocket,
                ApiSocketPath = apiUnix,
                ApiTcpEndPoint = apiTcp,
                ApiToken = token,
                TlsCertificate = certificate,
                // Client certificates mean nothing if a client may skip TLS: the CA implies TLS required.
                TlsRequired = parse.GetValue(tlsRequired) || clientCa is not null,
                TlsClientCertificateAuthority = clientCa,
                ReadOnly = parse.GetValue(readOnly) || parse.GetValue(salvage),
                Salvage = parse.GetValue(salvage),
                DirectWrites = parse.GetValue(directWrites),
                MapCacheBytes = parse.GetValue(mapCache),
                MaxConnections = parse.GetValue(maxConnections),
                // Unset, the per-client cap follows the total (a quarter, so one client always leaves room for others),
                // so --max-connections alone never makes the two disagree.
                MaxConnectionsPerPeer = parse.GetValue(maxPerClient)
                    ?? Math.Clamp(parse.GetValue(maxConnections) / 4, 1, Nbd.NbdLimits.ConnectionsPerPeerMax),
                HandshakeTimeout = TimeSpan.FromSeconds(parse.GetValue(handshakeTimeout)),
                SocketMode = parse.GetValue(socketMode) is { } mode ? ParseMode(mode) : UnixFileMode.UserRead | UnixFileMode.UserWrite,
                SocketGroup = parse.GetValue(socketGroup),
                // Under systemd socket activation (packaging/systemd/platter-*.socket) the listening sockets come
                // from the service manager, which keeps them open across restarts.
                ActivatedSockets = context.ShutdownRequested is null ? TakeActivatedSockets() : [],
                Metrics = !parse.GetValue(noMetrics),
                MetricsTcpEndPoint = parse.GetValue(metricsListen) is { } m ? ParseEndPoint(m, "--metrics-listen", allowNone: true) : null,
                VhostUserDirectory = parse.GetValue(vhostUserDir) is { } vd ? Path.GetFullPath(vd) : null,
            };
            var problem = options.Validate();
            if (problem is not null) throw new CliException(problem);

            var level = parse.GetValue(verbose) ? LogLevel.Debug : LogLevel.Information;
            var format = parse.GetValue(logFormat) == "json" ? LogFormat.Json : LogFormat.Text;
            bool journal = !string.IsNullOrEmpty(context.GetEnvironment(ServeLogging.JournalStreamVariable));
            using var loggerFactory = context.CreateLoggerFactory?.Invoke(level) ?? ServeLogging.Create(level, format, journal);
            return await RunAsync(options, loggerFactory, context);
        });
        return command;
    }

    // Socket completions run inline on the runtime's epoll thread instead of hopping to the thread pool. NBD requests
    // are short and synchronous (page cache), so the hop and the wake-ups around it were most of the per-request cost:
    // measured +20% 4 KiB reads, +50% 4 KiB writes, +40% 1 MiB writes (docs/PERFORMANCE.md). The runtime reads this
    // variable when the first socket is used, so it is set before the host opens any; a value in the environment wins.
    private const string InlineCompletionsVariable = "DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS";

    private static async Task<int> RunAsync(PlatterHostOptions options, ILoggerFactory loggerFactory, CliContext context)
    {
        if (Environment.GetEnvironmentVariable(InlineCompletionsVariable) is null)
            Environment.SetEnvironmentVariable(InlineCompletionsVariable, "1");
        var log = loggerFactory.CreateLogger("Platter");
        var stop = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var force = new CancellationTokenSource();
        int signals = 0;
        void OnSignal(PosixSignalContext signal)
        {
            // Keep the runtime from exiting at once: shutdown flushes the store first.
            signal.Cancel = true;
            if (Interlocked.Increment(ref signals) == 1)
            {
                SystemdNotify.Send("STOPPING=1");
                log.LogInformation("{Signal}: shutting down (send it again to cut connections at once)", signal.Signal);
                stop.TrySetResult();
            }
            else
            {
                force.Cancel();
            }
        }

        using var sigterm = context.ShutdownRequested is null ? PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal) : null;
        using var sigint = context.ShutdownRequested is null ? PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal) : null;

        var host = new PlatterHost(options, loggerFactory);
        try
        {
            await host.StartAsync();
        }
        catch (StorageException e) when (e.Error == StorageError.InUse)
        {
            throw new CliException($"the store at {options.StoreDirectory} is in use by another Platter process (another `platter serve`?)");
        }
        catch (StorageException e)
        {
            throw new CliException($"cannot open the store at {options.StoreDirectory}: {PlatterCli.OneLine(e.Message)}");
        }
        catch (System.Net.Sockets.SocketException e)
        {
            throw new CliException($"cannot listen: {e.Message} (is another server using the address?)");
        }
        catch (InvalidOperationException e)
        {
            throw new CliException(PlatterCli.OneLine(e.Message));
        }
        catch (IOException e) when (e.InnerException is System.Net.Sockets.SocketException s)
        {
            throw new CliException($"cannot listen: {s.Message} (is another server using the address?)");
        }
        log.LogInformation("Platter {Version} serving {Store}", PlatterHost.Version, options.StoreDirectory);
        // Type=notify: the service counts as started now that the store is open and every listener accepts.
        SystemdNotify.Send($"READY=1\nSTATUS=serving {options.StoreDirectory}\nMAINPID={Environment.ProcessId}");
        context.Serving?.Invoke(host);

        await (context.ShutdownRequested ?? stop.Task);

        using var grace = CancellationTokenSource.CreateLinkedTokenSource(force.Token);
        grace.CancelAfter(InFlightGraceMax);
        try
        {
            // In-flight requests get the grace period; writing node caches back gets as long as it needs, until a
            // second signal (what is not written back stays in the log for the next start).
            await host.StopAsync(grace.Token, force.Token);
        }
        catch (Exception e)
        {
            log.LogError(e, "shutdown failed: {Message}", e.Message);
            throw new CliException("the server did not shut down cleanly: " + PlatterCli.OneLine(e.Message));
        }
        finally
        {
            await host.DisposeAsync();
        }
        log.LogInformation("stopped");
        return PlatterCli.ExitOk;
    }

    private static IReadOnlyList<ActivatedSocket> TakeActivatedSockets()
    {
        try
        {
            return SystemdActivation.TakeListenSockets();
        }
        catch (InvalidOperationException e)
        {
            throw new CliException("socket activation: " + e.Message);
        }
    }

    private static UnixFileMode ParseMode(string text)
    {
        try
        {
            int bits = Convert.ToInt32(text, 8);
            if (bits is >= 0 and <= 0x1FF) return (UnixFileMode)bits;
        }
        catch (Exception e) when (e is FormatException or OverflowException or ArgumentException)
        {
        }
        throw new CliException($"invalid --socket-mode '{text}': expected octal permission bits such as 0600 or 0660", PlatterCli.ExitUsage);
    }

    private static string? NoneOr(string? value, string defaultValue) =>
        value is null ? defaultValue : value.Equals("none", StringComparison.OrdinalIgnoreCase) ? null : Path.GetFullPath(value);

    /// <summary>Parses ADDR:PORT ([v6]:PORT, localhost:PORT); 'none' gives null.</summary>
    internal static IPEndPoint? ParseEndPoint(string text, string option, bool allowNone)
    {
        if (allowNone && text.Equals("none", StringComparison.OrdinalIgnoreCase)) return null;
        var value = text.StartsWith("localhost:", StringComparison.OrdinalIgnoreCase) ? "127.0.0.1" + text["localhost".Length..] : text;
        int colon = value.LastIndexOf(':');
        bool hasPort = colon > 0 && (value[0] != '[' || value[colon - 1] == ']');
        if (!hasPort || !IPEndPoint.TryParse(value, out var endPoint) || endPoint.Port == 0 && !value.EndsWith(":0", StringComparison.Ordinal))
            throw new CliException($"invalid {option} '{text}': expected ADDR:PORT such as 127.0.0.1:10809 or [::1]:10809{(allowNone ? ", or none" : "")}", PlatterCli.ExitUsage);
        return endPoint;
    }

    private static string ReadToken(string path)
    {
        try
        {
            var token = File.ReadAllText(path).Trim();
            if (token.Length == 0) throw new CliException($"the token file {path} is empty");
            return token;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CliException($"cannot read the token file: {e.Message}");
        }
    }

    private static X509Certificate2 LoadCertificate(string certPath, string keyPath)
    {
        try
        {
            return X509Certificate2.CreateFromPemFile(certPath, keyPath);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or CryptographicException or ArgumentException)
        {
            throw new CliException($"cannot load the TLS certificate {certPath} with key {keyPath}: {PlatterCli.OneLine(e.Message)}");
        }
    }

    private static X509Certificate2 LoadCa(string path)
    {
        try
        {
            return X509Certificate2.CreateFromPem(File.ReadAllText(path));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or CryptographicException)
        {
            throw new CliException($"cannot load the client CA certificate {path}: {PlatterCli.OneLine(e.Message)}");
        }
    }
}
