using System.Buffers.Binary;
using System.Text;
using static Platter.Testing.NbdTestClient;

namespace Platter.Nbd.Tests;

public class HandshakeTests
{
    [Fact]
    public async Task Greeting_AdvertisesFixedNewstyleAndNoZeroes_AndGoEntersTransmission()
    {
        await using var server = await TestServer.StartDefaultAsync();
        await using var client = await server.ConnectAsync();
        Assert.Equal(3, client.HandshakeFlags);
        Assert.Equal(RepAck, await client.InfoOrGoAsync(OptGo, "disk"));
        Assert.Equal(4L << 20, client.Info!.Size);
        ushort expected = TxHasFlags | TxSendFlush | TxSendFua | TxSendTrim | TxSendWriteZeroes | TxSendCache | TxSendFastZero | TxCanMultiConn;
        Assert.Equal(expected, client.Info.Flags); // no DF: structured replies were not negotiated
        Assert.Equal(0u, await client.WriteAsync(0, [1, 2, 3]));
        Assert.Equal(new byte[] { 1, 2, 3 }, (await client.ReadAsync(0, 3)).Data);
    }

    [Fact]
    public async Task ExportName_WithNoZeroes_SendsTenBytes_WithoutSends134()
    {
        await using var server = await TestServer.StartDefaultAsync();
        foreach (bool noZeroes in new[] { true, false })
        {
            await using var client = await server.ConnectAsync(handshake: false);
            await client.HandshakeAsync(noZeroes ? 3u : 1u);
            await client.SendOptionAsync(OptExportName, Encoding.UTF8.GetBytes("disk"));
            byte[] reply = await client.ReadExactAsync(noZeroes ? 10 : 134);
            Assert.Equal(4UL << 20, BinaryPrimitives.ReadUInt64BigEndian(reply));
            if (!noZeroes) Assert.All(reply[10..], b => Assert.Equal(0, b));
            // The next bytes must be a reply to a request, not padding.
            Assert.Equal(0u, await client.FlushAsync());
        }
    }

    [Fact]
    public async Task ExportName_Empty_SelectsDefault_UnknownClosesConnection()
    {
        await using var server = await TestServer.StartDefaultAsync();
        await using (var client = await server.ConnectAsync())
        {
            await client.SendOptionAsync(OptExportName, []);
            byte[] reply = await client.ReadExactAsync(10);
            Assert.Equal(4UL << 20, BinaryPrimitives.ReadUInt64BigEndian(reply));
        }
        await using (var client = await server.ConnectAsync())
        {
            await client.SendOptionAsync(OptExportName, Encoding.UTF8.GetBytes("nope"));
            Assert.True(await client.IsClosedByServerAsync());
        }
    }

    [Fact]
    public async Task UnknownOption_IsUnsupported_AndNegotiationContinues()
    {
        await using var server = await TestServer.StartDefaultAsync();
        await using var client = await server.ConnectAsync();
        foreach (uint option in new uint[] { 4, 12, 0xdeadbeef, 0 })
        {
            var replies = await client.OptionAsync(option, [1, 2, 3, 4]);
            Assert.Equal(ErrUnsup, Assert.Single(replies).Type);
        }
        Assert.Equal(RepAck, await client.InfoOrGoAsync(OptGo, "disk"));
    }

    [Fact]
    public async Task List_ReturnsEveryExportWithDescription()
    {
        await using var server = await TestServer.StartDefaultAsync();
        await using var client = await server.ConnectAsync();
        var replies = await client.OptionAsync(OptList);
        Assert.Equal(RepAck, replies[^1].Type);
        var names = replies.Where(r => r.Type == RepServer).Select(r =>
        {
            int n = (int)BinaryPrimitives.ReadUInt32BigEndian(r.Data);
            return (Encoding.UTF8.GetString(r.Data, 4, n), Encoding.UTF8.GetString(r.Data, 4 + n, r.Data.Length - 4 - n));
        }).ToList();
        Assert.Contains(("disk", "test disk"), names);
        Assert.Contains(("ro", ""), names);
        Assert.Contains(("aligned", ""), names);
        // LIST with data is invalid but harmless.
        Assert.Equal(ErrInvalid, (await client.OptionAsync(OptList, [0])).Single().Type);
        Assert.Equal(RepAck, await client.InfoOrGoAsync(OptGo, "disk"));
    }

    [Fact]
    public async Task Info_ReportsNameDescriptionAndBlockSizes()
    {
        await using var server = await TestServer.StartDefaultAsync();
        await using var client = await server.ConnectAsync();

        Assert.Equal(RepAck, await client.InfoOrGoAsync(OptInfo, "disk", 1, 2, 3));
        Assert.Equal("disk", client.Info!.Name);
        Assert.Equal("test disk", client.Info.Description);
        Assert.Equal((1u, 4096u, 32u << 20), (client.Info.MinBlock, client.Info.PreferredBlock, client.Info.MaxBlock));

        // The real alignment is only advertised to a client that asked for block sizes.
        Assert.Equal(RepAck, await client.InfoOrGoAsync(OptInfo, "aligned", 3));
        Assert.Equal(512u, client.Info!.MinBlock);
        Assert.Equal(RepAck, await client.InfoOrGoAsync(OptInfo, "aligned"));
        Assert.Equal(1u, client.Info!.MinBlock);

        // Empty name resolves to the default export and reports its canonical name.
        Assert.Equal(RepAck, await client.InfoOrGoAsync(OptInfo, ""));
        Assert.Equal("disk", client.Info!.Name);

        Assert.Equal(RepAck, await client.InfoOrGoAsync(OptGo, "disk"));
        Assert.Equal(0u, await client.FlushAsync());
    }

    [Fact]
    public async Task Go_UnknownExport_IsErrUnknown_ThenGoSucceeds()
    {
        await using var server = await TestServer.StartDefaultAsync();
        await using var client = await server.ConnectAsync();
        Assert.Equal(ErrUnknown, await client.InfoOrGoAsync(OptGo, "missing"));
        Assert.Equal(ErrUnknown, await client.InfoOrGoAsync(OptInfo, "missing"));
        Assert.Equal(RepAck, await client.InfoOrGoAsync(OptGo, "disk"));
        Assert.Equal(0u, await client.FlushAsync());
    }

    [Fact]
    public async Task Go_AlignedExportWithBlockSizeRequest_EnforcesAlignment()
    {
        await using var server = await TestServer.StartDefaultAsync();
        await using var client = await server.OpenAsync("aligned", blockSize: true);
        Assert.Equal(512u, client.Info!.MinBlock);
        Assert.Equal(22u, (await client.ReadAsync(100, 512)).Error);
        Assert.Equal(0u, (await client.ReadAsync(512, 512)).Error);
    }

    [Fact]
    public async Task MalformedOptions_AreInvalid_AndNegotiationContinues()
    {
        await using var server = await TestServer.StartDefaultAsync();
        await using var client = await server.ConnectAsync();
        // GO whose name length runs past the data.
        byte[] bad = [.. BE32(100), .. "ab"u8.ToArray(), 0, 0];
        Assert.Equal(ErrInvalid, (await client.OptionAsync(OptGo, bad)).Last().Type);
        // GO with a truncated information list.
        byte[] bad2 = [.. BE32(0), 0, 2, 0, 3];
        Assert.Equal(ErrInvalid, (await client.OptionAsync(OptGo, bad2)).Last().Type);
        // Invalid UTF-8 in the name.
        byte[] bad3 = [.. BE32(2), 0xff, 0xfe, 0, 0];
        Assert.Equal(ErrInvalid, (await client.OptionAsync(OptInfo, bad3)).Last().Type);
        Assert.Equal(ErrInvalid, (await client.OptionAsync(OptStructuredReply, [1])).Single().Type);
        Assert.Equal(ErrInvalid, (await client.OptionAsync(OptExtendedHeaders, [1])).Single().Type);
        Assert.Equal(RepAck, await client.InfoOrGoAsync(OptGo, "disk"));
    }

    [Fact]
    public async Task OversizedOption_IsSkippedWithTooBig_AndHugeOptionClosesWithoutAllocating()
    {
        await using var server = await TestServer.StartDefaultAsync();
        await using (var client = await server.ConnectAsync())
        {
            await client.SendOptionAsync(OptGo, new byte[100_000]);
            var reply = await client.ReadOptionReplyAsync();
            Assert.Equal(ErrTooBig, reply.Type);
            Assert.Equal(RepAck, await client.InfoOrGoAsync(OptGo, "disk"));
        }
        await using (var client = await server.ConnectAsync())
        {
            // Claims 4 GiB and sends nothing: the server must give up instead of waiting for (or allocating) it.
            await client.SendOptionAsync(OptGo, [], lengthOverride: uint.MaxValue);
            Assert.True(await client.IsClosedByServerAsync());
        }
    }

    [Fact]
    public async Task Abort_IsAcknowledged_AndConnectionCloses()
    {
        await using var server = await TestServer.StartDefaultAsync();
        await using var client = await server.ConnectAsync();
        Assert.Equal(RepAck, (await client.OptionAsync(OptAbort)).Single().Type);
        Assert.True(await client.IsClosedByServerAsync());
    }

    [Fact]
    public async Task StartTls_WithoutCertificate_IsRefusedByPolicy()
    {
        await using var server = await TestServer.StartDefaultAsync();
        await using var client = await server.ConnectAsync();
        Assert.Equal(ErrPolicy, (await client.OptionAsync(OptStartTls)).Single().Type);
        Assert.Equal(RepAck, await client.InfoOrGoAsync(OptGo, "disk"));
    }

    [Fact]
    public async Task UnknownClientFlags_CloseConnection()
    {
        await using var server = await TestServer.StartDefaultAsync();
        await using var client = await server.ConnectAsync(handshake: false);
        await client.HandshakeAsync(0x100);
        Assert.True(await client.IsClosedByServerAsync());
    }

    [Fact]
    public async Task BadOptionMagic_ClosesConnection()
    {
        await using var server = await TestServer.StartDefaultAsync();
        await using var client = await server.ConnectAsync();
        await client.WriteAsync(new byte[16]);
        Assert.True(await client.IsClosedByServerAsync());
    }

    [Fact]
    public async Task MetaContexts_ListAndSet()
    {
        await using var server = await TestServer.StartDefaultAsync();
        await using var client = await server.ConnectAsync();

        // Before structured replies, meta context negotiation is invalid.
        Assert.Equal(ErrInvalid, (await client.MetaContextAsync(OptSetMetaContext, "disk", "base:allocation")).Final);
        Assert.Equal(RepAck, await client.StructuredReplyAsync());
        Assert.Equal(ErrInvalid, (await client.OptionAsync(OptStructuredReply)).Single().Type);

        var all = await client.MetaContextAsync(OptListMetaContext, "disk");
        Assert.Equal(RepAck, all.Final);
        Assert.Equal([(0u, "base:allocation")], all.Contexts);
        var wildcard = await client.MetaContextAsync(OptListMetaContext, "disk", "base:");
        Assert.Equal([(0u, "base:allocation")], wildcard.Contexts);
        var unknown = await client.MetaContextAsync(OptListMetaContext, "disk", "qemu:dirty-bitmap:x", "nonsense", "base:nope");
        Assert.Equal(RepAck, unknown.Final);
        Assert.Empty(unknown.Contexts);
        Assert.Equal(ErrUnknown, (await client.MetaContextAsync(OptListMetaContext, "missing", "base:")).Final);

        // SET ignores wildcards and unknown names, selects the real context.
        var set = await client.MetaContextAsync(OptSetMetaContext, "disk", "base:", "base:allocation", "x-foo:bar");
        Assert.Equal(RepAck, set.Final);
        var (id, name) = Assert.Single(set.Contexts);
        Assert.Equal("base:allocation", name);
        Assert.NotEqual(0u, id);

        // Truncated query list is invalid as a whole.
        byte[] truncated = [.. MetaContextRequest("disk"), 0, 0];
        BinaryPrimitives.WriteUInt32BigEndian(truncated.AsSpan(8), 1);
        Assert.Equal(ErrInvalid, (await client.OptionAsync(OptSetMetaContext, truncated)).Last().Type);
    }

    [Fact]
    public async Task MetaContextProvider_RegisteredByHost_IsListedSelectedAndAnswered()
    {
        var options = new NbdServerOptions();
        options.MetaContextProviders.Add(new DepthProvider());
        await using var server = await TestServer.StartAsync(TestServer.DefaultExports(), options);
        await using var client = await server.ConnectAsync();
        Assert.Equal(RepAck, await client.StructuredReplyAsync());
        var listed = await client.MetaContextAsync(OptListMetaContext, "disk");
        Assert.Equal(["base:allocation", "qemu:allocation-depth"], listed.Contexts.Select(c => c.Name).Order());
        var set = await client.MetaContextAsync(OptSetMetaContext, "disk", "base:allocation", "qemu:allocation-depth");
        Assert.Equal(2, set.Contexts.Count);
        Assert.Equal(RepAck, await client.InfoOrGoAsync(OptGo, "disk"));
        var status = await client.BlockStatusAsync(0, 8192);
        Assert.Equal(0u, status.Error);
        uint depthId = set.Contexts.Single(c => c.Name == "qemu:allocation-depth").Id;
        Assert.Equal([(8192UL, 7u)], status.Extents[depthId]);
        Assert.Equal(2, status.Extents.Count);
    }

    private sealed class DepthProvider : INbdMetaContextProvider
    {
        public string Namespace => "qemu";
        public IEnumerable<string> List(INbdExport export, string? query) =>
            query is null or "qemu:" or "qemu:allocation-depth" ? ["qemu:allocation-depth"] : [];
        public INbdMetaContext? Open(INbdExport export, string name) => name == "qemu:allocation-depth" ? new Depth() : null;
        private sealed class Depth : INbdMetaContext
        {
            public string Name => "qemu:allocation-depth";
            public int GetStatus(long offset, long length, Span<NbdStatusExtent> destination)
            {
                destination[0] = new NbdStatusExtent(length, 7);
                return 1;
            }
        }
    }

    [Fact]
    public async Task TooManyOptions_CloseConnection()
    {
        await using var server = await TestServer.StartDefaultAsync();
        await using var client = await server.ConnectAsync();
        bool closed = false;
        for (int i = 0; i < NbdLimits.OptionsPerConnectionMax + 5 && !closed; i++)
        {
            try
            {
                await client.SendOptionAsync(99, []);
                await client.ReadOptionReplyAsync();
            }
            catch (Exception e) when (e is EndOfStreamException or IOException)
            {
                closed = true;
            }
        }
        Assert.True(closed);
    }
}
