using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using Platter.Storage.Devices;

namespace Platter.Storage.Internal;

/// <summary>
/// Keeps the metadata from starving on a full file system (ZFS keeps "slop space" for the same reason). Two parts:
/// <list type="bullet">
/// <item>Headroom: data writes take new space only while the file system keeps <see cref="Bytes"/> free after them,
/// so a data write sees ENOSPC first and the metadata commits that follow (journal, LMDB checkpoints — including
/// those of deletes and trims, which free space) still find room.</item>
/// <item>A reserve file (<c>STORE/reserve</c>, <see cref="Bytes"/> long, allocated): if something else fills the file
/// system anyway, a metadata commit that fails with ENOSPC drops it and tries again. It is made again once the file
/// system has room for it twice over.</item>
/// </list>
/// Data free space inside the data file is holes (growth is sparse and freed blocks are punched), so the file
/// system's free space alone says whether a write fits.
/// </summary>
internal sealed partial class SpaceReserve
{
    public const string FileName = "reserve";

    private readonly string _directory;
    private readonly string _path;
    private readonly ILogger _logger;
    private readonly object _lock = new();
    private bool _held;

    public SpaceReserve(string directory, long bytes, ILogger logger)
    {
        _directory = directory;
        _path = Path.Combine(directory, FileName);
        _logger = logger;
        Bytes = bytes;
    }

    /// <summary>Bytes kept free for metadata (and the size of the reserve file).</summary>
    public long Bytes { get; }

    /// <summary>True while the reserve file holds its bytes.</summary>
    public bool Held
    {
        get { lock (_lock) return _held; }
    }

    /// <summary>The file system's total and available bytes (null when statvfs fails: then nothing is refused).</summary>
    public (long TotalBytes, long AvailableBytes)? FileSystem => FileSystemSpace.Query(_directory);

    /// <summary>
    /// True when data may take <paramref name="bytes"/> more of the file system and still leave the headroom.
    /// One statvfs call; the write path asks once per allocation region (4 MiB), not per write.
    /// </summary>
    public bool DataMayTake(long bytes) => FileSystem is not { } fs || fs.AvailableBytes - bytes >= Bytes;

    /// <summary>
    /// Makes sure the reserve file holds its bytes: keeps an existing one, makes a missing or short one when the file
    /// system has room for it twice over (it must never take the last free space itself). Called at open and after
    /// each checkpoint; cheap when held.
    /// </summary>
    public void TryHold()
    {
        lock (_lock)
        {
            if (_held) return;
            long existing = File.Exists(_path) ? new FileInfo(_path).Length : 0;
            if (existing < Bytes && (FileSystem is not { } fs || fs.AvailableBytes + existing < 2 * Bytes)) return;
            try
            {
                using var handle = File.OpenHandle(_path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
                // Really allocated (not sparse): the point is to own the blocks so they can be handed back.
                if (fallocate((int)handle.DangerousGetHandle(), 0, 0, Bytes) != 0)
                {
                    int errno = Marshal.GetLastPInvokeError();
                    _logger.LogWarning("Cannot allocate the {Bytes}-byte metadata reserve file {Path}: {Error}", Bytes, _path, Marshal.GetPInvokeErrorMessage(errno));
                    return;
                }
                _held = true;
            }
            catch (IOException e)
            {
                _logger.LogWarning("Cannot create the metadata reserve file {Path}: {Error}", _path, e.Message);
            }
        }
    }

    /// <summary>Deletes the reserve file so a metadata commit can use its space; false when it was not held.</summary>
    public bool Release()
    {
        lock (_lock)
        {
            if (!_held) return false;
            File.Delete(_path);
            _held = false;
        }
        _logger.LogWarning("The file system holding {Directory} is full: released the {Bytes}-byte metadata reserve so the metadata commit can go on; free space (delete volumes or snapshots, or grow the file system)",
            _directory, Bytes);
        return true;
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int fallocate(int fd, int mode, long offset, long len);
}
