using Platter.VhostUser.Internal;
using Xunit.Abstractions;

namespace Platter.VhostUser.Tests;

/// <summary>
/// The virtqueue parser against hostile drivers, over a fake guest memory region: every chain either parses into
/// segments wholly inside guest memory, or fails its request (bad address), or breaks the queue (bad structure) —
/// never an exception, never a pointer outside the region, never an endless walk.
/// </summary>
public sealed unsafe class VirtqueueTests(ITestOutputHelper output)
{
    private const ushort QueueSize = 16;
    private const int MemoryBytes = 1024 * 1024;
    private const ushort Next = SplitVirtqueue.DescNext;
    private const ushort Write = SplitVirtqueue.DescWrite;
    private const ulong IndirectTablesGpa = 512 * 1024;

    [Fact]
    public void A_well_formed_read_request_parses_into_header_data_and_status()
    {
        using var g = new FakeGuest(MemoryBytes, QueueSize);
        var q = g.CreateQueue();
        ulong b = FakeGuest.BuffersGpa;
        g.SetDescriptor(0, b, 16, Next, 1);
        g.SetDescriptor(1, b + 4096, 4096, (ushort)(Next | Write), 2);
        g.SetDescriptor(2, b + 8192, 1, Write, 0);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(g.Bytes(b, 4), VirtioBlk.TypeIn);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(g.Bytes(b + 8, 8), 42);
        g.Publish(0);

        Assert.Equal(PopResult.Popped, q.TryPop(out ushort head));
        var request = new BlkRequest();
        Assert.True(q.TryReadChain(head, request.Segments, out request.Chain));
        Assert.False(request.Chain.BadAddress);
        Assert.True(request.Chain.Status == g.Base + b + 8192);
        Assert.True(BlkQueue.TryParse(request, out uint type, out ulong sector, out int readable, out int writable, out _, out long writableBytes));
        Assert.Equal(VirtioBlk.TypeIn, type);
        Assert.Equal(42UL, sector);
        Assert.Equal(0, readable);
        Assert.Equal(1, writable);
        Assert.Equal(4096, writableBytes);
        Assert.Equal(PopResult.Empty, q.TryPop(out _));
    }

    [Fact]
    public void A_chain_in_an_indirect_table_parses_like_a_direct_one()
    {
        using var g = new FakeGuest(MemoryBytes, QueueSize);
        var q = g.CreateQueue(indirectDescriptors: true);
        ulong b = FakeGuest.BuffersGpa, table = FakeGuest.BuffersGpa + 65536;
        // The descriptor naming the table has the write flag set: the device must ignore it.
        g.SetDescriptor(0, table, 4 * 16, (ushort)(SplitVirtqueue.DescIndirect | Write), 0);
        g.SetIndirectDescriptor(table, 0, b, 16, Next, 1);
        g.SetIndirectDescriptor(table, 1, b + 4096, 4096, (ushort)(Next | Write), 3); // entries need not be in order
        g.SetIndirectDescriptor(table, 3, b + 8192, 512, (ushort)(Next | Write), 2);
        g.SetIndirectDescriptor(table, 2, b + 12288, 1, Write, 0);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(g.Bytes(b, 4), VirtioBlk.TypeIn);
        g.Publish(0);

        Assert.Equal(PopResult.Popped, q.TryPop(out ushort head));
        var request = new BlkRequest();
        Assert.True(q.TryReadChain(head, request.Segments, out request.Chain), q.BrokenReason);
        Assert.False(request.Chain.BadAddress);
        Assert.Equal(4, request.Chain.SegmentCount);
        Assert.True(request.Chain.Status == g.Base + b + 12288);
        Assert.Equal(16UL + 4096 + 512 + 1, request.Chain.Bytes);
        Assert.True(BlkQueue.TryParse(request, out uint type, out _, out _, out int writable, out _, out long writableBytes));
        Assert.Equal(VirtioBlk.TypeIn, type);
        Assert.Equal(2, writable);
        Assert.Equal(4096 + 512, writableBytes);
    }

    [Theory]
    [InlineData("nested")]
    [InlineData("indirect-and-next")]
    [InlineData("length-not-whole")]
    [InlineData("too-many")]
    [InlineData("loop-in-table")]
    [InlineData("next-past-table")]
    [InlineData("readable-after-writable")]
    public void An_indirect_table_with_a_broken_structure_breaks_the_queue(string what)
    {
        using var g = new FakeGuest(MemoryBytes, QueueSize);
        var q = g.CreateQueue(indirectDescriptors: true);
        ulong b = FakeGuest.BuffersGpa, table = FakeGuest.BuffersGpa + 65536;
        ushort indirect = SplitVirtqueue.DescIndirect;
        uint tableBytes = 3 * 16;
        g.SetIndirectDescriptor(table, 0, b, 16, Next, 1);
        g.SetIndirectDescriptor(table, 1, b + 4096, 4096, (ushort)(Next | Write), 2);
        g.SetIndirectDescriptor(table, 2, b + 8192, 1, Write, 0);
        switch (what)
        {
            case "nested": g.SetIndirectDescriptor(table, 1, table, 48, indirect, 0); break;
            case "indirect-and-next": g.SetDescriptor(0, table, tableBytes, (ushort)(indirect | Next), 1); break;
            case "length-not-whole": tableBytes = 40; break;
            case "too-many": tableBytes = 16 * (VhostUserLimits.IndirectDescriptorsMax + 1); break;
            case "loop-in-table": g.SetIndirectDescriptor(table, 2, b + 8192, 1, (ushort)(Write | Next), 1); break;
            case "next-past-table": g.SetIndirectDescriptor(table, 1, b + 4096, 4096, (ushort)(Next | Write), 3); break;
            case "readable-after-writable": g.SetIndirectDescriptor(table, 2, b + 8192, 1, 0, 0); break;
        }
        if (what != "indirect-and-next") g.SetDescriptor(0, table, tableBytes, indirect, 0);
        g.Publish(0);
        Assert.Equal(PopResult.Popped, q.TryPop(out ushort head));
        Assert.False(q.TryReadChain(head, new Segment[200], out _));
        Assert.NotNull(q.BrokenReason);
        output.WriteLine(q.BrokenReason);
    }

    [Theory]
    [InlineData(MemoryBytes - 16)] // its second descriptor lies past the end of guest memory
    [InlineData(0x4000_0000_0000UL)] // nowhere near it
    public void An_indirect_table_outside_guest_memory_fails_the_request_and_keeps_the_queue(ulong tableGpa)
    {
        using var g = new FakeGuest(MemoryBytes, QueueSize);
        var q = g.CreateQueue(indirectDescriptors: true);
        if (tableGpa < MemoryBytes) g.SetIndirectDescriptor(tableGpa, 0, FakeGuest.BuffersGpa, 16, Next, 1);
        g.SetDescriptor(0, tableGpa, 3 * 16, SplitVirtqueue.DescIndirect, 0);
        g.Publish(0);
        Assert.Equal(PopResult.Popped, q.TryPop(out ushort head));
        Assert.True(q.TryReadChain(head, new Segment[200], out var chain));
        Assert.True(chain.BadAddress);
        Assert.False(chain.HasStatus);
        Assert.Null(q.BrokenReason);
    }

    [Fact]
    public void A_looping_chain_breaks_the_queue_instead_of_spinning()
    {
        using var g = new FakeGuest(MemoryBytes, QueueSize);
        var q = g.CreateQueue();
        g.SetDescriptor(0, FakeGuest.BuffersGpa, 16, Next, 1);
        g.SetDescriptor(1, FakeGuest.BuffersGpa, 16, Next, 0);
        g.Publish(0);
        Assert.Equal(PopResult.Popped, q.TryPop(out ushort head));
        Assert.False(q.TryReadChain(head, new Segment[200], out _));
        Assert.Contains("loop", q.BrokenReason);
        Assert.Equal(PopResult.Broken, q.TryPop(out _));
    }

    [Theory]
    [InlineData("next")]
    [InlineData("indirect")]
    [InlineData("order")]
    public void A_chain_with_a_broken_structure_breaks_the_queue(string what)
    {
        using var g = new FakeGuest(MemoryBytes, QueueSize);
        var q = g.CreateQueue();
        switch (what)
        {
            case "next":
                g.SetDescriptor(0, FakeGuest.BuffersGpa, 16, Next, QueueSize);
                break;
            case "indirect":
                g.SetDescriptor(0, FakeGuest.BuffersGpa, 16, SplitVirtqueue.DescIndirect, 0);
                break;
            case "order":
                g.SetDescriptor(0, FakeGuest.BuffersGpa, 16, (ushort)(Write | Next), 1);
                g.SetDescriptor(1, FakeGuest.BuffersGpa, 16, 0, 0);
                break;
        }
        g.Publish(0);
        Assert.Equal(PopResult.Popped, q.TryPop(out ushort head));
        Assert.False(q.TryReadChain(head, new Segment[200], out _));
        Assert.NotNull(q.BrokenReason);
    }

    [Fact]
    public void An_available_index_beyond_the_queue_or_a_head_out_of_range_breaks_the_queue()
    {
        using (var g = new FakeGuest(MemoryBytes, QueueSize))
        {
            var q = g.CreateQueue();
            g.SetAvailableIndex(QueueSize + 1);
            Assert.Equal(PopResult.Broken, q.TryPop(out _));
        }
        using (var g = new FakeGuest(MemoryBytes, QueueSize))
        {
            var q = g.CreateQueue();
            g.SetAvailableEntry(0, 999);
            g.SetAvailableIndex(1);
            Assert.Equal(PopResult.Broken, q.TryPop(out _));
        }
    }

    [Theory]
    [InlineData(MemoryBytes - 8, 16u)] // runs past the end of guest memory
    [InlineData(ulong.MaxValue - 4, 64u)] // wraps around
    [InlineData(0x4000_0000_0000UL, 4096u)] // nowhere near it
    public void A_buffer_outside_guest_memory_fails_the_request_but_keeps_the_status_byte(ulong address, uint length)
    {
        using var g = new FakeGuest(MemoryBytes, QueueSize);
        var q = g.CreateQueue();
        g.SetDescriptor(0, FakeGuest.BuffersGpa, 16, Next, 1);
        g.SetDescriptor(1, address, length, (ushort)(Write | Next), 2);
        g.SetDescriptor(2, FakeGuest.BuffersGpa + 100, 1, Write, 0);
        g.Publish(0);
        Assert.Equal(PopResult.Popped, q.TryPop(out ushort head));
        Assert.True(q.TryReadChain(head, new Segment[200], out var chain));
        Assert.True(chain.BadAddress);
        Assert.True(chain.Status == g.Base + FakeGuest.BuffersGpa + 100);
        Assert.Null(q.BrokenReason);
    }

    [Fact]
    public void Rings_outside_guest_memory_or_a_bad_size_are_refused()
    {
        using var g = new FakeGuest(MemoryBytes, QueueSize);
        Assert.Null(SplitVirtqueue.Create(g.Memory, QueueSize, FakeGuest.UserBase + MemoryBytes - 8, FakeGuest.UserBase + FakeGuest.AvailableGpa,
            FakeGuest.UserBase + FakeGuest.UsedGpa, 0, out var problem));
        Assert.Contains("outside guest memory", problem);
        // Guest-physical addresses are not front-end addresses: rings are located by the latter.
        Assert.Null(SplitVirtqueue.Create(g.Memory, QueueSize, FakeGuest.DescriptorsGpa, FakeGuest.AvailableGpa, FakeGuest.UsedGpa, 0, out _));
        Assert.Null(SplitVirtqueue.Create(g.Memory, 12, FakeGuest.UserBase, FakeGuest.UserBase + FakeGuest.AvailableGpa, FakeGuest.UserBase + FakeGuest.UsedGpa, 0, out _));
        Assert.Null(SplitVirtqueue.Create(g.Memory, 65536, FakeGuest.UserBase, FakeGuest.UserBase + FakeGuest.AvailableGpa, FakeGuest.UserBase + FakeGuest.UsedGpa, 0, out _));
    }

    /// <summary>
    /// Random hostile descriptor tables and available rings (seeded; the seed is printed): whatever the parser accepts
    /// lies inside guest memory, and it never throws. Replay a failure with PLATTER_FUZZ_SEED=N.
    /// </summary>
    [Fact]
    public void Hostile_descriptor_tables_never_escape_guest_memory()
    {
        int seed = int.TryParse(Environment.GetEnvironmentVariable("PLATTER_FUZZ_SEED"), out var s) ? s : Random.Shared.Next();
        output.WriteLine($"seed {seed} (replay: PLATTER_FUZZ_SEED={seed})");
        var random = new Random(seed);
        int parsed = 0, badAddress = 0, broken = 0, throughTable = 0;
        for (int round = 0; round < 600; round++)
        {
            using var g = new FakeGuest(MemoryBytes, QueueSize);
            // Odd rounds negotiate indirect descriptors; some descriptors then name a random table of random entries.
            bool indirect = round % 2 == 1;
            var q = g.CreateQueue(indirect);
            if (indirect)
            {
                for (int i = 0; i < 64; i++)
                {
                    ulong address = FakeGuest.BuffersGpa + (ulong)random.Next(0, 4096);
                    uint length = random.Next(3) == 0 ? uint.MaxValue - (uint)random.Next(0, 16) : (uint)random.Next(0, 8192);
                    // Mostly plain entries (a nested indirect one breaks the queue at once), next mostly inside a table.
                    ushort flags = (ushort)(random.Next(8) == 0 ? random.Next(0, 8) : random.Next(0, 4));
                    g.SetIndirectDescriptor(IndirectTablesGpa, i, random.Next(6) == 0 ? (ulong)random.NextInt64() : address, length,
                        flags, (ushort)random.Next(0, random.Next(2) == 0 ? 8 : 70));
                }
            }
            for (int i = 0; i < QueueSize; i++)
            {
                ulong address = random.Next(5) switch
                {
                    0 => (ulong)random.NextInt64(0, MemoryBytes),
                    1 => (ulong)(MemoryBytes - random.Next(0, 64)),
                    2 => ulong.MaxValue - (ulong)random.Next(0, 4096),
                    3 => (ulong)random.NextInt64(),
                    _ => indirect && random.Next(2) == 0 ? IndirectTablesGpa + 16UL * (ulong)random.Next(0, 64) : FakeGuest.BuffersGpa + (ulong)random.Next(0, 4096),
                };
                uint length = random.Next(5) switch
                {
                    0 => 0,
                    1 => uint.MaxValue - (uint)random.Next(0, 16),
                    2 => (uint)random.Next(1, 17),
                    3 when indirect => 16u * (uint)random.Next(1, 66), // a table of 1 to 65 entries (64 written)
                    _ => (uint)random.Next(0, 2 * MemoryBytes),
                };
                g.SetDescriptor(i, address, length, (ushort)random.Next(0, 8), (ushort)random.Next(0, QueueSize + 2));
                // A third of an indirect round's descriptors name (part of) the random table, as a driver would.
                if (indirect && random.Next(3) == 0)
                {
                    g.SetDescriptor(i, IndirectTablesGpa + 16UL * (ulong)random.Next(0, 8), 16u * (uint)random.Next(1, 66),
                        (ushort)(SplitVirtqueue.DescIndirect | (random.Next(4) == 0 ? random.Next(0, 8) : 0)), (ushort)random.Next(0, QueueSize + 2));
                }
            }
            for (int slot = 0; slot < QueueSize; slot++) g.SetAvailableEntry(slot, (ushort)random.Next(0, QueueSize + 2));
            g.SetAvailableIndex((ushort)random.Next(0, QueueSize + 4));
            var request = new BlkRequest();
            while (true)
            {
                var pop = q.TryPop(out ushort head);
                if (pop == PopResult.Broken) { broken++; break; }
                if (pop == PopResult.Empty) break;
                if (!q.TryReadChain(head, request.Segments, out request.Chain)) { broken++; break; }
                if (request.Chain.BadAddress) badAddress++;
                parsed++;
                if ((*(ushort*)(g.Base + FakeGuest.DescriptorsGpa + 16UL * head + 12) & SplitVirtqueue.DescIndirect) != 0 && request.Chain.SegmentCount > 0)
                    throughTable++;
                for (int i = 0; i < request.Chain.SegmentCount; i++)
                {
                    var seg = request.Segments[i];
                    Assert.True(seg.Host >= g.Base && seg.Host + seg.Length <= g.Base + MemoryBytes && seg.Length > 0,
                        $"segment outside guest memory (seed {seed}, round {round})");
                }
                if (request.Chain.HasStatus)
                    Assert.True(request.Chain.Status >= g.Base && request.Chain.Status < g.Base + MemoryBytes, $"status outside guest memory (seed {seed})");
                BlkQueue.TryParse(request, out _, out _, out _, out _, out _, out _);
            }
        }
        output.WriteLine($"chains parsed {parsed} (of which bad address {badAddress}, through an indirect table {throughTable}), queues broken {broken}");
        Assert.True(parsed > 0 && broken > 0 && badAddress > 0 && throughTable > 0, "the generator should reach every outcome");
    }
}
