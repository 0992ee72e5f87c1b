using Platter.Nbd;
using Platter.Storage;

namespace Platter.Server;

/// <summary>Every volume of a store is an export named after it.</summary>
/// <param name="store">The open store.</param>
/// <param name="readOnly">Serve every export read-only, whatever the volume allows.</param>
public sealed class VolumeExportProvider(VolumeStore store, bool readOnly = false) : INbdExportProvider
{
    /// <summary>True when every export is served read-only.</summary>
    public bool ReadOnly => readOnly;

    /// <inheritdoc />
    public INbdExport? TryOpen(string name)
    {
        if (VolumeNames.Validate(name) is not null) return null;
        try
        {
            return new VolumeExport(store.OpenVolume(name), readOnly);
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
