using Platter.Nbd;
using Platter.Server.Metrics;
using Platter.Storage;

namespace Platter.Server;

/// <summary>
/// Every volume of a store is an export named after it, and every snapshot a read-only export named
/// <c>volume@snapshot</c>.
/// </summary>
/// <param name="store">The open store.</param>
/// <param name="readOnly">Serve every export read-only, whatever the volume allows.</param>
public sealed class VolumeExportProvider(IVolumeBackend store, bool readOnly = false) : INbdExportProvider
{
    /// <summary>Where exports count their requests; null counts nothing.</summary>
    internal PlatterMetrics? Metrics { get; init; }

    /// <summary>
    /// The registry of volume users shared with vhost-user: every export is added (read-only or not), and a writable
    /// export of a volume vhost-user writes is refused with a message saying so. Null: nobody keeps count.
    /// </summary>
    internal VolumeUsers? Users { get; init; }

    /// <summary>True when every export is served read-only.</summary>
    public bool ReadOnly => readOnly;

    /// <inheritdoc />
    public INbdExport? TryOpen(string name)
    {
        bool isSnapshot = VolumeNames.TrySplitSnapshotName(name, out var volume, out var snapshot);
        // Names no volume or snapshot can have are "unknown export", not an error worth a log line. The older, looser
        // rules apply: a volume created under them is still served.
        if (VolumeNames.ValidateExisting(volume) is not null) return null;
        if (isSnapshot && VolumeNames.ValidateExisting(snapshot) is not null) return null;
        try
        {
            // A snapshot handle refuses writes itself; readOnly: true makes the export refuse them before the engine.
            var handle = isSnapshot ? store.OpenSnapshotHandle(volume, snapshot) : store.OpenVolumeHandle(name);
            VolumeUsers.Registration? user = null;
            try
            {
                // NBD has no read-only open: every connection to a writable export may write, so each one is a writer.
                user = Users?.Add(handle, VolumeUsers.Nbd, readOnly: readOnly || isSnapshot);
            }
            catch
            {
                handle.Dispose();
                throw;
            }
            // Series are made only for names that exist, so clients guessing names cannot grow the metrics.
            return new VolumeExport(handle, readOnly || isSnapshot, Metrics?.ForVolume(name), user);
        }
        catch (StorageException e) when (e.Error == StorageError.NotFound)
        {
            // "Not found" is an ordinary answer: the protocol replies NBD_REP_ERR_UNKNOWN.
            return null;
        }
        catch (StorageException e)
        {
            // It exists but cannot be opened (a failed or closing store): the client and the log get the reason.
            throw new NbdExportUnavailableException(e.Message, shuttingDown: e.Error == StorageError.Closed, e);
        }
    }

    /// <inheritdoc />
    public IReadOnlyList<(string Name, string? Description)> List()
    {
        var volumes = store.ListVolumes();
        var snapshots = store.ListSnapshots();
        var list = new List<(string, string?)>(volumes.Count + snapshots.Count);
        foreach (var v in volumes)
            list.Add((v.Name, $"Platter volume, {SizeText.Format(v.SizeBytes)}"));
        foreach (var s in snapshots)
            list.Add((s.FullName, $"Platter snapshot (read-only), {SizeText.Format(s.SizeBytes)}"));
        return list;
    }

    /// <summary>None: a client must name the volume it wants.</summary>
    public string? DefaultExportName => null;
}
