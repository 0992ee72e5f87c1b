using System.Runtime.InteropServices;

namespace Platter.Storage.Devices;

/// <summary>Size and free space of the file system holding a path (statvfs).</summary>
internal static partial class FileSystemSpace
{
    /// <summary>Total bytes and bytes available to an unprivileged writer, or null when statvfs fails.</summary>
    public static (long TotalBytes, long AvailableBytes)? Query(string path)
    {
        if (statvfs(path, out var st) != 0) return null;
        long unit = (long)(st.f_frsize != 0 ? st.f_frsize : st.f_bsize);
        return ((long)st.f_blocks * unit, (long)st.f_bavail * unit);
    }

    // glibc's struct statvfs on 64-bit Linux (x86_64 and aarch64): eleven unsigned longs, then int __f_spare[6].
    [StructLayout(LayoutKind.Sequential)]
    private struct StatVfs
    {
        public ulong f_bsize;
        public ulong f_frsize;
        public ulong f_blocks;
        public ulong f_bfree;
        public ulong f_bavail;
        public ulong f_files;
        public ulong f_ffree;
        public ulong f_favail;
        public ulong f_fsid;
        public ulong f_flag;
        public ulong f_namemax;
        private int _spare0, _spare1, _spare2, _spare3, _spare4, _spare5;
    }

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int statvfs(string path, out StatVfs buf);
}
