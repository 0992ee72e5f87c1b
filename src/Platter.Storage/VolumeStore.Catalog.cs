using Platter.Storage.Internal;

namespace Platter.Storage;

public sealed partial class VolumeStore
{
    /// <summary>Creates a thin volume; durable on return.</summary>
    public VolumeInfo CreateVolume(string name, long sizeBytes)
    {
        VolumeNames.ThrowIfInvalid(name);
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

    /// <summary>Grows or shrinks; shrinking drops the data past the new end. Durable on return.</summary>
    public void ResizeVolume(string name, long newSizeBytes)
    {
        ValidateSize(newSizeBytes);
        Admin(() =>
        {
            var state = Find(name);
            long oldSize;
            lock (state.Lock) oldSize = state.SizeBytes;
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
        if (_options.Salvage)
            throw new StorageException(StorageError.ReadOnly, "the store is open for salvage (read-only): copy the volumes out, then repair or recreate it");
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
