namespace Platter.Volumes;

/// <summary>Why a storage operation failed. The server maps these to NBD errors and CLI messages.</summary>
public enum StorageError
{
    /// <summary>No volume (or snapshot) by that name.</summary>
    NotFound,
    /// <summary>A volume by that name already exists.</summary>
    AlreadyExists,
    /// <summary>The name breaks the naming rules (see <see cref="VolumeNames"/>).</summary>
    InvalidName,
    /// <summary>A size, offset or length that can never be valid.</summary>
    InvalidArgument,
    /// <summary>The request reaches past the end of the volume.</summary>
    OutOfRange,
    /// <summary>The data disk is full: this write could not be stored. Nothing else is affected.</summary>
    NoSpace,
    /// <summary>The device below failed a read or a write.</summary>
    IoError,
    /// <summary>Stored data does not match its checksum.</summary>
    ChecksumMismatch,
    /// <summary>A sync or metadata commit failed earlier; the store refuses writes until it is reopened.</summary>
    StoreFailed,
    /// <summary>The volume is read-only (a snapshot) or the store was opened read-only.</summary>
    ReadOnly,
    /// <summary>The store directory holds something that is not a Platter store, or a newer format.</summary>
    BadStore,
    /// <summary>The store or volume handle was closed.</summary>
    Closed,
    /// <summary>Another process has the store open.</summary>
    InUse,
    /// <summary>Refused because something depends on it: a volume with snapshots, a snapshot with clones.</summary>
    HasDependents,
}

/// <summary>A storage operation that failed for a reason the caller can act on.</summary>
public sealed class StorageException(StorageError error, string message, Exception? inner = null) : Exception(message, inner)
{
    public StorageError Error { get; } = error;
}
