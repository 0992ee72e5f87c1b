using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Platter.VhostUser.Internal;

namespace Platter.VhostUser.Tests;

/// <summary>
/// A guest's RAM for tests: host memory registered as one region at guest-physical 0, with a split virtqueue laid out in
/// it (descriptor table at 0, available ring at 64 KiB, used ring at 128 KiB, buffers from 256 KiB) and helpers that
/// write descriptors and publish chains the way a driver does. The front-end's own address of the region
/// (<see cref="UserBase"/>) differs from the guest-physical one, as in QEMU.
/// </summary>
internal sealed unsafe class FakeGuest : IDisposable
{
    public const ulong UserBase = 0x7f00_0000_0000;
    public const ulong DescriptorsGpa = 0;
    public const ulong AvailableGpa = 64 * 1024;
    public const ulong UsedGpa = 128 * 1024;
    public const ulong BuffersGpa = 256 * 1024;

    private readonly bool _ownsMemory;
    private ushort _availableIndex;

    /// <summary>Guest memory of <paramref name="sizeBytes"/> allocated here (for the pure virtqueue tests).</summary>
    public FakeGuest(int sizeBytes, ushort queueSize)
    {
        SizeBytes = (ulong)sizeBytes;
        Base = (byte*)NativeMemory.AlignedAlloc((nuint)sizeBytes, 4096);
        new Span<byte>(Base, sizeBytes).Clear();
        _ownsMemory = true;
        QueueSize = queueSize;
        Memory = new GuestMemory([new GuestRegion(0, SizeBytes, UserBase, Base)], []);
    }

    /// <summary>Guest memory mapped elsewhere (the shared file of the protocol tests).</summary>
    public FakeGuest(byte* mapped, ulong sizeBytes, ushort queueSize)
    {
        Base = mapped;
        SizeBytes = sizeBytes;
        QueueSize = queueSize;
        Memory = new GuestMemory([new GuestRegion(0, SizeBytes, UserBase, Base)], []);
    }

    public byte* Base { get; }
    public ulong SizeBytes { get; }
    public ushort QueueSize { get; }
    public GuestMemory Memory { get; }

    public Span<byte> Bytes(ulong gpa, int length) => new(Base + gpa, length);

    public void SetDescriptor(int index, ulong address, uint length, ushort flags, ushort next) =>
        SetIndirectDescriptor(DescriptorsGpa, index, address, length, flags, next);

    /// <summary>Publishes <paramref name="head"/> on the available ring.</summary>
    public void Publish(ushort head)
    {
        var ring = (ushort*)(Base + AvailableGpa);
        ring[2 + (_availableIndex % QueueSize)] = head;
        _availableIndex++;
        Volatile.Write(ref ring[1], _availableIndex);
    }

    /// <summary>Sets the available index to anything (hostile drivers).</summary>
    public void SetAvailableIndex(ushort index)
    {
        _availableIndex = index;
        Volatile.Write(ref ((ushort*)(Base + AvailableGpa))[1], index);
    }

    public void SetAvailableEntry(int slot, ushort head) => ((ushort*)(Base + AvailableGpa))[2 + slot] = head;

    public ushort UsedIndex => Volatile.Read(ref ((ushort*)(Base + UsedGpa))[1]);

    /// <summary>Writes a used element and the used index, as a back-end that completed <paramref name="id"/> did.</summary>
    public void SetUsed(int slot, uint id, uint length, ushort usedIndex)
    {
        byte* e = Base + UsedGpa + 4 + 8 * (ulong)(slot % QueueSize);
        Unsafe.WriteUnaligned(e, id);
        Unsafe.WriteUnaligned(e + 4, length);
        Volatile.Write(ref ((ushort*)(Base + UsedGpa))[1], usedIndex);
    }

    public (uint Id, uint Length) UsedElement(int slot)
    {
        byte* e = Base + UsedGpa + 4 + 8 * (ulong)(slot % QueueSize);
        return (Unsafe.ReadUnaligned<uint>(e), Unsafe.ReadUnaligned<uint>(e + 4));
    }

    /// <summary>Writes descriptor <paramref name="index"/> of the table at <paramref name="tableGpa"/> (the ring's own, or an indirect one).</summary>
    public void SetIndirectDescriptor(ulong tableGpa, int index, ulong address, uint length, ushort flags, ushort next)
    {
        byte* d = Base + tableGpa + 16 * (ulong)index;
        Unsafe.WriteUnaligned(d, address);
        Unsafe.WriteUnaligned(d + 8, length);
        Unsafe.WriteUnaligned(d + 12, flags);
        Unsafe.WriteUnaligned(d + 14, next);
    }

    public SplitVirtqueue CreateQueue(bool indirectDescriptors = false)
    {
        var q = SplitVirtqueue.Create(Memory, QueueSize, UserBase + DescriptorsGpa, UserBase + AvailableGpa, UserBase + UsedGpa, 0, out var problem,
            indirectDescriptors);
        Assert.True(q is not null, problem);
        return q!;
    }

    public void Dispose()
    {
        if (_ownsMemory) NativeMemory.AlignedFree(Base);
    }
}
