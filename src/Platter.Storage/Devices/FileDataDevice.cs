using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Platter.Storage.Devices;

/// <summary>A device backed by a plain file: pread/pwrite through <see cref="RandomAccess"/>, fdatasync, fallocate.</summary>
internal sealed partial class FileDataDevice : IDataDevice
{
    private readonly SafeFileHandle _handle;
    private long _length;
    // A second descriptor of the same file opened with O_DIRECT, for ReadUncached (opened on first use: only the
    // scrubber reads this way). _directState: 0 not tried yet, 1 open, -1 the file system refused O_DIRECT.
    private readonly object _directLock = new();
    private SafeFileHandle? _direct;
    private int _directState;

    public FileDataDevice(string path)
    {
        Path = path;
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
            int fd = flags == 0 ? -1 : open(Path, ORdOnly | OCloExec | flags);
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

    private const int ORdOnly = 0;
    private const int OCloExec = 0x80000;

    public void Write(long offset, ReadOnlySpan<byte> source) => RandomAccess.Write(_handle, source, offset);

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

    public void Dispose()
    {
        _handle.Dispose();
        lock (_directLock) _direct?.Dispose();
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
