using System.Runtime.InteropServices;

namespace Platter.Server;

/// <summary>The two system calls .NET does not expose: whether a path is a socket (stat), and dup.</summary>
internal static partial class UnixFile
{
    private const uint S_IFMT = 0xF000;
    private const uint S_IFSOCK = 0xC000;

    /// <summary>True when <paramref name="path"/> itself (not a symlink's target) is a unix socket.</summary>
    public static bool IsSocket(string path)
    {
        // struct stat differs by architecture; st_mode is at offset 24 on x86-64 and 16 on arm64 (generic layout).
        int modeOffset = RuntimeInformation.ProcessArchitecture switch
        {
            Architecture.X64 => 24,
            Architecture.Arm64 => 16,
            _ => throw new PlatformNotSupportedException("stat layout unknown for " + RuntimeInformation.ProcessArchitecture),
        };
        Span<byte> stat = stackalloc byte[256];
        if (Lstat(path, ref MemoryMarshal.GetReference(stat)) != 0) return false;
        uint mode = MemoryMarshal.Read<uint>(stat[modeOffset..]);
        return (mode & S_IFMT) == S_IFSOCK;
    }

    /// <summary>dup(2): a second descriptor for the same open socket, so two owners can each close their own.</summary>
    public static int Duplicate(int fd)
    {
        int copy = Dup(fd);
        if (copy < 0) throw new IOException($"dup({fd}) failed: errno {Marshal.GetLastPInvokeError()}");
        return copy;
    }

    [LibraryImport("libc", EntryPoint = "dup", SetLastError = true)]
    private static partial int Dup(int fd);

    [LibraryImport("libc", EntryPoint = "lstat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Lstat(string path, ref byte buffer);
}
