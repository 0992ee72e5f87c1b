using System.Runtime.InteropServices;

namespace Platter.VhostUser.Internal;

/// <summary>
/// The few libc calls vhost-user needs that .NET does not expose: recvmsg/sendmsg with SCM_RIGHTS (QEMU passes guest
/// memory and eventfds as descriptors), mmap of those descriptors, a sealed memfd for the in-flight area, eventfd and poll for kicks and calls.
/// Linux x86-64/arm64 layouts (LP64).
/// </summary>
internal static unsafe partial class Native
{
    internal const int EINTR = 4;
    internal const int EAGAIN = 11;
    internal const int SOL_SOCKET = 1;
    internal const int SCM_RIGHTS = 1;
    internal const int MSG_CTRUNC = 0x8;
    internal const int MSG_NOSIGNAL = 0x4000;
    internal const int MSG_CMSG_CLOEXEC = 0x40000000;
    internal const int PROT_READ = 1;
    internal const int PROT_WRITE = 2;
    internal const int MAP_SHARED = 1;
    internal const int EFD_CLOEXEC = 0x80000;
    internal const short POLLIN = 1;
    internal const int F_GETFL = 3;
    internal const int F_SETFL = 4;
    internal const int F_DUPFD_CLOEXEC = 1030;
    internal const int O_NONBLOCK = 0x800;
    internal const int SHUT_RDWR = 2;
    internal const int AF_UNIX = 1;
    internal const int SOCK_STREAM = 1;
    internal const int SOCK_CLOEXEC = 0x80000;
    internal const uint MFD_CLOEXEC = 1;
    internal const uint MFD_ALLOW_SEALING = 2;
    internal const int F_ADD_SEALS = 1033;
    internal const int F_GET_SEALS = 1034;
    internal const int F_SEAL_SEAL = 1;
    internal const int F_SEAL_SHRINK = 2;
    internal const int F_SEAL_GROW = 4;
    internal const int SEEK_END = 2;

    [StructLayout(LayoutKind.Sequential)]
    internal struct IoVec
    {
        public void* Base;
        public nuint Length;
    }

    [StructLayout(LayoutKind.Sequential)]
    internal struct MsgHdr
    {
        public void* Name;
        public uint NameLength;
        public IoVec* Iov;
        public nuint IovLength;
        public void* Control;
        public nuint ControlLength;
        public int Flags;
    }

    [StructLayout(LayoutKind.Sequential)]
    internal struct PollFd
    {
        public int Fd;
        public short Events;
        public short Revents;
    }

    /// <summary>sizeof(struct cmsghdr) on LP64: size_t len, int level, int type.</summary>
    internal const int CmsgHeaderBytes = 16;

    [LibraryImport("libc", SetLastError = true)]
    internal static partial nint recvmsg(int fd, MsgHdr* message, int flags);

    [LibraryImport("libc", SetLastError = true)]
    internal static partial nint sendmsg(int fd, MsgHdr* message, int flags);

    [LibraryImport("libc", SetLastError = true)]
    internal static partial nint read(int fd, void* buffer, nuint count);

    [LibraryImport("libc", SetLastError = true)]
    internal static partial nint write(int fd, void* buffer, nuint count);

    [LibraryImport("libc", SetLastError = true)]
    internal static partial int close(int fd);

    [LibraryImport("libc", SetLastError = true)]
    internal static partial void* mmap(void* address, nuint length, int protection, int flags, int fd, long offset);

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int memfd_create(string name, uint flags);

    [LibraryImport("libc", SetLastError = true)]
    internal static partial int ftruncate(int fd, long length);

    [LibraryImport("libc", SetLastError = true)]
    internal static partial long lseek(int fd, long offset, int whence);

    [LibraryImport("libc", SetLastError = true)]
    internal static partial int munmap(void* address, nuint length);

    [LibraryImport("libc", SetLastError = true)]
    internal static partial int poll(PollFd* fds, nuint count, int timeoutMs);

    [LibraryImport("libc", SetLastError = true)]
    internal static partial int eventfd(uint initialValue, int flags);

    [LibraryImport("libc", SetLastError = true)]
    internal static partial int fcntl(int fd, int command, int argument);

    [LibraryImport("libc", SetLastError = true)]
    internal static partial int shutdown(int fd, int how);

    [LibraryImport("libc", SetLastError = true)]
    internal static partial int socketpair(int domain, int type, int protocol, int* fds);

    internal static int Errno => Marshal.GetLastPInvokeError();

    /// <summary>Closes a descriptor if it is one (-1 means none); errors are ignored (nothing to do about them).</summary>
    internal static void CloseIfOpen(ref int fd)
    {
        if (fd >= 0) close(fd);
        fd = -1;
    }

    /// <summary>Adds 1 to an eventfd (a kick or a call); EAGAIN means its counter is saturated, which still wakes the reader.</summary>
    internal static void SignalEventFd(int fd)
    {
        ulong one = 1;
        while (write(fd, &one, 8) < 0 && Errno == EINTR)
        {
        }
    }

    /// <summary>Reads and resets an eventfd's counter (blocking when it is zero and the fd is blocking).</summary>
    internal static void DrainEventFd(int fd)
    {
        ulong value;
        while (read(fd, &value, 8) < 0 && Errno == EINTR)
        {
        }
    }
}
