using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using Platter.Storage.Internal;

namespace Platter.Storage.Devices;

/// <summary>A device backed by a plain file: pread/pwrite through <see cref="RandomAccess"/>, fdatasync, fallocate.</summary>
internal sealed partial class FileDataDevice : IDataDevice
{
    private readonly SafeFileHandle _handle;
    private long _length;
    // A second descriptor of the same file opened with O_DIRECT, for ReadUncached and large writes (opened on first
    // use). _directState: 0 not tried yet, 1 open, -1 the file system refused O_DIRECT.
    private readonly object _directLock = new();
    private SafeFileHandle? _direct;
    private int _directState;
    // Large writes go through O_DIRECT when asked for (StoreOptions.DirectWrites), until the file system refuses one
    // (then through the cache for good).
    private volatile bool _directWritesRefused;
    // Aligned buffers a large write copies its data into (O_DIRECT needs an aligned address; callers' spans are mostly
    // managed memory, and an aligned one is written without the copy). Guarded by _directLock; at most DirectWriteBuffersPooled kept, the rest freed when given back.
    private readonly Stack<IntPtr> _directBuffers = new();
    private bool _disposed;

    public FileDataDevice(string path, bool directWrites = false)
    {
        Path = path;
        _directWritesRefused = !directWrites;
        _handle = File.OpenHandle(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
        _length = RandomAccess.GetLength(_handle);
    }

    public string Path { get; }

    public long Length => Volatile.Read(ref _length);

    public void Read(long offset, Span<byte> destination)
    {
        int total = 0;
        while (total < destination.Length)
        {
            int n = RandomAccess.Read(_handle, destination[total..], offset + total);
            if (n == 0)
            {
                destination[total..].Clear();
                return;
            }
            total += n;
        }
    }

    /// <summary>
    /// pread on the O_DIRECT descriptor: the disk is read even when the page cache holds the pages, and the pages read
    /// are not added to the cache. Linux writes dirty cached pages of the range back before a direct read, so the read
    /// sees every completed write, synced or not, as a buffered read would. Falls back to <see cref="Read"/> (and
    /// returns false) on a file system that refuses O_DIRECT (tmpfs before Linux 6.6, some FUSE file systems).
    /// </summary>
    public bool ReadUncached(long offset, Span<byte> destination)
    {
        var direct = DirectHandle();
        if (direct is null)
        {
            Read(offset, destination);
            return false;
        }
        int total = 0;
        while (total < destination.Length)
        {
            int n = RandomAccess.Read(direct, destination[total..], offset + total);
            // The end of the file: a direct read stops there, possibly short of an alignment boundary (the rest of the
            // file is past it); what lies beyond reads as zeros, as in Read.
            if (n == 0 || n % IDataDevice.UncachedAlignment != 0)
            {
                destination[(total + n)..].Clear();
                return true;
            }
            total += n;
        }
        return true;
    }

    private SafeFileHandle? DirectHandle()
    {
        if (Volatile.Read(ref _directState) != 0) return _direct;
        lock (_directLock)
        {
            if (_directState != 0) return _direct;
            int flags = DirectFlag();
            int fd = flags == 0 ? -1 : open(Path, ORdWr | OCloExec | flags);
            if (fd >= 0) _direct = new SafeFileHandle(fd, ownsHandle: true);
            else if (flags != 0 && Marshal.GetLastPInvokeError() is var errno && errno != Errno.EINVAL)
                throw new IOException($"cannot open {Path} for direct reads: {Marshal.GetPInvokeErrorMessage(errno)}", errno);
            Volatile.Write(ref _directState, _direct is null ? -1 : 1);
            return _direct;
        }
    }

    // O_DIRECT's value differs between architectures (x86-64 and arm64 are the two Platter is built for); 0 where it
    // is not known, which reads through the cache.
    private static int DirectFlag() => RuntimeInformation.ProcessArchitecture switch
    {
        Architecture.X64 => 0x4000,
        Architecture.Arm64 => 0x10000,
        _ => 0,
    };

    private const int ORdWr = 2;
    private const int OCloExec = 0x80000;

    public void Write(long offset, ReadOnlySpan<byte> source)
    {
        if (source.Length >= EngineLimits.DirectWriteBytesMin && !_directWritesRefused
            && ((offset | (long)source.Length) & (IDataDevice.UncachedAlignment - 1)) == 0 && DirectHandle() is { } direct)
        {
            if (WriteDirect(direct, offset, source)) return;
        }
        RandomAccess.Write(_handle, source, offset);
    }

    /// <summary>
    /// A large aligned write through the O_DIRECT descriptor, copied into pooled aligned buffers unless the source is
    /// page-aligned already (then written as it is; the caller keeps it unchanged during the call): the kernel's copy into
    /// page-cache pages of new space (pages it must first allocate, and on a VM that reports free pages to its host, have
    /// the host fault in) was most of the server's CPU on large writes (docs/PERFORMANCE.md, issue 15). The price: the
    /// data is not cached, so a read of it soon after goes to the disk, hence opt-in (StoreOptions.DirectWrites). Linux keeps
    /// buffered and direct I/O of one file coherent: dirty cached pages of the range are written back first and cached
    /// pages dropped after, so a later buffered read sees this write, and Sync makes it durable like any other (the data
    /// is on the disk, not yet past its cache). False when the file system refused (nothing written; the caller writes
    /// through the cache).
    /// </summary>
    private unsafe bool WriteDirect(SafeFileHandle direct, long offset, ReadOnlySpan<byte> source)
    {
        fixed (byte* at = source)
        {
            // An aligned source (vhost-user's large write buffers are) is written as it is, without the copy.
            bool inPlace = ((nint)at & (IDataDevice.UncachedAlignment - 1)) == 0;
            IntPtr buffer = inPlace ? 0 : RentDirectBuffer();
            try
            {
                int done = 0;
                while (done < source.Length)
                {
                    ReadOnlySpan<byte> aligned;
                    if (inPlace)
                    {
                        aligned = source;
                    }
                    else
                    {
                        int n = Math.Min(EngineLimits.DirectWriteBufferBytes, source.Length - done);
                        var copy = new Span<byte>((void*)buffer, n);
                        source.Slice(done, n).CopyTo(copy);
                        aligned = copy;
                    }
                    try
                    {
                        RandomAccess.Write(direct, aligned, offset + done);
                    }
                    catch (IOException e) when (done == 0 && (e.HResult == Errno.EINVAL || (e.HResult & 0xFFFF) == Errno.EINVAL))
                    {
                        // A file system that opens with O_DIRECT but will not write this way: the cache from now on.
                        _directWritesRefused = true;
                        return false;
                    }
                    done += aligned.Length;
                }
                return true;
            }
            finally
            {
                if (!inPlace) ReturnDirectBuffer(buffer);
            }
        }
    }

    private unsafe IntPtr RentDirectBuffer()
    {
        lock (_directLock)
        {
            if (_directBuffers.TryPop(out IntPtr buffer)) return buffer;
        }
        return (IntPtr)NativeMemory.AlignedAlloc(EngineLimits.DirectWriteBufferBytes, IDataDevice.UncachedAlignment);
    }

    private unsafe void ReturnDirectBuffer(IntPtr buffer)
    {
        lock (_directLock)
        {
            if (!_disposed && _directBuffers.Count < EngineLimits.DirectWriteBuffersPooled)
            {
                _directBuffers.Push(buffer);
                return;
            }
        }
        NativeMemory.AlignedFree((void*)buffer);
    }

    public void Sync()
    {
        if (fdatasync((int)_handle.DangerousGetHandle()) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new IOException($"fdatasync of {Path} failed: {Marshal.GetPInvokeErrorMessage(errno)}", errno);
        }
    }

    // Growth is sparse (ftruncate): the store returns freed blocks to the file system (PunchHole), so its free space
    // is holes anyway, and a free block that takes no disk space until written is what lets the store tell how much
    // space a write needs from the file system's free space alone (see SpaceReserve).
    public void Grow(long newLength)
    {
        long current = Length;
        if (newLength <= current) return;
        RandomAccess.SetLength(_handle, newLength);
        Volatile.Write(ref _length, newLength);
    }

    public void PunchHole(long offset, long length)
    {
        if (length <= 0) return;
        if (fallocate((int)_handle.DangerousGetHandle(), FallocPunchHole | FallocKeepSize, offset, length) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            // A file system without hole punching keeps the blocks allocated: the space stays the store's, still free.
            if (errno != Errno.EOPNOTSUPP)
                throw new IOException($"cannot punch a hole at {offset} (+{length}) in {Path}: {Marshal.GetPInvokeErrorMessage(errno)}", errno);
        }
    }

    private const int FallocKeepSize = 0x01;
    private const int FallocPunchHole = 0x02;

    public unsafe void Dispose()
    {
        _handle.Dispose();
        lock (_directLock)
        {
            _disposed = true;
            _direct?.Dispose();
            while (_directBuffers.TryPop(out IntPtr buffer)) NativeMemory.AlignedFree((void*)buffer);
        }
    }

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int open(string path, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int fdatasync(int fd);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int fallocate(int fd, int mode, long offset, long len);
}

/// <summary>Linux errno values the engine distinguishes.</summary>
internal static class Errno
{
    public const int EIO = 5;
    public const int EINVAL = 22;
    public const int ENOSPC = 28;
    public const int EOPNOTSUPP = 95;

    /// <summary>True when the exception says the disk is full.</summary>
    public static bool IsNoSpace(IOException e) => e.HResult == ENOSPC || (e.HResult & 0xFFFF) == ENOSPC
        || e.Message.Contains("No space left", StringComparison.OrdinalIgnoreCase);
}
