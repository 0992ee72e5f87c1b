using System.Buffers.Binary;
using static Platter.Testing.NbdTestClient;

namespace Platter.Nbd.Tests;

public class TransmissionTests
{
    private const uint EPERM = 1, EIO = 5, EINVAL = 22, ENOSPC = 28, EOVERFLOW = 75, ENOTSUP = 95;

    private static byte[] Pattern(int length, byte seed)
    {
        byte[] b = new byte[length];
        for (int i = 0; i < length; i++) b[i] = (byte)(seed + i * 7);
        return b;
    }

    [Fact]
    public async Task StructuredRead_SkipsHolesWithOffsetHoleChunks()
    {
        await using var server = await TestServer.StartDefaultAsync();
        var disk = server.Exports["disk"];
        disk.Fill(4096, Pattern(4096, 1));
        disk.Fill(65536, Pattern(100, 2));
        await using var client = await server.OpenAsync();
        Assert.True((client.Info!.Flags & TxSendDf) != 0);

        var read = await client.ReadAsync(0, 128 * 1024);
        Assert.Equal(0u, read.Error);
        byte[] expected = new byte[128 * 1024];
        Pattern(4096, 1).CopyTo(expected, 4096);
        Pattern(100, 2).CopyTo(expected, 65536);
        Assert.Equal(expected, read.Data);

        var holes = read.Chunks.Where(c => c.Type == ReplyOffsetHole)
            .Select(c => (BinaryPrimitives.ReadUInt64BigEndian(c.Payload), BinaryPrimitives.ReadUInt32BigEndian(c.Payload.AsSpan(8)))).ToList();
        Assert.Equal([(0UL, 4096u), (8192UL, 65536u - 8192), (65536UL + 4096, 128u * 1024 - 65536 - 4096)], holes);
        Assert.Equal(2, read.Chunks.Count(c => c.Type == ReplyOffsetData));
        Assert.Equal(1, read.Chunks.Count(c => (c.Flags & 1) != 0));
        Assert.True((read.Chunks[^1].Flags & 1) != 0);
    }

    [Fact]
    public async Task StructuredRead_OnAnExportWithoutSparseReads_IsOneDataChunkWithoutAnAllocationLookup()
    {
        await using var server = await TestServer.StartDefaultAsync();
        var disk = server.Exports["disk"];
        disk.SparseReads = false;
        disk.Fill(4096, Pattern(4096, 5));
        await using var client = await server.OpenAsync();

        var read = await client.ReadAsync(0, 64 * 1024);
        Assert.Equal(0u, read.Error);
        byte[] expected = new byte[64 * 1024];
        Pattern(4096, 5).CopyTo(expected, 4096);
        Assert.Equal(expected, read.Data);
        var chunk = Assert.Single(read.Chunks);
        Assert.Equal(ReplyOffsetData, chunk.Type);
        Assert.True((chunk.Flags & 1) != 0);
        Assert.Equal(0, disk.AllocationQueries);
    }

    [Fact]
    public async Task DfRead_IsOneContentChunk()
    {
        await using var server = await TestServer.StartDefaultAsync();
        var disk = server.Exports["disk"];
        disk.Fill(4096, Pattern(4096, 3));
        await using var client = await server.OpenAsync();

        var mixed = await client.ReadAsync(0, 16384, FlagDf);
        Assert.Equal(0u, mixed.Error);
        var chunk = Assert.Single(mixed.Chunks);
        Assert.Equal(ReplyOffsetData, chunk.Type);
        Assert.Equal(16384 + 8, chunk.Payload.Length);
        Assert.Equal(Pattern(4096, 3), mixed.Data[4096..8192]);

        var hole = await client.ReadAsync(65536, 8192, FlagDf);
        Assert.Equal(ReplyOffsetHole, Assert.Single(hole.Chunks).Type);
        Assert.Equal(new byte[8192], hole.Data);
    }

    [Fact]
    public async Task SimpleReplies_WithoutStructuredNegotiation()
    {
        await using var server = await TestServer.StartDefaultAsync();
        await using var client = await server.OpenAsync(structured: false);
        Assert.Equal(0u, await client.WriteAsync(1000, Pattern(5000, 9)));
        var read = await client.ReadAsync(1000, 5000);
        Assert.True(Assert.Single(read.Chunks).Simple);
        Assert.Equal(Pattern(5000, 9), read.Data);
        // DF is not allowed without structured replies.
        Assert.Equal(EINVAL, (await client.ReadAsync(0, 512, FlagDf)).Error);
        // Block status needs negotiated contexts.
        Assert.Equal(EINVAL, (await client.CommandAsync(CmdBlockStatus, 0, 0, 4096)));
    }

    [Fact]
    public async Task BlockStatus_ReportsAllocation_AndReqOneReturnsOneExtent()
    {
        await using var server = await TestServer.StartDefaultAsync();
        var disk = server.Exports["disk"];
        disk.Fill(8192, Pattern(8192, 4));
        await using var client = await server.OpenAsync(meta: true);

        var status = await client.BlockStatusAsync(0, 65536);
        Assert.Equal(0u, status.Error);
        var extents = Assert.Single(status.Extents).Value;
        Assert.Equal([(8192UL, 3u), (8192UL, 0u), (49152UL, 3u)], extents);

        var one = await client.BlockStatusAsync(0, 65536, FlagReqOne);
        Assert.Equal([(8192UL, 3u)], Assert.Single(one.Extents).Value);
        var oneShort = await client.BlockStatusAsync(8192, 100, FlagReqOne);
        Assert.Equal([(100UL, 0u)], Assert.Single(oneShort.Extents).Value);

        Assert.Equal(EINVAL, (await client.BlockStatusAsync((4 << 20) - 100, 4096)).Error);
        Assert.Equal(EINVAL, (await client.BlockStatusAsync(0, 4096, FlagDf)).Error);
    }

    [Fact]
    public async Task BlockStatus_ForAnotherExportThanNegotiated_IsInvalid()
    {
        await using var server = await TestServer.StartDefaultAsync();
        await using var client = await server.ConnectAsync();
        await client.StructuredReplyAsync();
        Assert.Single((await client.MetaContextAsync(OptSetMetaContext, "ro", "base:allocation")).Contexts);
        Assert.Equal(RepAck, await client.InfoOrGoAsync(OptGo, "disk"));
        Assert.Equal(EINVAL, (await client.BlockStatusAsync(0, 4096)).Error);
    }

    [Fact]
    public async Task ExtendedHeaders_64BitLengths_AndBlockStatusExt()
    {
        const long size = 8L << 30; // sparse: nothing is allocated until written
        var big = new MemoryExport("big", size);
        await using var server = await TestServer.StartAsync(new MemoryExportProvider(big));
        await using var client = await server.ConnectAsync();
        Assert.Equal(RepAck, await client.ExtendedHeadersAsync());
        Assert.Equal(ErrExtHeaderReqd, (await client.OptionAsync(OptStructuredReply)).Single().Type);
        Assert.Equal(ErrInvalid, (await client.OptionAsync(OptExtendedHeaders)).Single().Type);
        Assert.Single((await client.MetaContextAsync(OptSetMetaContext, "big", "base:allocation")).Contexts);
        Assert.Equal(RepAck, await client.InfoOrGoAsync(OptGo, "big"));

        long far = (5L << 30) + 4096;
        Assert.Equal(0u, await client.WriteAsync(far, Pattern(8192, 5)));
        var read = await client.ReadAsync(far - 4096, 16384);
        Assert.Equal(0u, read.Error);
        Assert.All(read.Chunks, c => Assert.Equal((ulong)(far - 4096), c.Offset)); // extended replies echo the request offset
        Assert.Equal(Pattern(8192, 5), read.Data[4096..12288]);

        // Status over more than 4 GiB in one request, answered with 64-bit extents.
        var status = await client.BlockStatusAsync(0, size);
        Assert.Equal(0u, status.Error);
        var extents = Assert.Single(status.Extents).Value;
        Assert.Equal([((ulong)far, 3u), (8192UL, 0u), ((ulong)(size - far - 8192), 3u)], extents);
        Assert.Equal(ReplyBlockStatusExt, status.Chunks.Single().Type);

        // Trim and zero with effect lengths beyond 32 bits.
        ulong cookie = client.NextCookie();
        await client.SendRequestAsync(CmdTrim, 0, cookie, 0, (ulong)(6L << 30));
        Assert.Equal(0u, ErrorOf(await client.ReadReplyAsync(cookie)));
        Assert.Equal(0, big.AllocatedPages);
        cookie = client.NextCookie();
        await client.SendRequestAsync(CmdWriteZeroes, FlagFastZero, cookie, 0, (ulong)size);
        Assert.Equal(0u, ErrorOf(await client.ReadReplyAsync(cookie)));

        // Success without payload is an extended NONE chunk, never a simple reply.
        cookie = client.NextCookie();
        await client.SendRequestAsync(CmdFlush, 0, cookie, 0, 0);
        var flush = Assert.Single(await client.ReadReplyAsync(cookie));
        Assert.False(flush.Simple);
        Assert.Equal(ReplyNone, flush.Type);

        // A write without PAYLOAD_LEN carries no data in extended mode and is invalid; the stream stays in sync.
        Assert.Equal(EINVAL, await client.CommandAsync(CmdWrite, 0, 0, 4096));
        // A payload on a command that takes none is consumed and refused.
        Assert.Equal(EINVAL, await client.CommandAsync(CmdCache, FlagPayloadLen, 0, 3, [1, 2, 3]));
        Assert.Equal(0u, await client.FlushAsync());
    }

    [Fact]
    public async Task ExportName_AfterExtendedHeaders_ClosesConnection()
    {
        await using var server = await TestServer.StartDefaultAsync();
        await using var client = await server.ConnectAsync();
        Assert.Equal(RepAck, await client.ExtendedHeadersAsync());
        await client.SendOptionAsync(OptExportName, "disk"u8.ToArray());
        Assert.True(await client.IsClosedByServerAsync());
    }

    [Fact]
    public async Task Flush_WaitsForEarlierWrites()
    {
        await using var server = await TestServer.StartDefaultAsync();
        var disk = server.Exports["disk"];
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        disk.WriteGate = offset => offset == 0 ? release.Task : Task.CompletedTask;
        await using var client = await server.OpenAsync();

        ulong write = client.NextCookie(), flush = client.NextCookie(), probe = client.NextCookie();
        await client.SendRequestAsync(CmdWrite, 0, write, 0, 4096, Pattern(4096, 6));
        await client.SendRequestAsync(CmdFlush, 0, flush, 0, 0);
        await client.SendRequestAsync(CmdRead, 0, probe, 65536, 512);
        // Requests are served concurrently: the read overtakes the blocked write and the flush.
        var first = await client.ReadChunkAsync();
        Assert.Equal(probe, first.Cookie);
        Assert.Equal(0, disk.FlushCount);

        release.SetResult();
        var replies = new Dictionary<ulong, Chunk>();
        while (replies.Count < 2)
        {
            var c = await client.ReadChunkAsync();
            replies[c.Cookie] = c;
        }
        Assert.Equal(0u, ErrorOf([replies[write]]));
        Assert.Equal(0u, ErrorOf([replies[flush]]));
        Assert.Equal(["write 0", "flush"], disk.Events);
        Assert.False(disk.FlushSawWriteInProgress);
    }

    [Fact]
    public async Task ReadOnlyExport_RefusesWritesWithEperm()
    {
        await using var server = await TestServer.StartDefaultAsync();
        await using var client = await server.OpenAsync("ro");
        Assert.True((client.Info!.Flags & TxReadOnly) != 0);
        Assert.Equal(EPERM, await client.WriteAsync(0, new byte[512]));
        Assert.Equal(EPERM, await client.CommandAsync(CmdTrim, 0, 0, 4096));
        Assert.Equal(EPERM, await client.CommandAsync(CmdWriteZeroes, 0, 0, 4096));
        Assert.Equal(0u, await client.FlushAsync());
        Assert.Equal(0u, (await client.ReadAsync(0, 4096)).Error);
        Assert.Equal(0, server.Exports["ro"].AllocatedPages);
    }

    [Fact]
    public async Task OutOfRange_IsEinval_WritePastEndIsEnospc()
    {
        await using var server = await TestServer.StartDefaultAsync();
        await using var client = await server.OpenAsync();
        long size = client.Info!.Size;
        Assert.Equal(EINVAL, (await client.ReadAsync(size - 10, 20)).Error);
        Assert.Equal(EINVAL, (await client.ReadAsync(size + 1, 0)).Error);
        Assert.Equal(ENOSPC, await client.WriteAsync(size - 1, [1, 2]));
        Assert.Equal(ENOSPC, await client.CommandAsync(CmdWriteZeroes, 0, size, 1));
        Assert.Equal(EINVAL, await client.CommandAsync(CmdTrim, 0, long.MaxValue, 1));
        Assert.Equal(EINVAL, await client.CommandAsync(CmdCache, 0, size, 4096));
        Assert.Equal(0u, (await client.ReadAsync(size - 10, 10)).Error);
        // Zero-length read at the very end is fine.
        Assert.Equal(0u, (await client.ReadAsync(size, 0)).Error);
    }

    [Fact]
    public async Task UnknownCommandAndBadFlags_AreEinval_ConnectionStaysUsable()
    {
        await using var server = await TestServer.StartDefaultAsync();
        await using var client = await server.OpenAsync();
        Assert.Equal(EINVAL, await client.CommandAsync(99, 0, 0, 0));
        Assert.Equal(EINVAL, await client.CommandAsync(8, 0, 0, 0));
        Assert.Equal(EINVAL, (await client.ReadAsync(0, 512, FlagReqOne)).Error);
        Assert.Equal(EINVAL, await client.CommandAsync(CmdTrim, FlagNoHole, 0, 4096));
        Assert.Equal(EINVAL, await client.CommandAsync(CmdFlush, 0, 4096, 0));
        Assert.Equal(EINVAL, await client.CommandAsync(CmdFlush, 0x4000, 0, 0));
        // A refused write's payload is still consumed.
        Assert.Equal(EINVAL, await client.CommandAsync(CmdWrite, FlagDf, 0, 3, [1, 2, 3]));
        Assert.Equal(0u, await client.WriteAsync(0, [4, 5, 6]));
        Assert.Equal(new byte[] { 4, 5, 6 }, (await client.ReadAsync(0, 3)).Data);
    }

    [Fact]
    public async Task OversizedRead_IsEinvalOrEoverflowWithDf()
    {
        await using var server = await TestServer.StartAsync(new MemoryExportProvider(new MemoryExport("disk", 1L << 30)));
        await using var client = await server.OpenAsync();
        Assert.Equal(EINVAL, (await client.ReadAsync(0, 64 << 20)).Error);
        Assert.Equal(EOVERFLOW, (await client.ReadAsync(0, 64 << 20, FlagDf)).Error);
        Assert.Equal(0u, (await client.ReadAsync(0, 32 << 20)).Error);
    }

    [Fact]
    public async Task WritePayloadPastTheDiscardLimit_ClosesConnection_OtherConnectionsUnaffected()
    {
        await using var server = await TestServer.StartDefaultAsync();
        await using var other = await server.OpenAsync();
        await using var client = await server.OpenAsync();
        // Up to the discard limit an over-size write is read, thrown away and answered EINVAL (GreedyClientTests);
        // past it the connection is closed, and only that one.
        await client.SendRequestAsync(CmdWrite, 0, 1, 0, (ulong)NbdLimits.WritePayloadDiscardBytesMax + 1);
        Assert.True(await client.IsClosedByServerAsync());
        Assert.Equal(0u, await other.WriteAsync(0, [1]));
    }

    [Fact]
    public async Task BadRequestMagic_ClosesConnection()
    {
        await using var server = await TestServer.StartDefaultAsync();
        await using var client = await server.OpenAsync(extended: false);
        await client.SendRequestAsync(CmdRead, 0, 1, 0, 512, extended: true);
        Assert.True(await client.IsClosedByServerAsync());
    }

    [Fact]
    public async Task WriteZeroes_FastZeroAndNoHole()
    {
        await using var server = await TestServer.StartDefaultAsync();
        var disk = server.Exports["disk"];
        await using var client = await server.OpenAsync();
        Assert.Equal(0u, await client.WriteAsync(0, Pattern(16384, 7)));
        Assert.Equal(ENOTSUP, await client.CommandAsync(CmdWriteZeroes, FlagFastZero, 100, 4096));
        Assert.Equal(Pattern(16384, 7), (await client.ReadAsync(0, 16384)).Data);
        Assert.Equal(0u, await client.CommandAsync(CmdWriteZeroes, FlagFastZero, 0, 8192));
        Assert.Equal(2, disk.AllocatedPages);
        Assert.Equal(0u, await client.CommandAsync(CmdWriteZeroes, FlagNoHole | FlagFua, 8192, 8192));
        Assert.Equal(2, disk.AllocatedPages);
        Assert.Equal(new byte[16384], (await client.ReadAsync(0, 16384)).Data);
        Assert.Equal(0u, await client.CommandAsync(CmdTrim, 0, 8192, 8192));
        Assert.Equal(0, disk.AllocatedPages);
        Assert.Equal(0u, await client.CommandAsync(CmdCache, 0, 0, 8192));
    }

    [Fact]
    public async Task ExportExceptions_MapToNbdErrors()
    {
        await using var server = await TestServer.StartDefaultAsync();
        var disk = server.Exports["disk"];
        disk.Fill(0, Pattern(8192, 8));
        disk.ReadFault = offset => offset switch
        {
            0 => new NbdErrorException(NbdError.NoSpace, "custom"),
            4096 => new InvalidOperationException("bug"),
            _ => null,
        };
        await using var client = await server.OpenAsync();
        var r1 = await client.ReadAsync(0, 512);
        Assert.Equal(ENOSPC, r1.Error);
        var r2 = await client.ReadAsync(4096, 512);
        Assert.Equal(EIO, r2.Error);
        Assert.Contains(server.Logger.Errors, e => e.Contains("bug"));
        await using var simple = await server.OpenAsync(structured: false);
        Assert.Equal(EIO, (await simple.ReadAsync(4096, 512)).Error);
        Assert.Equal(0u, await simple.FlushAsync()); // still in sync after an error without payload
    }

    [Theory]
    [InlineData(1 << 20, 1)]   // the whole stream in one write: payloads arrive with the next requests' headers
    [InlineData(4093, 2)]      // odd pieces: payloads split anywhere, headers split across reads
    [InlineData(97, 3)]
    public async Task LargeAndSmallWrites_InOneStream_LandIntactWhateverTheReadBoundaries(int pieceBytes, int seed)
    {
        // Large payloads are read straight from the socket, small ones through the request pipe; the two must hand over
        // at the right byte however the stream arrives.
        await using var server = await TestServer.StartDefaultAsync();
        await using var client = await server.OpenAsync();
        var rng = new Random(seed);
        var expected = new byte[4 << 20];
        var stream = new List<byte>();
        var cookies = new HashSet<ulong>();
        int[] sizes = [1 << 20, 4096, 512, 200_000, 32 * 1024, 32 * 1024 - 1, 65_536, 7, 1 << 20];
        long offset = 0;
        foreach (int size in sizes)
        {
            byte[] data = new byte[size];
            rng.NextBytes(data);
            data.CopyTo(expected, offset);
            ulong cookie = client.NextCookie();
            cookies.Add(cookie);
            byte[] h = new byte[28];
            BinaryPrimitives.WriteUInt32BigEndian(h, 0x25609513u);
            BinaryPrimitives.WriteUInt16BigEndian(h.AsSpan(6), CmdWrite);
            BinaryPrimitives.WriteUInt64BigEndian(h.AsSpan(8), cookie);
            BinaryPrimitives.WriteUInt64BigEndian(h.AsSpan(16), (ulong)offset);
            BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(24), (uint)size);
            stream.AddRange(h);
            stream.AddRange(data);
            offset += size;
        }
        byte[] all = [.. stream];
        var sender = Task.Run(async () =>
        {
            for (int at = 0; at < all.Length; at += pieceBytes)
                await client.WriteAsync(all[at..Math.Min(all.Length, at + pieceBytes)]);
        });
        while (cookies.Count > 0)
        {
            var c = await client.ReadChunkAsync();
            Assert.Equal(0u, c.Error);
            Assert.True(cookies.Remove(c.Cookie), $"unexpected or repeated reply {c.Cookie}");
        }
        await sender;
        var back = await client.ReadAsync(0, (int)offset);
        Assert.Equal(0u, back.Error);
        Assert.True(expected.AsSpan(0, (int)offset).SequenceEqual(back.Data), "the export does not hold what was written");
    }

    [Fact]
    public async Task ManyConcurrentRequests_AllAnswered()
    {
        await using var server = await TestServer.StartDefaultAsync();
        await using var client = await server.OpenAsync();
        const int n = 300; // more than the in-flight bound: the server must push back, not drop
        var expected = new Dictionary<ulong, byte[]>();
        var sender = Task.Run(async () =>
        {
            for (int i = 0; i < n; i++)
            {
                byte[] data = Pattern(4096, (byte)i);
                ulong cookie = (ulong)(1000 + i);
                lock (expected) expected[cookie] = data;
                await client.SendRequestAsync(CmdWrite, 0, cookie, (ulong)i * 4096, 4096, data);
            }
        });
        var seen = new HashSet<ulong>();
        while (seen.Count < n)
        {
            var c = await client.ReadChunkAsync();
            Assert.Equal(0u, c.Error);
            Assert.True(seen.Add(c.Cookie));
        }
        await sender;
        var all = await client.ReadAsync(0, n * 4096);
        for (int i = 0; i < n; i++) Assert.Equal(expected[(ulong)(1000 + i)], all.Data[(i * 4096)..((i + 1) * 4096)]);
    }

    [Fact]
    public async Task Disconnect_FinishesInFlight_AndDisposesExport()
    {
        await using var server = await TestServer.StartDefaultAsync();
        var disk = server.Exports["disk"];
        await using var client = await server.OpenAsync();
        int disposedBefore = disk.Disposed;
        ulong cookie = client.NextCookie();
        await client.SendRequestAsync(CmdWrite, 0, cookie, 0, 4, [9, 9, 9, 9]);
        await client.DisconnectAsync();
        Assert.Equal(0u, ErrorOf(await client.ReadReplyAsync(cookie)));
        Assert.True(await client.IsClosedByServerAsync());
        for (int i = 0; i < 200 && disk.Disposed == disposedBefore; i++) await Task.Delay(10);
        Assert.Equal(disposedBefore + 1, disk.Disposed);
    }

    [Fact]
    public async Task Stop_LetsInFlightRequestFinish_ThenCloses_AndIsSafeTwice()
    {
        var server = await TestServer.StartDefaultAsync();
        var disk = server.Exports["disk"];
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        disk.WriteGate = _ => release.Task;
        var client = await server.OpenAsync();
        ulong cookie = client.NextCookie();
        await client.SendRequestAsync(CmdWrite, 0, cookie, 0, 4, [1, 2, 3, 4]);
        // A read sent after the write and answered proves the server has taken the write in (the reader is sequential).
        ulong probe = client.NextCookie();
        await client.SendRequestAsync(CmdRead, 0, probe, 8192, 512);
        Assert.Equal(probe, (await client.ReadChunkAsync()).Cookie);
        var stop1 = server.Server.StopAsync(CancellationToken.None);
        var stop2 = server.Server.StopAsync(CancellationToken.None);
        Assert.False(stop1.IsCompleted);
        release.SetResult();
        Assert.Equal(0u, ErrorOf(await client.ReadReplyAsync(cookie)));
        await stop1;
        await stop2;
        Assert.Equal(0, server.Server.ActiveConnections);
        Assert.True(await client.IsClosedByServerAsync());
        Assert.False(File.Exists(server.SocketPath));
        await client.DisposeAsync();
        await server.DisposeAsync();
    }

    [Fact]
    public async Task Stop_while_a_write_payload_is_half_sent_completes()
    {
        // Regression: the in-flight slot taken for a write whose payload never fully arrived was not given back,
        // so closing the connection (and so stopping the server) waited for it forever.
        var server = await TestServer.StartDefaultAsync();
        var client = await server.OpenAsync();
        ulong probe = client.NextCookie();
        await client.SendRequestAsync(CmdRead, 0, probe, 0, 512);
        Assert.Equal(probe, (await client.ReadChunkAsync()).Cookie);
        // Header of a 64 KiB write, then only a quarter of its data.
        var header = new byte[28];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(header, 0x25609513u);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt16BigEndian(header.AsSpan(6), CmdWrite);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64BigEndian(header.AsSpan(8), client.NextCookie());
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(24), 65536);
        await client.WriteAsync([.. header, .. new byte[16384]]);
        await Task.Delay(100); // let the server start reading the payload
        var stop = server.Server.StopAsync(CancellationToken.None);
        Assert.Same(stop, await Task.WhenAny(stop, Task.Delay(TimeSpan.FromSeconds(20))));
        Assert.Equal(0, server.Server.ActiveConnections);
        await client.DisposeAsync();
        await server.DisposeAsync();
    }
}
