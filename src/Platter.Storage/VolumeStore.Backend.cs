namespace Platter.Storage;

// The embedded engine as a backend behind the seam the server, management API and CLI use (Platter.Volumes).
// Everything else of the seam is the store's own public surface; these members only adapt names and types.
public sealed partial class VolumeStore : IVolumeBackend
{
    /// <summary><c>embedded</c>: LMDB metadata and a local data file.</summary>
    public string Kind => "embedded";

    /// <summary>The store directory.</summary>
    public string Location => Directory;

    IVolumeHandle IVolumeBackend.OpenVolumeHandle(string name) => OpenVolume(name);

    IVolumeHandle IVolumeBackend.OpenSnapshotHandle(string volume, string snapshot) => OpenSnapshot(volume, snapshot);
}
