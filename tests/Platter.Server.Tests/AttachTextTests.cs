using System.Xml.Linq;
using Platter.Cli;
using Xunit;

namespace Platter.Server.Tests;

/// <summary>
/// The rules of attach's derived names and escaping, checked as properties (whether QEMU accepts the output is
/// Platter.Interop.Tests' AttachQemuTests, which runs the printed text through /bin/sh into qemu-system-x86_64).
/// </summary>
public class AttachTextTests
{
    private static readonly string[] Names =
    [
        "vm1", "vm1@snap", "vm1_snap", "vm1.snap", "my disk,1 'x' <&>", "datä", "dat_", "a-very-long-volume-name-that-needs-a-hash-1",
        "a-very-long-volume-name-that-needs-a-hash-2", "Ω", "x\u00a0y",
    ];

    [Fact]
    public void DerivedNodeNamesAreValidDistinctAndStable()
    {
        var nodes = Names.Select(AttachText.DeriveNodeName).ToList();
        Assert.Equal(Names.Length, nodes.Distinct().Count());
        foreach (var node in nodes) Assert.Null(AttachText.ValidateQemuId(node, nodeName: true));
        Assert.Equal(nodes, Names.Select(AttachText.DeriveNodeName));
        // A plain short name stays readable.
        Assert.Equal("platter-vm1", AttachText.DeriveNodeName("vm1"));
    }

    [Fact]
    public void DerivedTargetsAreVirtioNamesAndNeverVda()
    {
        var targets = Enumerable.Range(0, 2000).Select(i => AttachText.DeriveTarget("volume-" + i)).ToList();
        foreach (var target in targets) Assert.Null(AttachText.ValidateTarget(target));
        Assert.DoesNotContain("vda", targets);
        // Spread over the 17,576 three-letter names: 2000 volumes give well over 1800 distinct targets.
        Assert.True(targets.Distinct().Count() > 1800, $"{targets.Distinct().Count()} distinct targets");
    }

    [Fact]
    public void LibvirtXmlParsesBackToTheExactNamesForEveryName()
    {
        foreach (var name in Names)
        {
            var info = AttachText.Build(name, new NbdTarget.Unix("/tmp/s,'1'/nbd.sock"), new AttachOptions { LibvirtReconnect = true });
            var disk = XElement.Parse(info.LibvirtXml);
            var source = disk.Element("source")!;
            Assert.Equal(name, source.Attribute("name")!.Value);
            Assert.Equal("/tmp/s,'1'/nbd.sock", source.Element("host")!.Attribute("socket")!.Value);
            Assert.Equal("60", source.Element("reconnect")!.Attribute("delay")!.Value);
            Assert.Equal(info.Target, disk.Element("target")!.Attribute("dev")!.Value);
            Assert.Equal("ua-" + info.DeviceId, disk.Element("alias")!.Attribute("name")!.Value);
        }
    }

    [Fact]
    public void ShellQuotingRoundTripsThroughArgumentVectors()
    {
        // The quoted line and the argument vector describe the same words: unquote the line as sh would.
        foreach (var name in Names)
        {
            var info = AttachText.Build(name, new NbdTarget.Tcp("::1", 10809), new AttachOptions { Tls = true, TlsDirectory = "/etc/pki/q 'x'" });
            Assert.Equal(info.QemuBlockdevArgs, SplitLikeSh(info.QemuBlockdev));
            Assert.Equal(info.QemuDriveArgs, SplitLikeSh(info.QemuDrive));
        }
    }

    [Fact]
    public void ReadOnlyAndTlsAndReconnectAppearInEveryForm()
    {
        var info = AttachText.Build("vm1", new NbdTarget.Tcp("host", 10809), new AttachOptions { ReadOnly = true, Tls = true, ReconnectDelaySeconds = 7 });
        Assert.Contains("tls-creds-x509,id=platter-vm1-tls,endpoint=client,dir=/etc/pki/qemu", info.QemuBlockdevArgs);
        Assert.Contains(",reconnect-delay=7,tls-creds=platter-vm1-tls,", info.QemuBlockdev);
        Assert.Contains(",read-only=on", info.QemuBlockdev);
        Assert.Contains(",file.reconnect-delay=7,file.tls-creds=platter-vm1-tls,readonly=on", info.QemuDrive);
        var disk = XElement.Parse(info.LibvirtXml);
        Assert.Equal("yes", disk.Element("source")!.Attribute("tls")?.Value);
        Assert.NotNull(disk.Element("readonly"));
        // Not asked for: the libvirt XML has no reconnect element (libvirt 9.0 would refuse the domain).
        Assert.Null(disk.Element("source")!.Element("reconnect"));
    }

    // A POSIX shell's word splitting for the subset attach prints: unquoted words, '...' and \' between them.
    [Fact]
    public void VhostUserFormsCarryTheSocketAndSharedMemoryForEveryName()
    {
        foreach (var name in Names)
        {
            var socket = $"/run/platter vu,'1'/{name}.sock";
            var info = VhostUserAttachText.Build(name, socket, new VhostUserAttachOptions { GuestMemoryBytes = 2L << 30 });
            // The shell line and the vector agree, and QEMU gets the socket with its commas doubled.
            Assert.Equal(info.QemuDeviceArgs, SplitLikeSh(info.QemuDevice));
            Assert.Equal(info.QemuMemoryArgs, SplitLikeSh(info.QemuMemory));
            Assert.Equal($"socket,id={info.CharDevId},path={AttachText.QemuValue(socket)},reconnect=1", info.QemuDeviceArgs[1]);
            Assert.Equal($"vhost-user-blk-pci,chardev={info.CharDevId},id={info.DeviceId}", info.QemuDeviceArgs[3]);
            Assert.Null(AttachText.ValidateQemuId(info.CharDevId, nodeName: false));
            Assert.Equal(["-m", "2048M", "-object", "memory-backend-memfd,id=platter-mem,size=2048M,share=on", "-numa", "node,memdev=platter-mem"],
                info.QemuMemoryArgs);

            var disk = XElement.Parse(info.LibvirtXml);
            Assert.Equal("vhostuser", disk.Attribute("type")!.Value);
            var source = disk.Element("source")!;
            Assert.Equal(("unix", socket), (source.Attribute("type")!.Value, source.Attribute("path")!.Value));
            Assert.Equal("yes", source.Element("reconnect")!.Attribute("enabled")!.Value);
            Assert.Equal(info.Target, disk.Element("target")!.Attribute("dev")!.Value);
            Assert.Equal("ua-" + info.DeviceId, disk.Element("alias")!.Attribute("name")!.Value);
            var backing = XElement.Parse(info.LibvirtMemoryBackingXml);
            Assert.Equal("shared", backing.Element("access")!.Attribute("mode")!.Value);
        }
    }

    [Fact]
    public void VhostUserWithoutReconnectLeavesItOutOfBothForms()
    {
        var info = VhostUserAttachText.Build("vm1", "/run/vu/vm1.sock", new VhostUserAttachOptions { ReconnectSeconds = 0, DeviceId = "disk1" });
        Assert.Equal("socket,id=platter-vm1,path=/run/vu/vm1.sock", info.QemuDeviceArgs[1]);
        Assert.Null(XElement.Parse(info.LibvirtXml).Element("source")!.Element("reconnect"));
        Assert.Equal("vhost-user-blk-pci,chardev=platter-vm1,id=disk1", info.QemuDeviceArgs[3]);
    }

    private static List<string> SplitLikeSh(string line)
    {
        var words = new List<string>();
        var word = new System.Text.StringBuilder();
        bool inWord = false;
        for (int i = 0; i < line.Length; i++)
        {
            char c = line[i];
            if (c == ' ')
            {
                if (inWord) words.Add(word.ToString());
                word.Clear();
                inWord = false;
            }
            else if (c == '\'')
            {
                int end = line.IndexOf('\'', i + 1);
                word.Append(line, i + 1, end - i - 1);
                i = end;
                inWord = true;
            }
            else if (c == '\\')
            {
                word.Append(line[++i]);
                inWord = true;
            }
            else
            {
                word.Append(c);
                inWord = true;
            }
        }
        if (inWord) words.Add(word.ToString());
        return words;
    }
}
