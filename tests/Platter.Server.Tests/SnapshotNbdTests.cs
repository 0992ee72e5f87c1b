using System.Buffers.Binary;
using System.Text;
using Platter.Server.Api;
using Xunit;
using C = Platter.Testing.NbdTestClient;

namespace Platter.Server.Tests;

/// <summary>
/// Snapshots over NBD: <c>VOL@SNAP</c> exports (read-only, listed), and the qemu metadata contexts
/// <c>qemu:dirty-bitmap:SNAP</c> and <c>qemu:allocation-depth</c> read through BLOCK_STATUS with compact (structured)
/// and extended replies.
/// </summary>
public class SnapshotNbdTests
{
    private const int Block = 4096;
    private const long Size = 1 << 20;
    private const uint EPERM = 1;
    private const string DirtyS1 = "qemu:dirty-bitmap:s1";
    private const string Depth = "qemu:allocation-depth";

    private static Task<RunningHost> StartAsync() => RunningHost.StartAsync(dir => new PlatterHostOptions
    {
        StoreDirectory = dir.Combine("store"),
        ApiSocketPath = dir.Combine("api.sock"),
        NbdSocketPath = dir.Combine("nbd.sock"),
    });

    private static string NbdSocket(RunningHost server) => server.Directory.Combine("nbd.sock");

    private static byte[] Pattern(byte seed, int length = Block) => SnapshotApiTests.Pattern(seed, length);

    [Fact]
    public async Task SnapshotExportHoldsTheOldContentAndRefusesWrites()
    {
        await using var server = await StartAsync();
        using var api = server.Client();
        await api.CreateVolumeAsync("vm1", Size);

        await using (var live = await C.ConnectUnixAsync(NbdSocket(server)))
        {
            Assert.Equal(C.RepAck, await live.StructuredReplyAsync());
            Assert.Equal(C.RepAck, await live.InfoOrGoAsync(C.OptGo, "vm1"));
            // Acknowledged but not flushed: a snapshot taken now still contains it.
            Assert.Equal(0u, await live.WriteAsync(8192, Pattern(1)));
            await api.CreateSnapshotAsync("vm1", "s1");
            Assert.Equal(0u, await live.WriteAsync(8192, Pattern(2)));
            await api.ResizeVolumeAsync("vm1", 2 * Size);
        }

        await using var snap = await C.ConnectUnixAsync(NbdSocket(server));
        Assert.Equal(C.RepAck, await snap.StructuredReplyAsync());
        Assert.Equal(C.RepAck, await snap.InfoOrGoAsync(C.OptGo, "vm1@s1"));
        Assert.True((snap.Info!.Flags & C.TxReadOnly) != 0, $"NBD_FLAG_READ_ONLY missing from 0x{snap.Info.Flags:x4}");
        Assert.Equal(Size, snap.Info.Size);

        var read = await snap.ReadAsync(8192, Block);
        Assert.Equal(0u, read.Error);
        Assert.Equal(Pattern(1), read.Data);

        Assert.Equal(EPERM, await snap.WriteAsync(8192, Pattern(3)));
        Assert.Equal(EPERM, await snap.CommandAsync(C.CmdTrim, 0, 8192, Block));
        Assert.Equal(EPERM, await snap.CommandAsync(C.CmdWriteZeroes, 0, 8192, Block));
        Assert.Equal(0u, await snap.FlushAsync());
        Assert.Equal(Pattern(1), (await snap.ReadAsync(8192, Block)).Data);
        Assert.Equal(Pattern(2), SnapshotApiTests.Read(server, "vm1", 8192, Block));

        // A client that only knows NBD_OPT_EXPORT_NAME gets the same read-only export.
        await using var old = await NbdTestClient.ConnectWithExportNameAsync(NbdSocket(server), "vm1@s1");
        Assert.True((old.TransmissionFlags & NbdTestClient.TxReadOnly) != 0);
        Assert.Equal(EPERM, (await old.RequestAsync(NbdTestClient.CmdWrite, 0, Block, new byte[Block])).Error);
    }

    [Fact]
    public async Task ExportListIncludesSnapshotsAndUnknownNamesStayUnknown()
    {
        await using var server = await StartAsync();
        using var api = server.Client();
        await api.CreateVolumeAsync("vm1", Size);
        await api.CreateSnapshotAsync("vm1", "s1");
        await api.CreateVolumeAsync("db", Size);

        await using var client = await C.ConnectUnixAsync(NbdSocket(server));
        var replies = await client.OptionAsync(C.OptList);
        Assert.Equal(C.RepAck, replies[^1].Type);
        var names = replies.Where(r => r.Type == C.RepServer)
            .Select(r => Encoding.UTF8.GetString(r.Data.AsSpan(4, (int)BinaryPrimitives.ReadUInt32BigEndian(r.Data))))
            .Order(StringComparer.Ordinal).ToArray();
        Assert.Equal(["db", "vm1", "vm1@s1"], names);

        foreach (var unknown in new[] { "vm1@nope", "ghost@s1", "vm1@", "@s1", "vm1@s1@s1", "db@s1" })
            Assert.True(await client.InfoOrGoAsync(C.OptInfo, unknown) == C.ErrUnknown, unknown);
        Assert.Equal(C.RepAck, await client.InfoOrGoAsync(C.OptInfo, "vm1@s1"));
        Assert.Equal("vm1@s1", client.Info!.Name ?? "vm1@s1");
    }

    [Fact]
    public async Task QemuContextsAreListedPerExport()
    {
        await using var server = await StartAsync();
        using var api = server.Client();
        await api.CreateVolumeAsync("vm1", Size);
        await api.CreateSnapshotAsync("vm1", "s1");
        await api.CreateSnapshotAsync("vm1", "s2");

        await using var client = await C.ConnectUnixAsync(NbdSocket(server));
        Assert.Equal(C.RepAck, await client.StructuredReplyAsync());

        async Task<string[]> List(string export, params string[] queries)
        {
            var (final, contexts) = await client.MetaContextAsync(C.OptListMetaContext, export, queries);
            Assert.Equal(C.RepAck, final);
            Assert.All(contexts, c => Assert.Equal(0u, c.Id));
            return contexts.Select(c => c.Name).Order(StringComparer.Ordinal).ToArray();
        }

        Assert.Equal([Depth, DirtyS1, "qemu:dirty-bitmap:s2"], await List("vm1", "qemu:"));
        Assert.Equal([DirtyS1, "qemu:dirty-bitmap:s2"], await List("vm1", "qemu:dirty-bitmap:"));
        Assert.Equal(["base:allocation", Depth, DirtyS1, "qemu:dirty-bitmap:s2"], await List("vm1"));
        Assert.Equal([Depth], await List("vm1", Depth));
        Assert.Equal([DirtyS1], await List("vm1", DirtyS1));
        Assert.Empty(await List("vm1", "qemu:dirty-bitmap:nope", "qemu:nope"));
        // A snapshot can only be compared with older snapshots.
        Assert.Equal([DirtyS1], await List("vm1@s2", "qemu:dirty-bitmap:"));
        Assert.Equal([Depth], await List("vm1@s1", "qemu:"));

        var (setFinal, selected) = await client.MetaContextAsync(C.OptSetMetaContext, "vm1", "qemu:dirty-bitmap:nope", "qemu:dirty-bitmap:s2", Depth);
        Assert.Equal(C.RepAck, setFinal);
        Assert.Equal(new List<(uint, string)> { (1u, "qemu:dirty-bitmap:s2"), (2u, Depth) }, selected);

        var (unknownFinal, _) = await client.MetaContextAsync(C.OptListMetaContext, "vm1@nope", "qemu:");
        Assert.Equal(C.ErrUnknown, unknownFinal);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task BlockStatusReportsDirtyRangesAndAllocationDepth(bool extendedHeaders)
    {
        await using var server = await StartAsync();
        using var api = server.Client();
        await api.CreateVolumeAsync("vm1", Size);
        SnapshotApiTests.Write(server, "vm1", 0, Pattern(1));
        SnapshotApiTests.Write(server, "vm1", 65536, Pattern(2));
        await api.CreateSnapshotAsync("vm1", "s1");
        SnapshotApiTests.Write(server, "vm1", 65536, Pattern(3));
        SnapshotApiTests.Write(server, "vm1", 131072, Pattern(4, 2 * Block));
        await api.CreateSnapshotAsync("vm1", "s2");
        using (var v = server.Host.EmbeddedStore().OpenVolume("vm1")) v.Trim(0, Block);

        var (live, ids) = await OpenAsync(server, "vm1", extendedHeaders, "base:allocation", DirtyS1, Depth);
        await using (live)
        {
            // Changed since s1: block 0 (trimmed), 64 KiB (overwritten), 128 KiB..136 KiB (new).
            Assert.Equal(E((Block, 1u), (60 * 1024, 0u), (Block, 1u), (60 * 1024, 0u), (2 * Block, 1u), (Size - 136 * 1024, 0u)),
                await StatusAsync(live, ids[DirtyS1]));
            // A plain volume's data is its own (depth 1); trimmed and never written ranges are unallocated (0).
            Assert.Equal(E((64 * 1024, 0u), (Block, 1u), (60 * 1024, 0u), (2 * Block, 1u), (Size - 136 * 1024, 0u)),
                await StatusAsync(live, ids[Depth]));
            Assert.Equal(E((64 * 1024, 3u), (Block, 0u), (60 * 1024, 3u), (2 * Block, 0u), (Size - 136 * 1024, 3u)),
                await StatusAsync(live, ids["base:allocation"]));
            // REQ_ONE asks for a single descriptor per context.
            var (error, one, _) = await live.BlockStatusAsync(0, Size, C.FlagReqOne);
            Assert.Equal(0u, error);
            Assert.Equal(new List<(ulong, uint)> { ((ulong)Block, 1u) }, one[ids[DirtyS1]]);
        }

        // On the s2 snapshot export, s1 is older: the bitmap shows what changed between them.
        var (snap, snapIds) = await OpenAsync(server, "vm1@s2", extendedHeaders, DirtyS1, Depth);
        await using (snap)
        {
            Assert.Equal(E((64 * 1024, 0u), (Block, 1u), (60 * 1024, 0u), (2 * Block, 1u), (Size - 136 * 1024, 0u)),
                await StatusAsync(snap, snapIds[DirtyS1]));
            Assert.Equal(E((Block, 1u), (60 * 1024, 0u), (Block, 1u), (60 * 1024, 0u), (2 * Block, 1u), (Size - 136 * 1024, 0u)),
                await StatusAsync(snap, snapIds[Depth]));
        }

        // A clone's data comes from its origin snapshot (depth 2) until it writes its own (depth 1).
        await api.CloneSnapshotAsync("vm1", "s1", "c1");
        SnapshotApiTests.Write(server, "c1", 262144, Pattern(5));
        var (clone, cloneIds) = await OpenAsync(server, "c1", extendedHeaders, Depth);
        await using (clone)
        {
            Assert.Equal(E((Block, 2u), (60 * 1024, 0u), (Block, 2u), (188 * 1024, 0u), (Block, 1u), (Size - 260 * 1024, 0u)),
                await StatusAsync(clone, cloneIds[Depth]));
        }
    }

    [Fact]
    public async Task RollbackWithConnectedClientsIsRefusedUnlessForcedAndThenSeenByThem()
    {
        await using var server = await StartAsync();
        using var api = server.Client();
        await api.CreateVolumeAsync("vm1", Size);
        await using var client = await C.ConnectUnixAsync(NbdSocket(server));
        Assert.Equal(C.RepAck, await client.StructuredReplyAsync());
        Assert.Equal(C.RepAck, await client.InfoOrGoAsync(C.OptGo, "vm1"));
        Assert.Equal(0u, await client.WriteAsync(0, Pattern(1)));
        await api.CreateSnapshotAsync("vm1", "s1");
        Assert.Equal(0u, await client.WriteAsync(0, Pattern(2)));
        Assert.Equal(Pattern(2), (await client.ReadAsync(0, Block)).Data);

        // A connected client refuses the rollback: its content would change under it.
        var refused = await Assert.ThrowsAsync<PlatterApiException>(() => api.RollbackAsync("vm1", "s1"));
        Assert.Equal((409, "clients_connected"), (refused.StatusCode, refused.Code));
        Assert.Contains($"unix pid {Environment.ProcessId}", refused.Message);
        Assert.Equal(Pattern(2), (await client.ReadAsync(0, Block)).Data);

        await api.RollbackAsync("vm1", "s1", recursive: false, force: true);
        Assert.Equal(Pattern(1), (await client.ReadAsync(0, Block)).Data);
    }

    [Fact]
    public async Task DeletingTheSnapshotOfASelectedBitmapFailsThatRequestOnly()
    {
        await using var server = await StartAsync();
        using var api = server.Client();
        await api.CreateVolumeAsync("vm1", Size);
        await api.CreateSnapshotAsync("vm1", "s1");
        SnapshotApiTests.Write(server, "vm1", 0, Pattern(1));

        var (client, ids) = await OpenAsync(server, "vm1", extendedHeaders: false, DirtyS1);
        await using (client)
        {
            Assert.Equal(E((Block, 1u), (Size - Block, 0u)), await StatusAsync(client, ids[DirtyS1]));
            await api.DeleteSnapshotAsync("vm1", "s1");
            // Nothing left to compare with: an error for the request, not a wrong answer or a dropped connection.
            var (error, _, _) = await client.BlockStatusAsync(0, Size);
            Assert.Equal(5u, error);
            var read = await client.ReadAsync(0, Block);
            Assert.Equal(0u, read.Error);
            Assert.Equal(Pattern(1), read.Data);
        }
    }

    [Fact]
    public async Task NbdinfoReadsTheDirtyBitmapAndAllocationDepth()
    {
        await using var server = await StartAsync();
        using var api = server.Client();
        await api.CreateVolumeAsync("vm1", Size);
        SnapshotApiTests.Write(server, "vm1", 0, Pattern(1));
        await api.CreateSnapshotAsync("vm1", "s1");
        SnapshotApiTests.Write(server, "vm1", 65536, Pattern(2, 2 * Block));
        await api.CloneSnapshotAsync("vm1", "s1", "c1");

        var uri = $"nbd+unix:///vm1?socket={NbdSocket(server)}";
        // Block 0 was written before s1 (clean); 64 KiB..72 KiB after it (dirty).
        Assert.Equal("0 65536 0\n65536 8192 1\n73728 974848 0\n", await NbdinfoMapAsync(DirtyS1, uri));
        // The clone has only what it inherited from s1: depth 2.
        Assert.Equal("0 4096 2\n4096 1044480 0\n", await NbdinfoMapAsync(Depth, $"nbd+unix:///c1?socket={NbdSocket(server)}"));
    }

    /// <summary>nbdinfo --map=CONTEXT as "offset length type" lines (libnbd's own client, not ours).</summary>
    private static async Task<string> NbdinfoMapAsync(string context, string uri)
    {
        var start = new System.Diagnostics.ProcessStartInfo("nbdinfo") { RedirectStandardOutput = true, RedirectStandardError = true };
        start.ArgumentList.Add("--map=" + context);
        start.ArgumentList.Add(uri);
        using var process = System.Diagnostics.Process.Start(start)!;
        using var deadline = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        var output = process.StandardOutput.ReadToEndAsync(deadline.Token);
        var error = process.StandardError.ReadToEndAsync(deadline.Token);
        await process.WaitForExitAsync(deadline.Token);
        Assert.True(process.ExitCode == 0, $"nbdinfo exit {process.ExitCode}: {await error}");
        var lines = (await output).Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries))
            .Select(f => $"{f[0]} {f[1]} {f[2]}\n");
        return string.Concat(lines);
    }

    private static (long Length, uint Flags)[] E(params (long Length, uint Flags)[] descriptors) => descriptors;

    private static async Task<(C Client, Dictionary<string, uint> Ids)> OpenAsync(RunningHost server, string export, bool extendedHeaders,
        params string[] contexts)
    {
        var client = await C.ConnectUnixAsync(NbdSocket(server));
        try
        {
            Assert.Equal(C.RepAck, extendedHeaders ? await client.ExtendedHeadersAsync() : await client.StructuredReplyAsync());
            var (final, selected) = await client.MetaContextAsync(C.OptSetMetaContext, export, contexts);
            Assert.Equal(C.RepAck, final);
            Assert.Equal(contexts, selected.Select(s => s.Name).ToArray());
            Assert.Equal(C.RepAck, await client.InfoOrGoAsync(C.OptGo, export));
            return (client, selected.ToDictionary(s => s.Name, s => s.Id));
        }
        catch
        {
            await client.DisposeAsync();
            throw;
        }
    }

    /// <summary>
    /// The whole export's descriptors for one context, asking again from where each reply stopped as real clients do,
    /// with neighbours of equal flags merged.
    /// </summary>
    private static async Task<(long Length, uint Flags)[]> StatusAsync(C client, uint contextId)
    {
        var list = new List<(long Length, uint Flags)>();
        long offset = 0;
        while (offset < Size)
        {
            var (error, extents, _) = await client.BlockStatusAsync(offset, Size - offset);
            Assert.Equal(0u, error);
            Assert.True(extents.TryGetValue(contextId, out var descriptors), $"no reply for context {contextId}");
            Assert.NotEmpty(descriptors);
            foreach (var (length, flags) in descriptors)
            {
                Assert.True(length > 0, "zero-length descriptor");
                if (list.Count > 0 && list[^1].Flags == flags) list[^1] = (list[^1].Length + (long)length, flags);
                else list.Add(((long)length, flags));
                offset += (long)length;
            }
        }
        Assert.Equal(Size, offset);
        return [.. list];
    }
}
