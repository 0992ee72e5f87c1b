namespace Platter.Storage;

public sealed partial class VolumeStore
{
    /// <summary>Takes a snapshot of the volume's current content in O(1); durable on return.</summary>
    public SnapshotInfo CreateSnapshot(string volume, string snapshot) => throw new NotImplementedException();

    /// <summary>The volume's snapshots, oldest first. NotFound when there is no such volume.</summary>
    public IReadOnlyList<SnapshotInfo> ListSnapshots(string volume) => throw new NotImplementedException();

    /// <summary>Every snapshot of every volume, by volume name then age.</summary>
    public IReadOnlyList<SnapshotInfo> ListSnapshots() => throw new NotImplementedException();

    /// <summary>One snapshot's info, or NotFound.</summary>
    public SnapshotInfo GetSnapshotInfo(string volume, string snapshot) => throw new NotImplementedException();

    /// <summary>
    /// Deletes a snapshot; space only it held is reclaimed in the background. Refused with HasDependents (the
    /// message names them) while clones of it exist.
    /// </summary>
    public void DeleteSnapshot(string volume, string snapshot) => throw new NotImplementedException();

    /// <summary>Creates a writable volume sharing all data with the snapshot, in O(1); durable on return.</summary>
    public VolumeInfo CloneSnapshot(string volume, string snapshot, string newVolume) => throw new NotImplementedException();

    /// <summary>
    /// Returns the volume to the snapshot's content (and size) in O(1); what was written since is reclaimed in the
    /// background. When newer snapshots exist it is refused with HasDependents unless <paramref name="recursive"/>,
    /// which deletes them (refused still if any of them has clones).
    /// </summary>
    public void RollbackVolume(string volume, string snapshot, bool recursive = false) => throw new NotImplementedException();

    /// <summary>
    /// Deletes a volume. With snapshots it is refused with HasDependents unless <paramref name="recursive"/>, which
    /// deletes them too (refused still if any of them has clones).
    /// </summary>
    public void DeleteVolume(string name, bool recursive) => throw new NotImplementedException();

    /// <summary>
    /// Ranges whose content differs between <paramref name="fromSnapshot"/> and <paramref name="toSnapshot"/> (null:
    /// the volume's current content), in offset order, coalesced. Time is proportional to the change, not the size.
    /// </summary>
    public IReadOnlyList<ChangedExtent> Diff(string volume, string fromSnapshot, string? toSnapshot) => throw new NotImplementedException();

    /// <summary>Per volume and snapshot: bytes held alone and bytes shared.</summary>
    public IReadOnlyList<SpaceUsage> GetSpaceUsage() => throw new NotImplementedException();

    /// <summary>Opens a read-only handle on a snapshot (Volume.Name is <c>volume@snapshot</c>).</summary>
    public Volume OpenSnapshot(string volume, string snapshot) => throw new NotImplementedException();
}
