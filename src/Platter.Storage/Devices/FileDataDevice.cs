using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Platter.Storage.Devices;

/// <summary>A device backed by a plain file: pread/pwrite through <see cref="RandomAccess"/>, fdatasync, fallocate.</summary>
internal sealed partial class FileDataDevice : IDataDevice
{
    private readonly SafeFileHandle _handle;
    private long _length;

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

    public void Dispose() => _handle.Dispose();

    [LibraryImport("libc", SetLastError = true)]
    private static partial int fdatasync(int fd);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int fallocate(int fd, int mode, long offset, long len);
}

/// <summary>Linux errno values the engine distinguishes.</summary>
internal static class Errno
{
    public const int EIO = 5;
    public const int ENOSPC = 28;
    public const int EOPNOTSUPP = 95;

    /// <summary>True when the exception says the disk is full.</summary>
    public static bool IsNoSpace(IOException e) => e.HResult == ENOSPC || (e.HResult & 0xFFFF) == ENOSPC
        || e.Message.Contains("No space left", StringComparison.OrdinalIgnoreCase);
}
