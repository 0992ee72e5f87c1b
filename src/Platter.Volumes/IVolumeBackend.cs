namespace Platter.Volumes;

/// <summary>
/// A volume store as the server, the management API and the CLI see it: the catalog of volumes, snapshots and
/// clones, and handles for I/O. Two backends implement it: the embedded engine (LMDB + a data file,
/// <c>Platter.Storage</c>) and volumes as RBD images in a Ceph pool (<c>Platter.Rbd</c>).
/// </summary>
/// <remarks>
/// <para>Names follow <see cref="VolumeNames"/>; every method validates its arguments and reports a refusal or an
/// expected failure as a <see cref="StorageException"/> with the <see cref="StorageError"/> a caller can act on.
/// Any other exception is a bug or a broken store.</para>
/// <para>Catalog methods are synchronous: the embedded engine completes them in memory plus one journaled commit, and
/// librbd's catalog calls are blocking C calls, so an async signature would only hide a thread that waits. Callers
/// on the network side run them off their I/O loop (the management API does: ASP.NET Core request threads).</para>
/// <para>Implementations are thread-safe: catalog calls and I/O on any number of handles may run concurrently.</para>
/// </remarks>
public interface IVolumeBackend : IDisposable
{
    /// <summary>Which backend this is, as users see it: <c>embedded</c> or <c>rbd</c>.</summary>
    string Kind { get; }

    /// <summary>Where the store lives, for logs and <c>volume info</c>: a directory, or <c>rbd:POOL</c>.</summary>
    string Location { get; }

    /// <summary>
    /// Every volume, ordered by name. <see cref="VolumeInfo.AllocatedBytes"/> is null where counting it would walk each
    /// image (RBD): a list must cost O(volumes), not O(their allocated size).
    /// </summary>
    IReadOnlyList<VolumeInfo> ListVolumes();

    /// <summary>One volume; NotFound when there is none by that name. Allocated bytes as in <see cref="ListVolumes"/>.</summary>
    VolumeInfo GetVolumeInfo(string name);

    /// <summary>
    /// One volume; with <paramref name="withAllocation"/> its allocated bytes are counted even where that walks the
    /// image (RBD: <c>rbd du</c>'s cost), so <see cref="VolumeInfo.AllocatedBytes"/> is never null then.
    /// </summary>
    VolumeInfo GetVolumeInfo(string name, bool withAllocation);

    /// <summary>One volume, or false when there is none by that name ("not found" is a normal answer here).</summary>
    bool TryGetVolumeInfo(string name, out VolumeInfo? info);

    /// <summary>Creates a thin volume of <paramref name="sizeBytes"/> (a multiple of 512). AlreadyExists, InvalidName, InvalidArgument.</summary>
    VolumeInfo CreateVolume(string name, long sizeBytes);

    /// <summary>Renames a volume (its snapshots follow it). NotFound, AlreadyExists, InvalidName.</summary>
    void RenameVolume(string name, string newName);

    /// <summary>
    /// Grows a volume, or with <paramref name="allowShrink"/> shrinks it (data past the new end is discarded); a smaller
    /// size without the flag is refused with InvalidArgument and changes nothing (like <c>rbd resize --allow-shrink</c>).
    /// </summary>
    void ResizeVolume(string name, long newSizeBytes, bool allowShrink = false);

    /// <summary>Deletes a volume; with snapshots only when <paramref name="recursive"/> (HasDependents otherwise), never while a snapshot of it has clones.</summary>
    void DeleteVolume(string name, bool recursive);

    /// <summary>
    /// Takes a point-in-time, read-only snapshot of a volume in O(1) of the volume's size. The answer leaves
    /// <see cref="SnapshotInfo.AllocatedBytes"/> null where knowing it would cost a walk of the image (RBD):
    /// <see cref="GetSnapshotInfo"/> or <see cref="GetSpaceUsage"/> computes it when asked.
    /// </summary>
    SnapshotInfo CreateSnapshot(string volume, string snapshot);

    /// <summary>A volume's snapshots, oldest first (allocated bytes as in <see cref="CreateSnapshot"/>: null where costly).</summary>
    IReadOnlyList<SnapshotInfo> ListSnapshots(string volume);

    /// <summary>Every snapshot of every volume (allocated bytes as in <see cref="CreateSnapshot"/>: null where costly).</summary>
    IReadOnlyList<SnapshotInfo> ListSnapshots();

    /// <summary>One snapshot, allocated bytes included (always computed); NotFound when the volume or the snapshot does not exist.</summary>
    SnapshotInfo GetSnapshotInfo(string volume, string snapshot);

    /// <summary>Deletes a snapshot and frees what only it held; HasDependents while clones of it exist.</summary>
    void DeleteSnapshot(string volume, string snapshot);

    /// <summary>Creates a writable volume <paramref name="newVolume"/> whose content starts as the snapshot's.</summary>
    VolumeInfo CloneSnapshot(string volume, string snapshot, string newVolume);

    /// <summary>
    /// Makes a clone independent of its origin snapshot, so the snapshot (and its volume) can be deleted; the clone's
    /// content does not change. Copies the data the clone still shares with the origin (the embedded engine: every
    /// block the clone has not overwritten; RBD: <c>rbd_flatten</c>), so it takes time and space proportional to that
    /// data, and I/O on every volume, this one included, goes on meanwhile. InvalidArgument when the volume is not a
    /// clone, NoSpace when the copy does not fit (the clone is left as it was: still a clone, same content).
    /// </summary>
    FlattenResult FlattenVolume(string name);

    /// <summary>Makes the volume's content the snapshot's again; newer snapshots are deleted only when <paramref name="recursive"/>.</summary>
    void RollbackVolume(string volume, string snapshot, bool recursive);

    /// <summary>Ranges that differ between snapshot <paramref name="fromSnapshot"/> and <paramref name="toSnapshot"/> (the live volume when null).</summary>
    IReadOnlyList<ChangedExtent> Diff(string volume, string fromSnapshot, string? toSnapshot);

    /// <summary>Space held by each volume and snapshot: allocated, unique and shared.</summary>
    IReadOnlyList<SpaceUsage> GetSpaceUsage();

    /// <summary>Space of the whole store.</summary>
    StoreUsage GetUsage();

    /// <summary>Checks the store's consistency; with <paramref name="verifyChecksums"/> reads and verifies all data.</summary>
    CheckReport Check(bool verifyChecksums);

    /// <summary>Opens a writable I/O handle on a volume. The caller disposes it.</summary>
    IVolumeHandle OpenVolumeHandle(string name);

    /// <summary>Opens a read-only I/O handle on a snapshot (<c>volume@snapshot</c>). The caller disposes it.</summary>
    IVolumeHandle OpenSnapshotHandle(string volume, string snapshot);

    /// <summary>Makes every write acknowledged on any handle durable.</summary>
    ValueTask FlushAsync(CancellationToken cancellationToken = default);
}
