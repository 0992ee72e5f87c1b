using System.Xml.Linq;
using Platter.Cli;
using Xunit;

namespace Platter.Server.Tests;

public class AttachTextTests
{
    [Fact]
    public void UnixSocketGivesBlockdevDriveAndLibvirt()
    {
        var info = AttachText.Build("vm1", new NbdTarget.Unix("/var/lib/platter/nbd.sock"), tls: false);
        Assert.Equal("nbd+unix:///vm1?socket=%2Fvar%2Flib%2Fplatter%2Fnbd.sock", info.Uri);
        Assert.Equal(
            "-blockdev driver=nbd,node-name=platter0,server.type=unix,server.path=/var/lib/platter/nbd.sock,export=vm1,discard=unmap -device virtio-blk-pci,drive=platter0",
            info.QemuBlockdev);
        // '?' is a shell glob character, so the -drive value is quoted.
        Assert.Equal("-drive 'file=nbd+unix:///vm1?socket=%2Fvar%2Flib%2Fplatter%2Fnbd.sock,format=raw,if=virtio,discard=unmap'", info.QemuDrive);

        var disk = XElement.Parse(info.LibvirtXml);
        Assert.Equal("network", disk.Attribute("type")?.Value);
        Assert.Equal("disk", disk.Attribute("device")?.Value);
        Assert.Equal("raw", disk.Element("driver")?.Attribute("type")?.Value);
        var source = disk.Element("source")!;
        Assert.Equal("nbd", source.Attribute("protocol")?.Value);
        Assert.Equal("vm1", source.Attribute("name")?.Value);
        Assert.Equal("unix", source.Element("host")?.Attribute("transport")?.Value);
        Assert.Equal("/var/lib/platter/nbd.sock", source.Element("host")?.Attribute("socket")?.Value);
        Assert.Equal("virtio", disk.Element("target")?.Attribute("bus")?.Value);
    }

    [Fact]
    public void ReadOnlyServerGivesReadOnlyDisks()
    {
        // QEMU refuses to open a read-only NBD export read-write, with either syntax.
        var info = AttachText.Build("vm1", new NbdTarget.Unix("/run/p/nbd.sock"), tls: false, readOnly: true);
        Assert.EndsWith(",discard=unmap,read-only=on -device virtio-blk-pci,drive=platter0", info.QemuBlockdev);
        Assert.EndsWith(",discard=unmap,readonly=on'", info.QemuDrive);
        Assert.NotNull(XElement.Parse(info.LibvirtXml).Element("readonly"));

        var writable = AttachText.Build("vm1", new NbdTarget.Unix("/run/p/nbd.sock"), tls: false);
        Assert.DoesNotContain("read", writable.QemuBlockdev + writable.QemuDrive);
        Assert.Null(XElement.Parse(writable.LibvirtXml).Element("readonly"));
    }

    [Fact]
    public void TcpGivesInetServerAndHostElement()
    {
        var info = AttachText.Build("db", new NbdTarget.Tcp("10.0.0.5", 10809), tls: false);
        Assert.Equal("nbd://10.0.0.5:10809/db", info.Uri);
        Assert.Contains("server.type=inet,server.host=10.0.0.5,server.port=10809,export=db", info.QemuBlockdev);
        var host = XElement.Parse(info.LibvirtXml).Element("source")!.Element("host")!;
        Assert.Equal("10.0.0.5", host.Attribute("name")?.Value);
        Assert.Equal("10809", host.Attribute("port")?.Value);
        Assert.Null(host.Attribute("transport"));
    }

    [Fact]
    public void Ipv6HostIsBracketedInTheUri()
    {
        var info = AttachText.Build("db", new NbdTarget.Tcp("::1", 10809), tls: false);
        Assert.Equal("nbd://[::1]:10809/db", info.Uri);
    }

    [Fact]
    public void AwkwardNamesAreEscapedForEachSyntax()
    {
        var name = "my disk,1 'x' <&>";
        var info = AttachText.Build(name, new NbdTarget.Unix("/tmp/s,1/nbd.sock"), tls: false);
        // QEMU doubles commas; the shell sees one single-quoted word with its quotes escaped.
        Assert.Contains("server.path=/tmp/s,,1/nbd.sock", info.QemuBlockdev);
        Assert.Contains("export=my disk,,1 '\\''x'\\'' <&>", info.QemuBlockdev);
        Assert.StartsWith("-blockdev 'driver=nbd", info.QemuBlockdev);
        Assert.Contains("nbd+unix:///my%20disk%2C1%20%27x%27%20%3C%26%3E?socket=%2Ftmp%2Fs%2C1%2Fnbd.sock", info.Uri);
        // The XML must parse back to the exact name.
        Assert.Equal(name, XElement.Parse(info.LibvirtXml).Element("source")!.Attribute("name")!.Value);
    }

    [Fact]
    public void TlsAddsCredentialsEverywhere()
    {
        var info = AttachText.Build("vm1", new NbdTarget.Tcp("host", 10809), tls: true);
        Assert.StartsWith("--object tls-creds-x509,id=platter-tls0,endpoint=client,dir=/etc/pki/qemu ", info.QemuBlockdev);
        Assert.Contains(",tls-creds=platter-tls0", info.QemuBlockdev);
        Assert.Contains(",file.tls-creds=platter-tls0", info.QemuDrive);
        Assert.Equal("yes", XElement.Parse(info.LibvirtXml).Element("source")!.Attribute("tls")?.Value);
    }
}
