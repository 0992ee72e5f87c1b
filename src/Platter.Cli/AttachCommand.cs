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
        var qemu = new Option<bool>("--qemu") { Description = "Print only the QEMU -blockdev arguments." };
        var libvirt = new Option<bool>("--libvirt") { Description = "Print only the libvirt <disk> XML." };
        var json = PlatterCli.JsonOption();
        var api = PlatterCli.ApiSocketOption();
        var command = new Command("attach",
            "Print the QEMU -blockdev and -drive arguments and the libvirt <disk type='network'> XML that attach a volume (or, read-only, " +
            "a snapshot) to a VM. " +
            "Asks the running server for the volume and its NBD endpoints.")
        {
            name, socket, tcp, nodeName, id, targetDev, tls, tlsDir, reconnectDelay, qemu, libvirt, json, api,
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
