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
/// <param name="QemuBlockdev">Arguments for QEMU with -blockdev and a virtio-blk device.</param>
/// <param name="QemuDrive">Arguments for QEMU with -drive.</param>
/// <param name="LibvirtXml">The libvirt &lt;disk type='network'&gt; element.</param>
public sealed record AttachInfo(string Name, string Uri, string QemuBlockdev, string QemuDrive, string LibvirtXml);

/// <summary>Builds <see cref="AttachInfo"/>; every value is escaped for where it goes (QEMU options, URI, XML, shell).</summary>
public static class AttachText
{
    // QEMU node names: a letter, then letters, digits, '-', '_', at most 31 characters.
    private const string NodeName = "platter0";
    private const string TlsObjectId = "platter-tls0";

    /// <summary>
    /// Builds the attach strings. With <paramref name="tls"/> QEMU gets an x509 credentials object. With
    /// <paramref name="readOnly"/> (a server started with --read-only) the disk is opened read-only: QEMU refuses
    /// to open a read-only NBD export read-write ("Permission denied", "Block node is read-only").
    /// </summary>
    public static AttachInfo Build(string name, NbdTarget target, bool tls, bool readOnly = false)
    {
        var tlsObject = tls ? $"--object tls-creds-x509,id={TlsObjectId},endpoint=client,dir=/etc/pki/qemu " : "";
        var tlsOption = tls ? $",tls-creds={TlsObjectId}" : "";

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

        var blockdev = tlsObject +
            "-blockdev " + Shell($"driver=nbd,node-name={NodeName},{server},export={QemuValue(name)},discard=unmap{tlsOption}{(readOnly ? ",read-only=on" : "")}") +
            $" -device virtio-blk-pci,drive={NodeName}";
        // With -drive the URI carries everything; the TLS option applies to the protocol layer ("file.").
        var drive = tlsObject +
            "-drive " + Shell($"file={QemuValue(uri)},format=raw,if=virtio,discard=unmap{(tls ? $",file.tls-creds={TlsObjectId}" : "")}{(readOnly ? ",readonly=on" : "")}");

        var xml = new StringBuilder();
        xml.Append("<disk type='network' device='disk'>\n");
        // cache='none' lets libvirt migrate the VM live (no host page cache to lose); discard='unmap' passes
        // guest TRIM through so freed blocks return to the store.
        xml.Append("  <driver name='qemu' type='raw' cache='none' discard='unmap'/>\n");
        xml.Append($"  <source protocol='nbd' name='{Xml(name)}'{(tls ? " tls='yes'" : "")}>\n");
        xml.Append(target switch
        {
            NbdTarget.Unix unix => $"    <host transport='unix' socket='{Xml(unix.SocketPath)}'/>\n",
            NbdTarget.Tcp tcp => $"    <host name='{Xml(tcp.Host)}' port='{tcp.Port}'/>\n",
            _ => "",
        });
        xml.Append("  </source>\n");
        xml.Append("  <target dev='vda' bus='virtio'/>\n");
        if (readOnly) xml.Append("  <readonly/>\n");
        xml.Append("</disk>");
        return new AttachInfo(name, uri, blockdev, drive, xml.ToString());
    }

    /// <summary>QEMU's option syntax separates keys with commas; a literal comma is written twice.</summary>
    public static string QemuValue(string value) => value.Replace(",", ",,");

    /// <summary>Quotes for a POSIX shell when the word has anything a shell would interpret.</summary>
    public static string Shell(string word)
    {
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
}
