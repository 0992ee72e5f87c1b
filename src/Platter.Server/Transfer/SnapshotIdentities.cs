using System.Globalization;
using System.Text;

namespace Platter.Server.Transfer;

/// <summary>
/// The identity (a GUID) of each snapshot that was sent or received, kept beside the store in one append-only text
/// file, so an incremental stream can prove that the target's base snapshot holds the same content as the sender's
/// (docs/decisions/0007). A snapshot is keyed by its volume's and its own catalog ids, which are never reused, plus
/// its creation time: a deleted snapshot's entry can never match a new one. A snapshot taken locally gets a random
/// identity the first time it is sent; a received one takes the identity the stream carries.
/// </summary>
/// <remarks>
/// Each line is <c>VOLUME_ID SNAPSHOT_ID CREATED_TICKS GUID</c>, appended and fsynced before the caller goes on;
/// a torn last line (a crash while appending) is ignored at load. Lines of deleted snapshots stay until the file is
/// compacted at open, which drops every line whose snapshot no longer exists. Thread-safe.
/// </remarks>
public sealed class SnapshotIdentities
{
    /// <summary>File name inside the server's state directory (the store directory).</summary>
    public const string FileName = "snapshot-identities";

    private readonly string _path;
    private readonly Lock _lock = new();
    private readonly Dictionary<(long Volume, long Snapshot), (long Ticks, Guid Id)> _ids = new();

    private SnapshotIdentities(string path) => _path = path;

    /// <summary>Loads the file in <paramref name="directory"/> (none yet is an empty registry) and compacts it against <paramref name="store"/>.</summary>
    public static SnapshotIdentities Open(string directory, IVolumeBackend store)
    {
        var registry = new SnapshotIdentities(Path.Combine(directory, FileName));
        if (!File.Exists(registry._path)) return registry;
        int lines = 0;
        foreach (var line in File.ReadAllLines(registry._path))
        {
            lines++;
            var parts = line.Split(' ');
            if (parts.Length != 4
                || !long.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out var volume)
                || !long.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out var snapshot)
                || !long.TryParse(parts[2], NumberStyles.None, CultureInfo.InvariantCulture, out var ticks)
                || !Guid.TryParseExact(parts[3], "N", out var id))
                continue; // a torn last line: its snapshot simply has no identity yet
            registry._ids[(volume, snapshot)] = (ticks, id);
        }
        var live = new HashSet<(long, long)>();
        foreach (var v in store.ListVolumes())
            foreach (var s in store.ListSnapshots(v.Name))
                live.Add((v.Id, s.Id));
        var stale = registry._ids.Keys.Where(k => !live.Contains(k)).ToList();
        foreach (var k in stale) registry._ids.Remove(k);
        if (stale.Count > 0 || lines != registry._ids.Count) registry.Rewrite();
        return registry;
    }

    /// <summary>The snapshot's identity, or null when it has none (taken locally and never sent).</summary>
    public Guid? Find(VolumeInfo volume, SnapshotInfo snapshot)
    {
        lock (_lock)
        {
            return _ids.TryGetValue((volume.Id, snapshot.Id), out var entry) && entry.Ticks == snapshot.CreatedUtc.UtcTicks ? entry.Id : null;
        }
    }

    /// <summary>The snapshot's identity, given a new random one (made durable) when it has none.</summary>
    public Guid GetOrAssign(VolumeInfo volume, SnapshotInfo snapshot)
    {
        lock (_lock)
        {
            if (Find(volume, snapshot) is { } id) return id;
            id = Guid.NewGuid();
            Record(volume, snapshot, id);
            return id;
        }
    }

    /// <summary>Records (durably) that <paramref name="snapshot"/> holds the content identified by <paramref name="id"/>.</summary>
    public void Record(VolumeInfo volume, SnapshotInfo snapshot, Guid id)
    {
        lock (_lock)
        {
            _ids[(volume.Id, snapshot.Id)] = (snapshot.CreatedUtc.UtcTicks, id);
            using var file = new FileStream(_path, FileMode.Append, FileAccess.Write, FileShare.Read, 4096, FileOptions.None);
            file.Write(Encoding.ASCII.GetBytes(Line(volume.Id, snapshot.Id, snapshot.CreatedUtc.UtcTicks, id)));
            // The identity must be on disk before the receive reports success or the stream goes out.
            file.Flush(flushToDisk: true);
        }
    }

    private static string Line(long volume, long snapshot, long ticks, Guid id) =>
        string.Create(CultureInfo.InvariantCulture, $"{volume} {snapshot} {ticks} {id:N}\n");

    private void Rewrite()
    {
        var temp = _path + ".tmp";
        using (var file = new FileStream(temp, FileMode.Create, FileAccess.Write))
        {
            foreach (var ((volume, snapshot), (ticks, id)) in _ids)
                file.Write(Encoding.ASCII.GetBytes(Line(volume, snapshot, ticks, id)));
            file.Flush(flushToDisk: true);
        }
        // rename(2) replaces the file atomically: a crash leaves the old or the new list, never a mix.
        File.Move(temp, _path, overwrite: true);
    }
}
