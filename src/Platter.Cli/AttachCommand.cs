using System.CommandLine;
using Platter.Server;
using Platter.Server.Api;

namespace Platter.Cli;

/// <summary>platter attach NAME: prints how to give the volume to QEMU or libvirt.</summary>
internal static class AttachCommand
{
    public static Command Build(CliContext context)
    {
        var name = new Argument<string>("NAME") { Description = "The volume to attach, or VOLUME@SNAPSHOT to attach a snapshot (always read-only)." };
        var socket = new Option<string?>("--socket")
        {
            Description = "Reach NBD through this unix socket. Default: the server's own NBD socket, else its TCP address.",
            HelpName = "PATH",
        };
        var tcp = new Option<string?>("--tcp")
        {
            Description = "Reach NBD over TCP at HOST:PORT (use this for libvirt, whose QEMU runs as another user).",
            HelpName = "HOST:PORT",
        };
        var nodeName = new Option<string?>("--node-name")
        {
            Description = "QEMU block node name. Default: derived from the volume name (platter-NAME, or its legal part and a hash), " +
                          "so a VM with several Platter disks gets one node per volume.",
            HelpName = "NAME",
        };
        var id = new Option<string?>("--id")
        {
            Description = "QEMU device id (-device id=, -drive id=) and libvirt alias (ua-ID). Default: the node name.",
            HelpName = "ID",
        };
        var targetDev = new Option<string?>("--target")
        {
            Description = "libvirt target device, e.g. vdb. Default: vd and three letters derived from the volume name (stable per volume, never vda).",
            HelpName = "DEV",
        };
        var tls = new Option<bool>("--tls") { Description = "Print the TLS forms (QEMU tls-creds, libvirt tls='yes') even if the server does not report TLS." };
        var tlsDir = new Option<string>("--tls-dir")
        {
            Description = "Directory QEMU reads ca-cert.pem (and client-cert.pem, client-key.pem) from for TLS.",
            HelpName = "DIR",
            DefaultValueFactory = _ => "/etc/pki/qemu",
        };
        var reconnectDelay = new Option<int>("--reconnect-delay")
        {
            Description = "Seconds QEMU holds the guest's requests and reconnects when the server goes away (a restart), instead of " +
                          "failing them with I/O errors; 0 leaves it out. libvirt gets <reconnect delay='N'/> only when the installed " +
                          "libvirt's schema accepts it (checked with virt-xml-validate; libvirt 9.0 does not).",
            HelpName = "SECONDS",
            DefaultValueFactory = _ => AttachOptions.DefaultReconnectDelaySeconds,
        };
        var vhostUser = new Option<bool>("--vhost-user")
        {
            Description = "Attach as a vhost-user-blk disk instead of NBD (the server must run with --vhost-user-dir; QEMU on the same " +
                          "machine): prints the shared guest memory QEMU needs once per VM, the -chardev/-device pair of the disk, and " +
                          "libvirt's <disk type='vhostuser'> with the <memoryBacking> its domain needs.",
        };
        var guestMemory = new Option<string>("--guest-memory")
        {
            Description = "With --vhost-user: the VM's RAM (-m), which the shared memory backend must cover, e.g. 4G.",
            HelpName = "SIZE",
            DefaultValueFactory = _ => "4G",
        };
        var qemu = new Option<bool>("--qemu") { Description = "Print only the QEMU -blockdev arguments." };
        var libvirt = new Option<bool>("--libvirt") { Description = "Print only the libvirt <disk> XML." };
        var json = PlatterCli.JsonOption();
        var api = PlatterCli.ApiSocketOption();
        var command = new Command("attach",
            "Print the QEMU -blockdev and -drive arguments and the libvirt <disk type='network'> XML that attach a volume (or, read-only, " +
            "a snapshot) to a VM. " +
            "Asks the running server for the volume and its NBD endpoints.")
        {
            name, socket, tcp, nodeName, id, targetDev, tls, tlsDir, reconnectDelay, vhostUser, guestMemory, qemu, libvirt, json, api,
        };
        command.Validators.Add(result =>
        {
            if (result.GetResult(socket) is not null && result.GetResult(tcp) is not null)
                result.AddError("--socket and --tcp cannot be used together");
            if (result.GetResult(qemu) is not null && result.GetResult(libvirt) is not null)
                result.AddError("--qemu and --libvirt cannot be used together (without either, both are printed)");
            if (result.GetValue(nodeName) is { } n && AttachText.ValidateQemuId(n, nodeName: true) is { } nodeProblem)
                result.AddError($"invalid --node-name '{n}': {nodeProblem}");
            if (result.GetValue(id) is { } i && AttachText.ValidateQemuId(i, nodeName: false) is { } idProblem)
                result.AddError($"invalid --id '{i}': {idProblem}");
            if (result.GetValue(targetDev) is { } t && AttachText.ValidateTarget(t) is { } targetProblem)
                result.AddError($"invalid --target '{t}': {targetProblem}");
            if (result.GetValue(vhostUser))
            {
                foreach (var nbdOnly in new Option[] { socket, tcp, nodeName, tls, tlsDir })
                    if (result.GetResult(nbdOnly) is { Implicit: false })
                        result.AddError($"{nbdOnly.Name} is for NBD disks; a vhost-user disk is reached through the server's --vhost-user-dir");
            }
            else if (result.GetResult(guestMemory) is { Implicit: false })
            {
                result.AddError("--guest-memory goes with --vhost-user (an NBD disk needs no shared guest memory)");
            }
            if (result.GetValue(reconnectDelay) is < 0 or > ReconnectDelaySecondsMax)
                result.AddError($"--reconnect-delay must be between 0 and {ReconnectDelaySecondsMax} seconds");
        });
        command.SetAction(async (parse, ct) =>
        {
            var volumeName = parse.GetRequiredValue(name);
            using var client = PlatterCli.CreateClient(parse, api, context);
            var health = await client.GetHealthAsync(ct);
            bool readOnly = health.NbdReadOnly;
            bool isSnapshot = false;
            if (volumeName.Contains('@'))
            {
                if (SnapshotName.TryParse(volumeName, out var error) is not { } snapshot) throw new CliException(error!, PlatterCli.ExitUsage);
                try
                {
                    await client.GetSnapshotAsync(snapshot.Volume, snapshot.Snapshot, ct);
                }
                catch (PlatterApiException e) when (e.Code == "not_found")
                {
                    throw new CliException($"no snapshot '{snapshot}' (see `platter snapshot list {snapshot.Volume}`)");
                }
                // Snapshots are read-only exports: QEMU refuses to open them read-write.
                readOnly = isSnapshot = true;
            }
            else
            {
                await VolumeCommands.Call(() => client.GetVolumeAsync(volumeName, ct), volumeName);
            }

            if (parse.GetValue(vhostUser))
                return PrintVhostUser(context, parse, health, volumeName, isSnapshot, readOnly, id, targetDev, reconnectDelay, guestMemory, qemu, libvirt, json);

            NbdTarget target;
            if (parse.GetValue(socket) is { } socketPath) target = new NbdTarget.Unix(Path.GetFullPath(socketPath));
            else if (parse.GetValue(tcp) is { } hostPort) target = ParseHostPort(hostPort);
            else if (health.NbdSocket is not null) target = new NbdTarget.Unix(health.NbdSocket);
            else if (health.NbdTcp is not null) target = ParseHostPort(health.NbdTcp);
            else throw new CliException("the server has no NBD listener (it runs with --listen none --socket none)");

            bool printLibvirt = !parse.GetValue(qemu);
            int delay = parse.GetValue(reconnectDelay);
            // Only ask the schema when the XML is printed: it costs a process start.
            bool? libvirtReconnect = printLibvirt && delay > 0 ? await LibvirtSchema.AcceptsNbdReconnectAsync(ct) : null;
            var info = AttachText.Build(volumeName, target, new AttachOptions
            {
                NodeName = parse.GetValue(nodeName),
                DeviceId = parse.GetValue(id),
                Target = parse.GetValue(targetDev),
                Tls = health.Tls || parse.GetValue(tls),
                TlsDirectory = Path.GetFullPath(parse.GetValue(tlsDir)!),
                ReadOnly = readOnly,
                ReconnectDelaySeconds = delay,
                LibvirtReconnect = libvirtReconnect == true,
            });
            if (parse.GetValue(json))
            {
                PlatterCli.WriteJson(context, info, CliJsonContext.Default.AttachInfo);
                return PlatterCli.ExitOk;
            }
            if (parse.GetValue(qemu))
            {
                context.Out.WriteLine(info.QemuBlockdev);
                return PlatterCli.ExitOk;
            }
            if (parse.GetValue(libvirt))
            {
                context.Out.WriteLine(info.LibvirtXml);
                return PlatterCli.ExitOk;
            }
            context.Out.WriteLine("# QEMU with -blockdev:");
            context.Out.WriteLine(info.QemuBlockdev);
            context.Out.WriteLine();
            context.Out.WriteLine("# QEMU with -drive:");
            context.Out.WriteLine(info.QemuDrive);
            context.Out.WriteLine();
            context.Out.WriteLine("# libvirt (virsh attach-device DOMAIN disk.xml --persistent, or paste into <devices>):");
            context.Out.WriteLine(info.LibvirtXml);
            if (delay > 0 && !info.LibvirtReconnect)
            {
                context.Out.WriteLine();
                context.Out.WriteLine(libvirtReconnect is null
                    ? "# libvirt: no reconnect setting (virt-xml-validate is not installed to check whether this libvirt accepts <reconnect delay='N'/>);"
                    : "# libvirt: this libvirt's schema has no <reconnect delay='N'/> for NBD disks (libvirt 9.0 and older);");
                context.Out.WriteLine("# without it a server restart shows in the guest as I/O errors. The QEMU forms above reconnect.");
            }
            if (info.QemuBlockdevArgs.Contains("--object"))
            {
                context.Out.WriteLine();
                context.Out.WriteLine($"# TLS: QEMU reads ca-cert.pem (and client-cert.pem, client-key.pem if the server checks clients) from {parse.GetValue(tlsDir)}.");
            }
            if (isSnapshot)
            {
                context.Out.WriteLine();
                context.Out.WriteLine("# A snapshot is read-only: the disk is attached read-only (clone it with `platter clone` for a writable copy).");
            }
            else if (health.NbdReadOnly)
            {
                context.Out.WriteLine();
                context.Out.WriteLine("# The server runs with --read-only: the disk is attached read-only.");
            }
            if (target is NbdTarget.Unix)
            {
                context.Out.WriteLine();
                context.Out.WriteLine("# QEMU must be allowed to open the socket; for libvirt (QEMU runs as libvirt-qemu) use --tcp HOST:PORT.");
            }
            return PlatterCli.ExitOk;
        });
        return command;
    }

    private static int PrintVhostUser(CliContext context, ParseResult parse, Platter.Server.Api.HealthDto health, string volumeName, bool isSnapshot,
        bool readOnly, Option<string?> id, Option<string?> targetDev, Option<int> reconnectDelay, Option<string> guestMemory, Option<bool> qemu,
        Option<bool> libvirt, Option<bool> json)
    {
        var directory = health.VhostUserDirectory
            ?? throw new CliException("the server does not serve vhost-user-blk: start it with `platter serve --vhost-user-dir DIR`");
        var socketPath = Path.Combine(directory, volumeName + ".sock");
        // The server serves no socket for a path longer than sun_path holds (107 bytes); say so rather than print a dead path.
        if (System.Text.Encoding.UTF8.GetByteCount(socketPath) > 107)
            throw new CliException($"'{volumeName}' has no vhost-user socket: {socketPath} is longer than a unix socket path may be (use a shorter --vhost-user-dir)");
        var memoryText = parse.GetValue(guestMemory)!;
        if (!SizeParser.TryParse(memoryText, out long memoryBytes, out var sizeError))
            throw new CliException($"invalid --guest-memory '{memoryText}': {sizeError}", PlatterCli.ExitUsage);
        if (memoryBytes < 1L << 20 || memoryBytes % (1L << 20) != 0)
            throw new CliException($"invalid --guest-memory '{memoryText}': QEMU takes a whole number of MiB, at least 1M", PlatterCli.ExitUsage);
        var info = VhostUserAttachText.Build(volumeName, socketPath, new VhostUserAttachOptions
        {
            DeviceId = parse.GetValue(id),
            Target = parse.GetValue(targetDev),
            // The NBD reconnect delay is how long requests wait; QEMU's chardev reconnect is how often it retries, and
            // the vhost-user-blk device holds requests until it is back. One try a second brings a restart back at once.
            ReconnectSeconds = parse.GetValue(reconnectDelay) > 0 ? 1 : 0,
            GuestMemoryBytes = memoryBytes,
        });
        if (parse.GetValue(json))
        {
            PlatterCli.WriteJson(context, info, CliJsonContext.Default.VhostUserAttachInfo);
            return PlatterCli.ExitOk;
        }
        if (parse.GetValue(qemu))
        {
            context.Out.WriteLine(info.QemuMemory);
            context.Out.WriteLine(info.QemuDevice);
            return PlatterCli.ExitOk;
        }
        if (parse.GetValue(libvirt))
        {
            context.Out.WriteLine(info.LibvirtXml);
            return PlatterCli.ExitOk;
        }
        context.Out.WriteLine("# QEMU, once per VM (guest RAM shared with the server; replaces -m):");
        context.Out.WriteLine(info.QemuMemory);
        context.Out.WriteLine();
        context.Out.WriteLine("# QEMU, the disk:");
        context.Out.WriteLine(info.QemuDevice);
        context.Out.WriteLine();
        context.Out.WriteLine("# libvirt, in <domain> once per VM:");
        context.Out.WriteLine(info.LibvirtMemoryBackingXml);
        context.Out.WriteLine();
        context.Out.WriteLine("# libvirt, the disk (virsh attach-device DOMAIN disk.xml --persistent, or paste into <devices>):");
        context.Out.WriteLine(info.LibvirtXml);
        if (isSnapshot || readOnly)
        {
            context.Out.WriteLine();
            context.Out.WriteLine(isSnapshot
                ? "# A snapshot is read-only: the device tells the guest so (clone it with `platter clone` for a writable copy)."
                : "# The server runs with --read-only: the device tells the guest so.");
        }
        context.Out.WriteLine();
        context.Out.WriteLine("# QEMU must be allowed to open the socket (it is owner-only, in a directory of the server's); one VM per volume at a time.");
        return PlatterCli.ExitOk;
    }

    // A day: beyond that a "restart" is an outage, and the guest is better off seeing errors.
    private const int ReconnectDelaySecondsMax = 86_400;

    private static NbdTarget.Tcp ParseHostPort(string text)
    {
        int colon = text.LastIndexOf(':');
        if (colon <= 0 || !int.TryParse(text.AsSpan(colon + 1), out var port) || port is <= 0 or > 65535)
            throw new CliException($"invalid address '{text}': expected HOST:PORT such as 127.0.0.1:{PlatterHostOptions.DefaultNbdPort}", PlatterCli.ExitUsage);
        var host = text[..colon];
        if (host.StartsWith('[') && host.EndsWith(']')) host = host[1..^1];
        if (host.Length == 0) throw new CliException($"invalid address '{text}': no host", PlatterCli.ExitUsage);
        return new NbdTarget.Tcp(host, port);
    }
}
