using Platter.Ceph;
using Platter.Volumes;

namespace Platter.Rbd;

/// <summary>librados/librbd errno values to the seam's <see cref="StorageError"/>s, with a message a user can act on.</summary>
internal static class RbdErrors
{
    public static StorageException Map(CephException e, string subject) => new(e.Errno switch
    {
        CephException.ENOENT => StorageError.NotFound,
        CephException.EEXIST => StorageError.AlreadyExists,
        CephException.ENOSPC => StorageError.NoSpace,
        CephException.EROFS => StorageError.InUse,
        CephException.EBUSY => StorageError.InUse,
        CephException.ENOTEMPTY => StorageError.HasDependents,
        CephException.EINVAL => StorageError.InvalidArgument,
        CephException.EBLOCKLISTED => StorageError.StoreFailed,
        _ => StorageError.IoError,
    }, $"{subject}: {e.Message}", e);

    /// <summary>The exception for a failed data request (errno from a completion).</summary>
    public static StorageException ForRequest(long returnValue, string volume, string operation)
    {
        int errno = (int)-returnValue;
        return errno switch
        {
            CephException.EBLOCKLISTED => new StorageException(StorageError.StoreFailed,
                $"{operation} on '{volume}' refused: this server was fenced (blocklisted) because another server took the volume over"),
            CephException.EROFS => new StorageException(StorageError.StoreFailed,
                $"{operation} on '{volume}' refused: this server no longer holds the volume's exclusive lock"),
            CephException.ENOSPC => new StorageException(StorageError.NoSpace, $"{operation} on '{volume}': the Ceph pool is full"),
            CephException.ETIMEDOUT => new StorageException(StorageError.IoError,
                $"{operation} on '{volume}': the Ceph OSDs did not answer within the operation timeout"),
            _ => new StorageException(StorageError.IoError, $"{operation} on '{volume}' failed: " + CephException.Describe(errno)),
        };
    }
}
