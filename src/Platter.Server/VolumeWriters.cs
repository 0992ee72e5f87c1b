using Platter.Volumes;

namespace Platter.Server;

/// <summary>
/// Which front door writes each volume: NBD or vhost-user, never both at once. NBD connections of one volume share
/// the claim (the engine's flush covers every handle, so NBD multi-conn stays correct); a vhost-user device holds it
/// alone. Both front doors ask here before they serve a volume read-write, so a guest's vhost-user disk and an NBD
/// client can never write the same blocks behind each other's page cache.
/// </summary>
internal sealed class VolumeWriters
{
    /// <summary>The NBD front door.</summary>
    public const string Nbd = "NBD";

    /// <summary>The vhost-user-blk front door.</summary>
    public const string VhostUser = "vhost-user";

    private readonly Dictionary<string, (string Door, int Count)> _holders = new(StringComparer.Ordinal);
    private readonly object _lock = new();

    /// <summary>
    /// Claims <paramref name="volume"/> for writing through <paramref name="door"/>; dispose the claim when the
    /// connection ends. Throws <see cref="StorageException"/> (InUse) when the other door holds it, or when
    /// vhost-user asks for a volume that already has a writer of its own kind (one device per volume).
    /// </summary>
    public IDisposable Claim(string volume, string door)
    {
        lock (_lock)
        {
            if (_holders.TryGetValue(volume, out var holder))
            {
                if (holder.Door != door || door == VhostUser)
                {
                    throw new StorageException(StorageError.InUse,
                        $"volume '{volume}' is being written over {holder.Door} ({holder.Count} connection(s)); a volume is served read-write " +
                        $"through one front door at a time: disconnect that client first, or use a snapshot for read-only access");
                }
                _holders[volume] = (door, holder.Count + 1);
            }
            else
            {
                _holders[volume] = (door, 1);
            }
        }
        return new Release(this, volume);
    }

    /// <summary>The front door writing <paramref name="volume"/> now, or null.</summary>
    public string? HolderOf(string volume)
    {
        lock (_lock) return _holders.TryGetValue(volume, out var h) ? h.Door : null;
    }

    private void Drop(string volume)
    {
        lock (_lock)
        {
            if (!_holders.TryGetValue(volume, out var h)) return;
            if (h.Count <= 1) _holders.Remove(volume);
            else _holders[volume] = (h.Door, h.Count - 1);
        }
    }

    private sealed class Release(VolumeWriters owner, string volume) : IDisposable
    {
        private int _done;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _done, 1) == 0) owner.Drop(volume);
        }
    }
}
