using Platter.Volumes;

namespace Platter.Server;

/// <summary>One user of a volume or snapshot, as <see cref="VolumeUsers"/> lists it.</summary>
/// <param name="Door">How it reaches the volume: <see cref="VolumeUsers.Nbd"/> or <see cref="VolumeUsers.VhostUser"/>.</param>
/// <param name="Peer">Who: <c>ADDR:PORT</c> or <c>unix pid PID uid UID</c>.</param>
/// <param name="Name">What it uses, by its current name (the volume, or <c>volume@snapshot</c>).</param>
/// <param name="SinceUtc">Since when.</param>
/// <param name="ReadOnly">It cannot write.</param>
/// <param name="Tls">Its connection runs over TLS.</param>
internal sealed record VolumeUserInfo(string Door, string Peer, string Name, DateTimeOffset SinceUtc, bool ReadOnly, bool Tls);

/// <summary>
/// The one registry of who uses each volume, whatever the front door: every NBD export a connection opens and every
/// vhost-user front-end is added here while it lasts. <c>platter volume status</c> lists these users, delete and rollback
/// are refused while there are any (unless forced), and writers are kept to one front door per volume: NBD connections
/// of a volume may share it (the engine's flush covers every handle, so NBD multi-conn stays correct), a vhost-user
/// device writes it alone, so a guest's vhost-user disk and an NBD client never write the same blocks behind each
/// other's page cache.
/// </summary>
/// <remarks>
/// Users are matched by the current name of the handle they hold, so a volume renamed under a connected client is still
/// found under its new name. One lock, held only to update or copy the list (never across I/O or a callback).
/// </remarks>
internal sealed class VolumeUsers
{
    /// <summary>The NBD front door.</summary>
    public const string Nbd = "NBD";

    /// <summary>The vhost-user-blk front door.</summary>
    public const string VhostUser = "vhost-user";

    private readonly List<Entry> _entries = [];
    private readonly object _lock = new();

    /// <summary>
    /// Adds a user of <paramref name="volume"/> (a volume's or a snapshot's handle) through <paramref name="door"/>;
    /// dispose the result when it ends. A writer (not <paramref name="readOnly"/>) is refused with a
    /// <see cref="StorageException"/> (InUse) when another door writes the volume, or when vhost-user asks for a volume
    /// that already has a writer (one device per volume). <paramref name="peer"/> and <paramref name="tls"/> name the user
    /// when it is listed; a front door that learns them later sets them through <see cref="Registration.Describe"/>.
    /// </summary>
    public Registration Add(IVolumeHandle volume, string door, bool readOnly, string peer = "", bool tls = false)
    {
        ArgumentNullException.ThrowIfNull(volume);
        var entry = new Entry(volume, door, readOnly, DateTimeOffset.UtcNow) { Peer = peer, Tls = tls };
        lock (_lock)
        {
            if (!readOnly)
            {
                string name = volume.Name;
                int writers = 0;
                string? otherDoor = null;
                foreach (var e in _entries)
                {
                    if (e.ReadOnly || e.Volume.Name != name) continue;
                    writers++;
                    otherDoor ??= e.Door;
                }
                if (otherDoor is not null && (otherDoor != door || door == VhostUser))
                {
                    throw new StorageException(StorageError.InUse,
                        $"volume '{name}' is being written over {otherDoor} ({writers} connection(s)); a volume is served read-write " +
                        $"through one front door at a time: disconnect that client first, or use a snapshot for read-only access");
                }
            }
            _entries.Add(entry);
        }
        return new Registration(this, entry);
    }

    /// <summary>The users of volume <paramref name="volume"/> and, with <paramref name="snapshotsToo"/>, of its snapshots, oldest first.</summary>
    public List<VolumeUserInfo> UsersOf(string volume, bool snapshotsToo)
    {
        var result = new List<VolumeUserInfo>();
        foreach (var u in All())
        {
            bool isSnapshot = VolumeNames.TrySplitSnapshotName(u.Name, out var owner, out _);
            if (owner == volume && (!isSnapshot || snapshotsToo)) result.Add(u);
        }
        return result;
    }

    /// <summary>Every user now, oldest first.</summary>
    public List<VolumeUserInfo> All()
    {
        Entry[] copy;
        lock (_lock) copy = [.. _entries];
        var result = new List<VolumeUserInfo>(copy.Length);
        foreach (var e in copy) result.Add(new VolumeUserInfo(e.Door, e.Peer, e.Volume.Name, e.SinceUtc, e.ReadOnly, e.Tls));
        result.Sort((a, b) => a.SinceUtc.CompareTo(b.SinceUtc));
        return result;
    }

    /// <summary>The front door writing <paramref name="volume"/> now, or null.</summary>
    public string? WriterOf(string volume)
    {
        lock (_lock)
        {
            foreach (var e in _entries)
                if (!e.ReadOnly && e.Volume.Name == volume) return e.Door;
        }
        return null;
    }

    private void Remove(Entry entry)
    {
        lock (_lock) _entries.Remove(entry);
    }

    internal sealed class Entry(IVolumeHandle volume, string door, bool readOnly, DateTimeOffset sinceUtc)
    {
        public IVolumeHandle Volume { get; } = volume;
        public string Door { get; } = door;
        public bool ReadOnly { get; } = readOnly;
        public DateTimeOffset SinceUtc { get; } = sinceUtc;
        // Set once the front door knows who it is (NBD learns the peer after the export is opened).
        public volatile string Peer = "";
        public volatile bool Tls;
    }

    /// <summary>A user's place in the registry: dispose it when the user goes (safe twice).</summary>
    internal sealed class Registration : IDisposable
    {
        private readonly VolumeUsers _owner;
        private readonly Entry _entry;
        private int _done;

        internal Registration(VolumeUsers owner, Entry entry)
        {
            _owner = owner;
            _entry = entry;
        }

        /// <summary>Names the user once its front door knows who it is.</summary>
        public void Describe(string peer, bool tls)
        {
            _entry.Peer = peer;
            _entry.Tls = tls;
        }

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _done, 1) == 0) _owner.Remove(_entry);
        }
    }
}
