using System.Runtime.InteropServices;

namespace Platter.Cache.Tests;

/// <summary>
/// Byte access to a file another object holds open with an exclusive lock (.NET takes flock for FileShare.None):
/// plain open/pread/pwrite, as a crash image copier or a disk flipping a bit would see the file.
/// </summary>
internal static partial class RawFile
{
    private const int O_RDWR = 2;

    public static void Copy(string from, string to)
    {
        var bytes = ReadAll(from);
        File.WriteAllBytes(to, bytes);
    }

    public static byte[] ReadAll(string path)
    {
        int fd = Open(path);
        try
        {
            var info = new FileInfo(path);
            var data = new byte[info.Length];
            long done = 0;
            while (done < data.Length)
            {
                long n = pread(fd, ref data[done], (nint)(data.Length - done), done);
                if (n <= 0) throw new IOException($"pread of {path} failed");
                done += n;
            }
            return data;
        }
        finally
        {
            close(fd);
        }
    }

    public static void FlipByte(string path, long offset, byte mask = 0x40)
    {
        int fd = Open(path);
        try
        {
            byte b = 0;
            if (pread(fd, ref b, 1, offset) != 1) throw new IOException("pread failed");
            b ^= mask;
            if (pwrite(fd, ref b, 1, offset) != 1) throw new IOException("pwrite failed");
        }
        finally
        {
            close(fd);
        }
    }

    /// <summary>Where the file's first hole starts (its length when it has none): lseek with SEEK_HOLE.</summary>
    public static long FirstHole(string path)
    {
        int fd = Open(path);
        try
        {
            long at = lseek(fd, 0, SEEK_HOLE);
            if (at < 0) throw new IOException($"lseek SEEK_HOLE on {path} failed: errno {Marshal.GetLastPInvokeError()}");
            return at;
        }
        finally
        {
            close(fd);
        }
    }

    private const int SEEK_HOLE = 4;

    [LibraryImport("libc", SetLastError = true)]
    private static partial long lseek(int fd, long offset, int whence);

    private static int Open(string path)
    {
        int fd = open(path, O_RDWR);
        if (fd < 0) throw new IOException($"cannot open {path}: errno {Marshal.GetLastPInvokeError()}");
        return fd;
    }

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int open(string path, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial long pread(int fd, ref byte buffer, nint count, long offset);

    [LibraryImport("libc", SetLastError = true)]
    private static partial long pwrite(int fd, ref byte buffer, nint count, long offset);

    [LibraryImport("libc")]
    private static partial int close(int fd);
}
