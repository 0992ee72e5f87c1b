using System.Text.Json;
using Microsoft.Extensions.Logging;
using Platter.Server.Api;

namespace Platter.Server.Transfer;

/// <summary>
/// Applies a send stream through the backend seam, all or nothing (docs/decisions/0007):
/// <list type="bullet">
/// <item>A full stream creates the target: it is written into a new volume under a temporary name, and only after
/// the end record has been verified does that volume get its snapshot and take the target's name (one catalog
/// rename). A failure deletes the temporary volume; the target never existed.</item>
/// <item>An incremental stream is checked before anything is written: the target's newest snapshot must carry the
/// base's name and identity, and the volume must not have changed since it. It is then applied in place, and only
/// after the end record has been verified is the new snapshot taken. A failure rolls the volume back to the base
/// snapshot, which restores its content and size exactly: the target is as it was.</item>
/// </list>
/// A crash while applying leaves a marker file; <see cref="Recover"/> (run when the server starts, before it
/// serves) finishes the job the same way: delete the temporary volume, or roll back to the base — unless the new
/// snapshot already exists, in which case the receive had completed and only its identity is recorded.
/// </summary>
public sealed class VolumeReceiver
{
    /// <summary>Directory (inside the state directory) of markers of receives in progress.</summary>
    public const string MarkerDirectoryName = "receiving";

    private const string TempPrefix = "receive-tmp-";

    private readonly IVolumeBackend _store;
    private readonly SnapshotIdentities _identities;
    private readonly string _markers;
    private readonly ILogger _log;
    // One receive per target at a time: two would interleave writes and both roll back to the same base.
    private readonly HashSet<string> _busy = new(StringComparer.Ordinal);

    /// <summary>A receiver keeping its markers under <paramref name="stateDirectory"/>.</summary>
    public VolumeReceiver(IVolumeBackend store, SnapshotIdentities identities, string stateDirectory, ILogger log)
    {
        _store = store;
        _identities = identities;
        _markers = Path.Combine(stateDirectory, MarkerDirectoryName);
        _log = log;
    }

    /// <summary>Reads, verifies and applies one stream into <paramref name="target"/>.</summary>
    public async Task<ReceiveSummary> ReceiveAsync(string target, Stream input, CancellationToken cancellationToken)
    {
        VolumeNames.ThrowIfInvalid(target);
        lock (_busy)
        {
            if (!_busy.Add(target))
                throw new StorageException(StorageError.InUse, $"a receive into '{target}' is already running");
        }
        try
        {
            var reader = new SendStreamReader(input);
            var header = await reader.ReadHeaderAsync(cancellationToken).ConfigureAwait(false);
            return header.IsIncremental
                ? await ReceiveIncrementalAsync(target, header, reader, cancellationToken).ConfigureAwait(false)
                : await ReceiveFullAsync(target, header, reader, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            lock (_busy) _busy.Remove(target);
        }
    }

    private async Task<ReceiveSummary> ReceiveFullAsync(string target, SendStreamHeader header, SendStreamReader reader, CancellationToken cancellationToken)
    {
        if (_store.TryGetVolumeInfo(target, out _))
            throw new StorageException(StorageError.AlreadyExists,
                $"volume '{target}' exists: a full stream creates a new volume (receive it under another name, or delete '{target}' first)");
        string temp = TempPrefix + Guid.NewGuid().ToString("N")[..16];
        var marker = new ReceiveMarker(Full: true, target, temp, header.Snapshot, header.SnapshotId, null, 0);
        WriteMarker(marker);
        try
        {
            _store.CreateVolume(temp, header.VolumeSizeBytes);
            var totals = await ApplyAsync(temp, reader, skipZeros: true, cancellationToken).ConfigureAwait(false);
            await _store.FlushAsync(cancellationToken).ConfigureAwait(false);
            _store.CreateSnapshot(temp, header.Snapshot);
            // The commit point: one catalog rename makes the received volume visible under its name.
            _store.RenameVolume(temp, target);
            var info = _store.GetVolumeInfo(target);
            _identities.Record(info, _store.GetSnapshotInfo(target, header.Snapshot), header.SnapshotId);
            DeleteMarker(marker);
            _log.LogInformation("received '{Target}@{Snapshot}' (full stream, {Bytes} bytes)", target, header.Snapshot, reader.BytesRead);
            return new ReceiveSummary(target, header.Snapshot, null, header.VolumeSizeBytes, reader.BytesRead, totals.DataBytes, totals.ZeroBytes);
        }
        catch
        {
            // Not cancellable: a half-received volume must not stay behind because the client went away.
            if (_store.TryGetVolumeInfo(temp, out _)) _store.DeleteVolume(temp, recursive: true);
            DeleteMarker(marker);
            throw;
        }
    }

    private async Task<ReceiveSummary> ReceiveIncrementalAsync(string target, SendStreamHeader header, SendStreamReader reader, CancellationToken cancellationToken)
    {
        string baseName = header.BaseSnapshot!;
        if (!_store.TryGetVolumeInfo(target, out var volume))
            throw new StorageException(StorageError.NotFound,
                $"volume '{target}' does not exist: an incremental stream (from '{baseName}') applies to a volume that holds '{target}@{baseName}'; send a full stream first");
        var snapshots = _store.ListSnapshots(target);
        var newest = snapshots.Count == 0 ? null : snapshots[^1];
        if (newest is null || newest.Name != baseName)
        {
            string has = newest is null ? "has no snapshots" : $"has '{newest.FullName}' as its newest snapshot";
            throw new StorageException(StorageError.InvalidArgument,
                $"wrong base: the stream applies to '{target}@{baseName}', but '{target}' {has}");
        }
        var baseId = _identities.Find(volume!, newest);
        if (baseId != header.BaseSnapshotId)
            throw new StorageException(StorageError.InvalidArgument,
                $"wrong base: '{target}@{baseName}' is not the snapshot this stream was made from (same name, different content identity)");
        if (snapshots.Any(s => s.Name == header.Snapshot))
            throw new StorageException(StorageError.AlreadyExists, $"'{target}@{header.Snapshot}' already exists");
        if (volume!.SizeBytes != newest.SizeBytes || _store.Diff(target, baseName, null).Count > 0)
            throw new StorageException(StorageError.InvalidArgument,
                $"'{target}' has changed since '{target}@{baseName}': roll it back first (platter rollback {target}@{baseName}), then receive again");

        var marker = new ReceiveMarker(Full: false, target, null, header.Snapshot, header.SnapshotId, baseName, volume.Id);
        WriteMarker(marker);
        try
        {
            // The stream carries the sender's size, which may have shrunk (with --allow-shrink there); what lies past
            // the new end stays in the base snapshot, and a failed receive rolls back to it.
            if (header.VolumeSizeBytes != volume.SizeBytes) _store.ResizeVolume(target, header.VolumeSizeBytes, allowShrink: true);
            var totals = await ApplyAsync(target, reader, skipZeros: false, cancellationToken).ConfigureAwait(false);
            await _store.FlushAsync(cancellationToken).ConfigureAwait(false);
            // The commit point: the new snapshot exists only once every record has been verified and written.
            var snap = _store.CreateSnapshot(target, header.Snapshot);
            _identities.Record(_store.GetVolumeInfo(target), snap, header.SnapshotId);
            DeleteMarker(marker);
            _log.LogInformation("received '{Target}@{Snapshot}' (incremental from '{Base}', {Bytes} bytes)", target, header.Snapshot, baseName, reader.BytesRead);
            return new ReceiveSummary(target, header.Snapshot, baseName, header.VolumeSizeBytes, reader.BytesRead, totals.DataBytes, totals.ZeroBytes);
        }
        catch
        {
            _store.RollbackVolume(target, baseName, recursive: false);
            DeleteMarker(marker);
            throw;
        }
    }

    private async Task<(long DataBytes, long ZeroBytes)> ApplyAsync(string volume, SendStreamReader reader, bool skipZeros, CancellationToken cancellationToken)
    {
        using var handle = _store.OpenVolumeHandle(volume);
        long data = 0, zeros = 0;
        while (true)
        {
            var record = await reader.ReadRecordAsync(cancellationToken).ConfigureAwait(false);
            switch (record.Type)
            {
                case SendRecordType.End:
                    return (data, zeros);
                case SendRecordType.Data:
                    await handle.WriteAsync(record.Offset, record.Payload, fua: false, cancellationToken).ConfigureAwait(false);
                    data += record.Length;
                    break;
                case SendRecordType.Zero:
                    // Deallocating keeps the target as sparse as the source; a new volume already reads as zeros.
                    if (!skipZeros) await handle.WriteZeroesAsync(record.Offset, record.Length, deallocate: true, fua: false, cancellationToken).ConfigureAwait(false);
                    zeros += record.Length;
                    break;
            }
        }
    }

    /// <summary>
    /// Finishes receives a crash interrupted (see the class comment). Runs before the server serves anything, so
    /// nothing else touches the volumes it repairs.
    /// </summary>
    public void Recover()
    {
        if (!Directory.Exists(_markers)) return;
        foreach (var path in Directory.GetFiles(_markers, "*.json"))
        {
            ReceiveMarker? marker;
            try
            {
                marker = JsonSerializer.Deserialize(File.ReadAllText(path), ReceiveMarkerJsonContext.Default.ReceiveMarker);
            }
            catch (JsonException)
            {
                marker = null; // torn while being written: nothing had been applied yet (written before the first change)
            }
            if (marker is not null) RecoverOne(marker);
            File.Delete(path);
        }
    }

    private void RecoverOne(ReceiveMarker marker)
    {
        if (marker.Full)
        {
            if (_store.TryGetVolumeInfo(marker.Temp!, out _))
            {
                _store.DeleteVolume(marker.Temp!, recursive: true);
                _log.LogWarning("receive into '{Target}' was interrupted by a crash: deleted its partial volume '{Temp}'", marker.Target, marker.Temp);
            }
            else if (_store.TryGetVolumeInfo(marker.Target, out var done) && _store.ListSnapshots(marker.Target).FirstOrDefault(s => s.Name == marker.Snapshot) is { } snap
                     && _identities.Find(done!, snap) is null)
            {
                _identities.Record(done!, snap, marker.SnapshotId);
            }
            return;
        }
        if (!_store.TryGetVolumeInfo(marker.Target, out var volume) || volume!.Id != marker.VolumeId) return;
        var snapshots = _store.ListSnapshots(marker.Target);
        if (snapshots.FirstOrDefault(s => s.Name == marker.Snapshot) is { } received)
        {
            if (_identities.Find(volume, received) is null) _identities.Record(volume, received, marker.SnapshotId);
            return;
        }
        if (snapshots.Any(s => s.Name == marker.Base))
        {
            _store.RollbackVolume(marker.Target, marker.Base!, recursive: false);
            _log.LogWarning("receive into '{Target}' was interrupted by a crash: rolled it back to '{Target}@{Base}'", marker.Target, marker.Target, marker.Base);
        }
    }

    private string MarkerPath(ReceiveMarker marker) =>
        Path.Combine(_markers, Convert.ToHexString(System.Text.Encoding.UTF8.GetBytes(marker.Target)) + ".json");

    private void WriteMarker(ReceiveMarker marker)
    {
        Directory.CreateDirectory(_markers);
        var path = MarkerPath(marker);
        using (var file = new FileStream(path + ".tmp", FileMode.Create, FileAccess.Write))
        {
            JsonSerializer.Serialize(file, marker, ReceiveMarkerJsonContext.Default.ReceiveMarker);
            // The marker must be durable before the first change it guards.
            file.Flush(flushToDisk: true);
        }
        File.Move(path + ".tmp", path, overwrite: true);
    }

    private void DeleteMarker(ReceiveMarker marker) => File.Delete(MarkerPath(marker));
}

/// <summary>A receive in progress, on disk until it completes or is undone.</summary>
/// <param name="Full">A full stream (into <paramref name="Temp"/>) or an incremental one (into the target in place).</param>
/// <param name="Target">The volume being received.</param>
/// <param name="Temp">For a full stream, the temporary volume being written.</param>
/// <param name="Snapshot">The snapshot the receive creates at its commit point.</param>
/// <param name="SnapshotId">Its identity.</param>
/// <param name="Base">For an incremental stream, the base snapshot to roll back to.</param>
/// <param name="VolumeId">For an incremental stream, the target's catalog id (a volume by the same name later is another).</param>
public sealed record ReceiveMarker(bool Full, string Target, string? Temp, string Snapshot, Guid SnapshotId, string? Base, long VolumeId);

/// <summary>Serializer for the marker file.</summary>
[System.Text.Json.Serialization.JsonSourceGenerationOptions(JsonSerializerDefaults.Web)]
[System.Text.Json.Serialization.JsonSerializable(typeof(ReceiveMarker))]
internal sealed partial class ReceiveMarkerJsonContext : System.Text.Json.Serialization.JsonSerializerContext;
