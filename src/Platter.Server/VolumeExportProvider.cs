using Platter.Nbd;
using Platter.Storage;

namespace Platter.Server;

/// <summary>Every volume of a store is an export named after it.</summary>
public sealed class VolumeExportProvider(VolumeStore store) : INbdExportProvider
{
    /// <inheritdoc />
    public INbdExport? TryOpen(string name)
    {
        if (VolumeNames.Validate(name) is not null) return null;
        try
        {
            return new VolumeExport(store.OpenVolume(name));
        }
        catch (StorageException e) when (e.Error == StorageError.NotFound)
        {
            // "Not found" is an ordinary answer: the protocol replies NBD_REP_ERR_UNKNOWN.
            return null;
        }
    }

    /// <inheritdoc />
    public IReadOnlyList<(string Name, string? Description)> List()
    {
        var volumes = store.ListVolumes();
        var list = new (string, string?)[volumes.Count];
        for (int i = 0; i < volumes.Count; i++)
            list[i] = (volumes[i].Name, $"Platter volume, {SizeText.Format(volumes[i].SizeBytes)}");
        return list;
    }

    /// <summary>None: a client must name the volume it wants.</summary>
    public string? DefaultExportName => null;
}
