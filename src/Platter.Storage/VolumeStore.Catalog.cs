using Platter.Storage.Internal;

namespace Platter.Storage;

public sealed partial class VolumeStore
{
    /// <summary>Creates a thin volume; durable on return.</summary>
    public VolumeInfo CreateVolume(string name, long sizeBytes)
    {
        VolumeNames.ThrowIfInvalid(name);
        return CreateVolumeUnchecked(name, sizeBytes);
    }

    /// <summary>
    /// <see cref="CreateVolume"/> under the older naming rules (<see cref="VolumeNames.ValidateExisting"/>): for tests
    /// that need a store as an older version left it, holding a name today's rules refuse.
    /// </summary>
    internal VolumeInfo CreateVolumeUnchecked(string name, long sizeBytes)
    {
        if (VolumeNames.ValidateExisting(name) is { } reason) throw new StorageException(StorageError.InvalidName, reason);
        ValidateSize(sizeBytes);
        return Admin(() =>
        {
            VolumeState state;
            lock (_catalogLock)
            {
                if (_byName.ContainsKey(name)) throw new StorageException(StorageError.AlreadyExists, $"a volume named '{name}' already exists");
                long id = _nextId++, layer = _nextId++;
                state = new VolumeState(id, name, sizeBytes, DateTimeOffset.UtcNow, layer, origin: null);
                _catalogOps.AppendCreateVolume(state.Id, sizeBytes, state.Created, layer, 0, name);
            }
            CommitNow();
            // Visible only once durable, so no write to it can be journaled before its creation.
            lock (_catalogLock)
            {
                _byName.Add(name, state);
                _byId.Add(state.Id, state);
            }
            return state.ToInfo();
        });
    }

    public void RenameVolume(string name, string newName)
    {
        VolumeNames.ThrowIfInvalid(newName);
        Admin(() =>
        {
            lock (_catalogLock)
            {
                if (!_byName.TryGetValue(name, out var state)) throw new StorageException(StorageError.NotFound, $"no volume named '{name}'");
                if (name == newName) return 0;
                if (_byName.ContainsKey(newName)) throw new StorageException(StorageError.AlreadyExists, $"a volume named '{newName}' already exists");
                _byName.Remove(name);
                _byName.Add(newName, state);
                lock (state.Lock) state.Name = newName;
                _catalogOps.AppendRenameVolume(state.Id, newName);
            }
            CommitNow();
            return 0;
        });
    }

    /// <summary>
    /// Grows, or with <paramref name="allowShrink"/> shrinks, a volume; shrinking drops the data past the new end,
    /// so without the flag it is refused (InvalidArgument), like <c>rbd resize --allow-shrink</c>. Durable on return.
    /// </summary>
    public void ResizeVolume(string name, long newSizeBytes, bool allowShrink = false)
    {
        ValidateSize(newSizeBytes);
        Admin(() =>
        {
            var state = Find(name);
            long oldSize;
            lock (state.Lock) oldSize = state.SizeBytes;
            if (newSizeBytes < oldSize && !allowShrink)
                throw new StorageException(StorageError.InvalidArgument,
                    $"shrinking volume '{name}' from {oldSize} to {newSizeBytes} bytes discards the data past the new end; it needs allow-shrink (platter volume resize --allow-shrink)");
            if (newSizeBytes < oldSize && newSizeBytes % Layout.BlockBytes != 0)
            {
                // The new last block keeps only its head: zero the rest so a later grow reads zeros there.
                long tailEnd = Math.Min(oldSize, (newSizeBytes | (Layout.BlockBytes - 1)) + 1);
                ZeroRange(state, newSizeBytes, tailEnd - newSizeBytes);
            }
            lock (state.Lock)
            {
                state.SizeBytes = newSizeBytes;
                if (newSizeBytes < oldSize)
                {
                    long firstDropped = state.SizeBlocks;
                    var parent = state.Parent;
                    state.Map.UnmapRange(firstDropped, long.MaxValue, (block, old) => FreeIfUnshared(state, parent, block, old));
                    AppendUnmapOps(state, parent, firstDropped, long.MaxValue);
                }
            }
            lock (_catalogLock) _catalogOps.AppendResizeVolume(state.Id, newSizeBytes);
            CommitNow();
            return 0;
        });
    }

    /// <summary>Deletes a volume without snapshots and reclaims its space. Open handles start failing with Closed.</summary>
    public void DeleteVolume(string name) => DeleteVolume(name, recursive: false);

    private static void ValidateSize(long sizeBytes)
    {
        if (sizeBytes <= 0) throw new StorageException(StorageError.InvalidArgument, "a volume size must be greater than zero");
        if (sizeBytes > Layout.VolumeBytesMax) throw new StorageException(StorageError.InvalidArgument, $"a volume size is at most {Layout.VolumeBytesMax >> 50} PiB");
        if (sizeBytes % Layout.SizeAlignmentBytes != 0)
            throw new StorageException(StorageError.InvalidArgument, $"a volume size must be a multiple of {Layout.SizeAlignmentBytes} bytes (got {sizeBytes})");
    }

    private T Admin<T>(Func<T> action)
    {
        ThrowIfDisposed();
        ThrowIfFailed();
        _adminLock.Wait();
        try
        {
            return action();
        }
        finally
        {
            _adminLock.Release();
        }
    }
}
