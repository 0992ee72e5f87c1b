namespace Platter.Ceph;

/// <summary>
/// A librados or librbd call failed. <see cref="Errno"/> is the positive errno the library returned (negated), e.g.
/// ENOENT for a missing image, EEXIST for a taken name, EBUSY for an image with snapshots or watchers, EROFS for a
/// write without the exclusive lock, EBLOCKLISTED (108, ESHUTDOWN) once this client has been fenced, ETIMEDOUT when
/// the cluster did not answer within the configured timeout.
/// </summary>
public sealed class CephException(int errno, string message) : IOException(message, -errno)
{
    public const int ENOENT = 2;
    public const int EIO = 5;
    public const int EEXIST = 17;
    public const int EBUSY = 16;
    public const int EINVAL = 22;
    public const int ENOSPC = 28;
    public const int EROFS = 30;
    public const int ENOTEMPTY = 39;
    public const int ENOTSUP = 95;
    /// <summary>What librados returns once this client is on the OSD map's blocklist (Linux ESHUTDOWN).</summary>
    public const int EBLOCKLISTED = 108;
    public const int ETIMEDOUT = 110;

    /// <summary>The positive errno.</summary>
    public int Errno { get; } = errno;

    internal static CephException FromErrno(int errno, string what) => new(errno, $"{what}: {Native.ErrorText(errno)}");

    /// <summary>The C library's text for an errno (e.g. "No such file or directory").</summary>
    public static string Describe(int errno) => Native.ErrorText(errno);
}
