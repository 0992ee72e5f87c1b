using System.Security.Cryptography;
using System.Text;

namespace Platter.Cli;

/// <summary>Where a client reaches the NBD server.</summary>
public abstract record NbdTarget
{
    /// <summary>A unix socket path.</summary>
    public sealed record Unix(string SocketPath) : NbdTarget;

    /// <summary>A TCP host and port.</summary>
    public sealed record Tcp(string Host, int Port) : NbdTarget;
}

/// <summary>The three ways to hand a volume to a VM: QEMU -blockdev, QEMU -drive, and a libvirt &lt;disk&gt;.</summary>
/// <param name="Name">Volume (export) name.</param>
/// <param name="Uri">The NBD URI (nbd+unix:///NAME?socket=PATH or nbd://HOST:PORT/NAME).</param>
/// <param name="NodeName">The QEMU block node name of the -blockdev form.</param>
/// <param name="DeviceId">The QEMU device id (-device id=, -drive id=); libvirt's alias is ua-DEVICEID.</param>
/// <param name="Target">The libvirt target device (vdX).</param>
/// <param name="ReconnectDelaySeconds">How long QEMU holds requests while it reconnects after the server went away (0: it does not reconnect).</param>
/// <param name="LibvirtReconnect">Whether the libvirt XML carries &lt;reconnect delay='N'/&gt; (only libvirt releases after 9.0 accept it for NBD).</param>
/// <param name="QemuBlockdev">Arguments for QEMU with -blockdev and a virtio-blk device, quoted for a POSIX shell.</param>
/// <param name="QemuBlockdevArgs">The same arguments as an argument vector (no shell quoting), for scripts.</param>
/// <param name="QemuDrive">Arguments for QEMU with -drive, quoted for a POSIX shell.</param>
/// <param name="QemuDriveArgs">The same arguments as an argument vector.</param>
/// <param name="LibvirtXml">The libvirt &lt;disk type='network'&gt; element.</param>
public sealed record AttachInfo(string Name, string Uri, string NodeName, string DeviceId, string Target, int ReconnectDelaySeconds,
    bool LibvirtReconnect, string QemuBlockdev, IReadOnlyList<string> QemuBlockdevArgs, string QemuDrive, IReadOnlyList<string> QemuDriveArgs,
    string LibvirtXml);

/// <summary>What <see cref="AttachText.Build"/> prints besides the volume and the server's address.</summary>
public sealed record AttachOptions
{
    /// <summary>
    /// Default for <see cref="ReconnectDelaySeconds"/>. A restart of `platter serve` takes well under a second plus the
    /// in-flight grace (30 s at most, only when requests are stuck); 60 s covers both with room, and a guest's
    /// virtio-blk requests have no timeout of their own, so holding them that long costs nothing but the wait.
    /// </summary>
    public const int DefaultReconnectDelaySeconds = 60;

    /// <summary>QEMU block node name; null derives it from the volume name (<see cref="AttachText.DeriveNodeName"/>).</summary>
    public string? NodeName { get; init; }

    /// <summary>QEMU device id and libvirt alias (ua-ID); null uses the node name.</summary>
    public string? DeviceId { get; init; }

    /// <summary>libvirt target device (vdX); null derives one from the volume name (<see cref="AttachText.DeriveTarget"/>).</summary>
    public string? Target { get; init; }

    /// <summary>NBD with TLS: a QEMU x509 credentials object and libvirt's tls='yes'.</summary>
    public bool Tls { get; init; }

    /// <summary>The directory QEMU reads ca-cert.pem (and client-cert.pem, client-key.pem) from.</summary>
    public string TlsDirectory { get; init; } = "/etc/pki/qemu";

    /// <summary>Attach read-only (a snapshot, or a server started with --read-only).</summary>
    public bool ReadOnly { get; init; }

    /// <summary>QEMU's reconnect-delay: seconds requests wait for the server to come back; 0 omits it.</summary>
    public int ReconnectDelaySeconds { get; init; } = DefaultReconnectDelaySeconds;

    /// <summary>Put &lt;reconnect delay='N'/&gt; in the libvirt XML (only when the installed libvirt's schema accepts it).</summary>
    public bool LibvirtReconnect { get; init; }
}

/// <summary>Builds <see cref="AttachInfo"/>; every value is escaped for where it goes (QEMU options, URI, XML, shell).</summary>
public static class AttachText
{
    // QEMU block node names: a letter, then letters, digits, '-', '.', '_'; at most 31 characters (block.c keeps 32
    // bytes with the terminator). Derived names use only letters, digits, '-' and '_' so they are valid libvirt
    // aliases too.
    private const int NodeNameLengthMax = 31;
    private const string NodeNamePrefix = "platter-";
    // Hex digits of SHA-256 appended when a name had to be changed to fit: 32 bits keep distinct volumes apart.
    private const int HashDigits = 8;

    /// <summary>
    /// A QEMU node name for a volume: <c>platter-NAME</c> when NAME is made only of letters, digits, '-' and '_' and
    /// short enough; otherwise the legal prefix of it and a hash of the whole name (<c>platter-vm1_snap-1a2b3c4d</c>
    /// for <c>vm1@snap</c>), so different volumes get different names and the same volume always the same one.
    /// </summary>
    public static string DeriveNodeName(string volumeName)
    {
        var plain = NodeNamePrefix + volumeName;
        bool legal = true;
        foreach (char c in volumeName) legal &= char.IsAsciiLetterOrDigit(c) || c is '-' or '_';
        if (legal && plain.Length <= NodeNameLengthMax) return plain;

        var kept = new StringBuilder();
        foreach (char c in volumeName)
        {
            if (kept.Length == NodeNameLengthMax - NodeNamePrefix.Length - 1 - HashDigits) break;
            kept.Append(char.IsAsciiLetterOrDigit(c) || c is '-' or '_' ? c : '_');
        }
        return $"{NodeNamePrefix}{kept}-{Hash(volumeName)[..HashDigits]}";
    }

    /// <summary>
    /// A libvirt target for a volume: <c>vd</c> and three letters from a hash of the name (<c>vdkqz</c>). It stays
    /// the same for a volume, differs between volumes but for one pair in 17,576, and never takes <c>vda</c>, which
    /// a VM's boot disk usually holds. Pass <c>--target</c> to choose.
    /// </summary>
    public static string DeriveTarget(string volumeName)
    {
        var hash = SHA256.HashData(Encoding.UTF8.GetBytes(volumeName));
        int n = (hash[0] << 16 | hash[1] << 8 | hash[2]) % (26 * 26 * 26);
        return $"vd{(char)('a' + n / 676)}{(char)('a' + n / 26 % 26)}{(char)('a' + n % 26)}";
    }

    /// <summary>Null when <paramref name="id"/> is a valid QEMU id (node name, device id), otherwise why not.</summary>
    public static string? ValidateQemuId(string id, bool nodeName)
    {
        if (id.Length == 0 || !char.IsAsciiLetter(id[0])) return "it must start with a letter";
        foreach (char c in id)
        {
            if (!(char.IsAsciiLetterOrDigit(c) || c is '-' or '_')) return $"'{c}' is not allowed (letters, digits, '-' and '_' only)";
        }
        if (nodeName && id.Length > NodeNameLengthMax) return $"QEMU node names are at most {NodeNameLengthMax} characters";
        return null;
    }

    /// <summary>Null when <paramref name="target"/> is a virtio disk name libvirt accepts (vd and letters), otherwise why not.</summary>
    public static string? ValidateTarget(string target)
    {
        if (target.Length < 3 || !target.StartsWith("vd", StringComparison.Ordinal) || !target[2..].All(char.IsAsciiLetterLower))
            return "a virtio disk target is 'vd' followed by lower-case letters (vdb, vdc, ..., vdaa)";
        return null;
    }

    /// <summary>Builds the attach strings for volume (or VOLUME@SNAPSHOT) <paramref name="name"/> served at <paramref name="target"/>.</summary>
    public static AttachInfo Build(string name, NbdTarget target, AttachOptions options)
    {
        var node = options.NodeName ?? DeriveNodeName(name);
        var id = options.DeviceId ?? node;
        var dev = options.Target ?? DeriveTarget(name);
        // One credentials object per disk: QEMU refuses two objects with one id, and a VM with two Platter disks
        // would otherwise get the same --object twice.
        var tlsId = node + "-tls";
        var tlsObject = options.Tls ? new[] { "--object", $"tls-creds-x509,id={tlsId},endpoint=client,dir={QemuValue(options.TlsDirectory)}" } : [];

        string server, uri;
        switch (target)
        {
            case NbdTarget.Unix unix:
                server = $"server.type=unix,server.path={QemuValue(unix.SocketPath)}";
                uri = $"nbd+unix:///{Uri.EscapeDataString(name)}?socket={Uri.EscapeDataString(unix.SocketPath)}";
                break;
            case NbdTarget.Tcp tcp:
                server = $"server.type=inet,server.host={QemuValue(tcp.Host)},server.port={tcp.Port}";
                var host = tcp.Host.Contains(':') ? $"[{tcp.Host}]" : tcp.Host;
                uri = $"nbd://{host}:{tcp.Port}/{Uri.EscapeDataString(name)}";
                break;
            default:
                throw new ArgumentException("unknown target", nameof(target));
        }

        // reconnect-delay: after an unexpected disconnect QEMU keeps reconnecting and holds the guest's requests
        // for this long instead of failing them with EIO. This is what makes a server restart invisible.
        var reconnect = options.ReconnectDelaySeconds > 0 ? $",reconnect-delay={options.ReconnectDelaySeconds}" : "";
        var tls = options.Tls ? $",tls-creds={tlsId}" : "";
        string[] blockdev =
        [
            .. tlsObject,
            "-blockdev", $"driver=nbd,node-name={node},{server},export={QemuValue(name)}{reconnect}{tls},discard=unmap{(options.ReadOnly ? ",read-only=on" : "")}",
            "-device", $"virtio-blk-pci,drive={node},id={id}",
        ];
        // With -drive the URI carries the address and the export; protocol options go to the "file." layer.
        var fileReconnect = options.ReconnectDelaySeconds > 0 ? $",file.reconnect-delay={options.ReconnectDelaySeconds}" : "";
        string[] drive =
        [
            .. tlsObject,
            "-drive", $"file={QemuValue(uri)},format=raw,if=virtio,id={id},discard=unmap{fileReconnect}" +
                      $"{(options.Tls ? $",file.tls-creds={tlsId}" : "")}{(options.ReadOnly ? ",readonly=on" : "")}",
        ];

        var xml = new StringBuilder();
        xml.Append("<disk type='network' device='disk'>\n");
        // cache='none' lets libvirt migrate the VM live (no host page cache to lose); discard='unmap' passes
        // guest TRIM through so freed blocks return to the store.
        xml.Append("  <driver name='qemu' type='raw' cache='none' discard='unmap'/>\n");
        xml.Append($"  <source protocol='nbd' name='{Xml(name)}'{(options.Tls ? " tls='yes'" : "")}>\n");
        xml.Append(target switch
        {
            NbdTarget.Unix unix => $"    <host transport='unix' socket='{Xml(unix.SocketPath)}'/>\n",
            NbdTarget.Tcp tcp => $"    <host name='{Xml(tcp.Host)}' port='{tcp.Port}'/>\n",
            _ => "",
        });
        if (options.LibvirtReconnect && options.ReconnectDelaySeconds > 0)
            xml.Append($"    <reconnect delay='{options.ReconnectDelaySeconds}'/>\n");
        xml.Append("  </source>\n");
        xml.Append($"  <target dev='{Xml(dev)}' bus='virtio'/>\n");
        if (options.ReadOnly) xml.Append("  <readonly/>\n");
        // User aliases must start with "ua-"; they name the device for virsh detach-device-alias.
        xml.Append($"  <alias name='{Xml(id.StartsWith("ua-", StringComparison.Ordinal) ? id : "ua-" + id)}'/>\n");
        xml.Append("</disk>");
        return new AttachInfo(name, uri, node, id, dev, options.ReconnectDelaySeconds, options.LibvirtReconnect && options.ReconnectDelaySeconds > 0,
            ShellLine(blockdev), blockdev, ShellLine(drive), drive, xml.ToString());
    }

    /// <summary>QEMU's option syntax separates keys with commas; a literal comma is written twice.</summary>
    public static string QemuValue(string value) => value.Replace(",", ",,");

    /// <summary>The words joined with spaces, each quoted for a POSIX shell where needed.</summary>
    public static string ShellLine(IEnumerable<string> words) => string.Join(' ', words.Select(Shell));

    /// <summary>Quotes for a POSIX shell when the word has anything a shell would interpret.</summary>
    public static string Shell(string word)
    {
        if (word.Length == 0) return "''";
        foreach (char c in word)
        {
            if (!(char.IsAsciiLetterOrDigit(c) || c is ',' or '.' or '_' or '-' or '=' or '/' or ':' or '+' or '%' or '@'))
                return "'" + word.Replace("'", "'\\''") + "'";
        }
        return word;
    }

    /// <summary>Escapes for an XML attribute in single quotes.</summary>
    public static string Xml(string value) =>
        value.Replace("&", "&amp;").Replace("<", "&lt;").Replace(">", "&gt;").Replace("'", "&apos;").Replace("\"", "&quot;");

    private static string Hash(string text) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(text)));
}

/// <summary>
/// A volume as a vhost-user-blk disk (<c>platter attach --vhost-user</c>): QEMU connects to the volume's socket in the
/// server's <c>--vhost-user-dir</c>, and the guest's RAM must be shared memory (one backend per VM, not per disk).
/// </summary>
/// <param name="Name">Volume (or VOLUME@SNAPSHOT) name.</param>
/// <param name="SocketPath">The volume's vhost-user socket.</param>
/// <param name="CharDevId">The QEMU chardev id of the socket.</param>
/// <param name="DeviceId">The QEMU device id; libvirt's alias is ua-DEVICEID.</param>
/// <param name="Target">The libvirt target device (vdX).</param>
/// <param name="ReconnectSeconds">QEMU's chardev reconnect interval: while the server restarts, QEMU retries this often and the guest's requests wait (0: no reconnect).</param>
/// <param name="QemuMemory">The once-per-VM guest RAM arguments (-m, a shared memfd backend, its NUMA node), quoted for a POSIX shell.</param>
/// <param name="QemuMemoryArgs">The same as an argument vector.</param>
/// <param name="QemuDevice">The per-disk arguments (-chardev socket, -device vhost-user-blk-pci), quoted for a POSIX shell.</param>
/// <param name="QemuDeviceArgs">The same as an argument vector.</param>
/// <param name="LibvirtXml">The libvirt &lt;disk type='vhostuser'&gt; element.</param>
/// <param name="LibvirtMemoryBackingXml">The domain's &lt;memoryBacking&gt; element libvirt needs for any vhost-user disk.</param>
public sealed record VhostUserAttachInfo(string Name, string SocketPath, string CharDevId, string DeviceId, string Target, int ReconnectSeconds,
    string QemuMemory, IReadOnlyList<string> QemuMemoryArgs, string QemuDevice, IReadOnlyList<string> QemuDeviceArgs, string LibvirtXml,
    string LibvirtMemoryBackingXml);

/// <summary>What <see cref="VhostUserAttachText.Build"/> prints besides the volume and its socket.</summary>
public sealed record VhostUserAttachOptions
{
    /// <summary>Chardev id; null derives it from the volume name (<see cref="AttachText.DeriveNodeName"/>).</summary>
    public string? CharDevId { get; init; }

    /// <summary>QEMU device id and libvirt alias (ua-ID); null uses the chardev id.</summary>
    public string? DeviceId { get; init; }

    /// <summary>libvirt target device; null derives one from the volume name.</summary>
    public string? Target { get; init; }

    /// <summary>Seconds between QEMU's reconnect attempts when the socket goes away; 0 omits reconnecting.</summary>
    public int ReconnectSeconds { get; init; } = 1;

    /// <summary>The VM's RAM in bytes: the shared backend must cover all of it (QEMU refuses a NUMA layout that does not add up to -m).</summary>
    public long GuestMemoryBytes { get; init; } = 4L << 30;
}

/// <summary>Builds <see cref="VhostUserAttachInfo"/>; every value is escaped for where it goes (QEMU options, XML, shell).</summary>
public static class VhostUserAttachText
{
    /// <summary>The memory backend's id: one per VM, shared by all its vhost-user disks.</summary>
    public const string MemoryId = "platter-mem";

    /// <summary>Builds the attach strings for <paramref name="name"/> served on <paramref name="socketPath"/>.</summary>
    public static VhostUserAttachInfo Build(string name, string socketPath, VhostUserAttachOptions options)
    {
        var chardev = options.CharDevId ?? AttachText.DeriveNodeName(name);
        var id = options.DeviceId ?? chardev;
        var dev = options.Target ?? AttachText.DeriveTarget(name);
        // QEMU's -m takes a size with a suffix; a memfd backend the same size. Whole MiB keep both exact.
        var size = $"{options.GuestMemoryBytes / (1024 * 1024)}M";
        string[] memory =
        [
            "-m", size,
            "-object", $"memory-backend-memfd,id={MemoryId},size={size},share=on",
            "-numa", $"node,memdev={MemoryId}",
        ];
        // reconnect=N: QEMU retries the socket every N seconds after it went away (a server restart) and the
        // vhost-user-blk device re-negotiates; the guest's requests wait meanwhile instead of failing.
        var reconnect = options.ReconnectSeconds > 0 ? $",reconnect={options.ReconnectSeconds}" : "";
        string[] device =
        [
            "-chardev", $"socket,id={chardev},path={AttachText.QemuValue(socketPath)}{reconnect}",
            "-device", $"vhost-user-blk-pci,chardev={chardev},id={id}",
        ];
        var xml = new StringBuilder();
        xml.Append("<disk type='vhostuser' device='disk'>\n");
        xml.Append("  <driver name='qemu' type='raw'/>\n");
        xml.Append($"  <source type='unix' path='{AttachText.Xml(socketPath)}'>\n");
        if (options.ReconnectSeconds > 0) xml.Append($"    <reconnect enabled='yes' timeout='{options.ReconnectSeconds}'/>\n");
        xml.Append("  </source>\n");
        xml.Append($"  <target dev='{AttachText.Xml(dev)}' bus='virtio'/>\n");
        // No <readonly/>: QEMU's vhost-user-blk device has no read-only property; a snapshot's (or a --read-only server's)
        // device reports VIRTIO_BLK_F_RO itself and refuses writes.
        xml.Append($"  <alias name='{AttachText.Xml(id.StartsWith("ua-", StringComparison.Ordinal) ? id : "ua-" + id)}'/>\n");
        xml.Append("</disk>");
        const string memoryBacking = "<memoryBacking>\n  <source type='memfd'/>\n  <access mode='shared'/>\n</memoryBacking>";
        return new VhostUserAttachInfo(name, socketPath, chardev, id, dev, options.ReconnectSeconds, AttachText.ShellLine(memory), memory,
            AttachText.ShellLine(device), device, xml.ToString(), memoryBacking);
    }
}
