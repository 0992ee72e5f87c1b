namespace Platter.VhostUser.Internal;

/// <summary>One region of guest RAM: where the guest sees it, where the front-end (QEMU) has it, where we mapped it.</summary>
internal readonly unsafe struct GuestRegion(ulong guestPhysicalAddress, ulong sizeBytes, ulong userAddress, byte* host)
{
    public ulong GuestPhysicalAddress { get; } = guestPhysicalAddress;
    public ulong SizeBytes { get; } = sizeBytes;
    /// <summary>The region's address in the front-end's own address space: vring addresses arrive in it.</summary>
    public ulong UserAddress { get; } = userAddress;
    public byte* Host { get; } = host;
}

/// <summary>
/// Guest memory as the back-end sees it: the regions of the last SET_MEM_TABLE, each mapped from the descriptor QEMU
/// sent. Every address the guest hands us (descriptor addresses, ring addresses) goes through
/// <see cref="TryTranslate"/> or <see cref="TranslateUser"/>, which only ever return pointers inside a mapped region:
/// that is the whole defence against a guest naming memory that is not its own.
/// </summary>
internal sealed unsafe class GuestMemory : IDisposable
{
    private readonly GuestRegion[] _regions;
    // What munmap needs per region; empty for memory the tests own.
    private readonly (nint Base, nuint Length)[] _mappings;
    private bool _disposed;

    internal GuestMemory(GuestRegion[] regions, (nint Base, nuint Length)[] mappings)
    {
        _regions = regions;
        _mappings = mappings;
    }

    public int RegionCount => _regions.Length;

    /// <summary>
    /// Translates the guest-physical range starting at <paramref name="address"/>: the host pointer of its first byte
    /// and how many of its <paramref name="length"/> bytes are contiguous there (the rest, if any, lies in another
    /// region: translate again from address + contiguous). False when the first byte is in no region.
    /// </summary>
    public bool TryTranslate(ulong address, ulong length, out byte* host, out ulong contiguous)
    {
        foreach (ref readonly var r in _regions.AsSpan())
        {
            // Unsigned subtraction: an address below the region wraps to a huge offset and fails the test.
            ulong offset = address - r.GuestPhysicalAddress;
            if (address >= r.GuestPhysicalAddress && offset < r.SizeBytes)
            {
                host = r.Host + offset;
                contiguous = Math.Min(length, r.SizeBytes - offset);
                return true;
            }
        }
        host = null;
        contiguous = 0;
        return false;
    }

    /// <summary>
    /// Translates a front-end virtual address range (vring addresses) that must lie wholly inside one region; null
    /// otherwise. Rings are small and QEMU allocates each inside one RAM block.
    /// </summary>
    public byte* TranslateUser(ulong userAddress, ulong length)
    {
        foreach (ref readonly var r in _regions.AsSpan())
        {
            ulong offset = userAddress - r.UserAddress;
            if (userAddress >= r.UserAddress && offset < r.SizeBytes && length <= r.SizeBytes - offset) return r.Host + offset;
        }
        return null;
    }

    /// <summary>
    /// Maps the regions of a SET_MEM_TABLE message: each descriptor is mapped shared, read-write, from offset 0 for
    /// mmap_offset + size bytes (the guest's part starts mmap_offset bytes in). The descriptors are closed here, mapped
    /// or not: a mapping keeps the memory alive by itself. Throws <see cref="VhostUserException"/> when a mapping fails.
    /// </summary>
    public static GuestMemory Map(ReadOnlySpan<(ulong Gpa, ulong Size, ulong UserAddress, ulong MmapOffset)> regions, ReadOnlySpan<int> fds)
    {
        var mapped = new GuestRegion[regions.Length];
        var mappings = new (nint, nuint)[regions.Length];
        int done = 0;
        try
        {
            for (; done < regions.Length; done++)
            {
                var (gpa, size, user, mmapOffset) = regions[done];
                if (size == 0 || size > long.MaxValue || mmapOffset > long.MaxValue - size || gpa + size < gpa || user + size < user)
                    throw new VhostUserException($"memory region {done} has an impossible size or offset (size {size}, mmap offset {mmapOffset})");
                nuint length = (nuint)(mmapOffset + size);
                void* p = Native.mmap(null, length, Native.PROT_READ | Native.PROT_WRITE, Native.MAP_SHARED, fds[done], 0);
                if (p == (void*)-1)
                    throw new VhostUserException($"mapping guest memory region {done} ({size} bytes) failed: errno {Native.Errno} (was the guest memory created with share=on?)");
                mappings[done] = ((nint)p, length);
                mapped[done] = new GuestRegion(gpa, size, user, (byte*)p + mmapOffset);
            }
        }
        catch
        {
            for (int i = 0; i < done; i++) Native.munmap((void*)mappings[i].Item1, mappings[i].Item2);
            throw;
        }
        finally
        {
            foreach (int fd in fds) Native.close(fd);
        }
        return new GuestMemory(mapped, mappings);
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (var (b, l) in _mappings) Native.munmap((void*)b, l);
    }
}

/// <summary>A vhost-user protocol violation or a failure to act on a message; it ends that connection only.</summary>
public sealed class VhostUserException(string message) : Exception(message);
