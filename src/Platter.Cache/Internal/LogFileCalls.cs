using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Platter.Cache.Internal;

/// <summary>The two libc calls the write-back log needs that .NET does not offer: fdatasync, and one write made durable by itself.</summary>
internal static unsafe partial class LogFileCalls
{
    internal const int EINVAL = 22, ENOSYS = 38, EOPNOTSUPP = 95;
    private const int EINTR = 4;
    private const int RWF_DSYNC = 0x2;

    /// <summary>fdatasync(2): 0, or the errno.</summary>
    public static int DataSync(SafeFileHandle file) => fdatasync((int)file.DangerousGetHandle()) == 0 ? 0 : Marshal.GetLastPInvokeError();

    /// <summary>
    /// pwritev2(2) of <paramref name="data"/> at <paramref name="pos"/> with RWF_DSYNC (durable on return, as an O_DSYNC
    /// write), retried on EINTR: the bytes written, or -1 with <paramref name="errno"/> set.
    /// </summary>
    public static nint WriteDurable(SafeFileHandle file, ReadOnlySpan<byte> data, long pos, out int errno)
    {
        nint written;
        errno = 0;
        fixed (byte* p = data)
        {
            var iov = new IoVec { Base = p, Length = (nuint)data.Length };
            do
            {
                written = pwritev2((int)file.DangerousGetHandle(), &iov, 1, pos, RWF_DSYNC);
                errno = written < 0 ? Marshal.GetLastPInvokeError() : 0;
            } while (written < 0 && errno == EINTR);
        }
        return written;
    }

    private struct IoVec
    {
        public byte* Base;
        public nuint Length;
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int fdatasync(int fd);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint pwritev2(int fd, IoVec* iov, int iovcnt, long offset, int flags);
}
