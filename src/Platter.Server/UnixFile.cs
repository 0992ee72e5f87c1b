using System.Runtime.InteropServices;

namespace Platter.Server;

/// <summary>The unix facts .NET does not expose: whether a path is a socket, a group's id, changing a file's group, dup.</summary>
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

    /// <summary>The id of group <paramref name="group"/> (a name, or a number), or null when there is no such group.</summary>
    public static uint? GroupId(string group)
    {
        if (uint.TryParse(group, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out uint gid)) return gid;
        // getgrnam goes through NSS (files, LDAP, sssd), which reading /etc/group would miss. Its struct group starts
        // with two pointers (gr_name, gr_passwd); gr_gid follows them.
        IntPtr entry = Getgrnam(group);
        return entry == IntPtr.Zero ? null : (uint)Marshal.ReadInt32(entry, 2 * IntPtr.Size);
    }

    /// <summary>Gives <paramref name="path"/> to group <paramref name="gid"/>, keeping its owner; throws IOException on failure.</summary>
    public static void SetGroup(string path, uint gid)
    {
        if (Lchown(path, uint.MaxValue, gid) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new IOException($"cannot give {path} to group {gid}: {Marshal.GetPInvokeErrorMessage(errno)}");
        }
    }

    [LibraryImport("libc", EntryPoint = "getgrnam", StringMarshalling = StringMarshalling.Utf8)]
    private static partial IntPtr Getgrnam(string name);

    // uid -1 (uint.MaxValue) leaves the owner as it is.
    [LibraryImport("libc", EntryPoint = "lchown", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Lchown(string path, uint uid, uint gid);
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
