using System.Runtime.InteropServices;
using static Platter.Ceph.Native;

namespace Platter.Ceph;

/// <summary>RBD image feature bits (src/include/rbd/features.h).</summary>
[Flags]
public enum RbdFeatures : ulong
{
    None = 0,
    Layering = 1 << 0,
    StripingV2 = 1 << 1,
    ExclusiveLock = 1 << 2,
    ObjectMap = 1 << 3,
    FastDiff = 1 << 4,
    DeepFlatten = 1 << 5,
    Journaling = 1 << 6,
    DataPool = 1 << 7,
    Operations = 1 << 8,
}

/// <summary>One snapshot of an image as <c>rbd_snap_list</c> returns it.</summary>
public readonly record struct RbdSnapshot(ulong Id, string Name, ulong SizeBytes);

/// <summary>The image and snapshot a clone was made from.</summary>
public readonly record struct RbdParent(string Pool, string Image, string Snapshot, ulong SnapshotId);

/// <summary>A child (clone) of an image: its pool and name; <c>InTrash</c> when it waits in the RBD trash.</summary>
public readonly record struct RbdChild(string Pool, string Image, bool InTrash);

/// <summary>Image-level operations on a pool (librbd's functions that take an I/O context).</summary>
public static unsafe class RbdImages
{
    /// <summary>
    /// Creates a format-2 image. <paramref name="order"/> is log2 of the object size (22: 4 MiB, librbd's default).
    /// EEXIST when the name is taken.
    /// </summary>
    public static void Create(RadosIoContext io, string name, ulong sizeBytes, RbdFeatures features, int order = 22)
    {
        rbd_image_options_create(out nint opts);
        try
        {
            Check(rbd_image_options_set_uint64(opts, RBD_IMAGE_OPTION_FORMAT, 2), "rbd image option format");
            Check(rbd_image_options_set_uint64(opts, RBD_IMAGE_OPTION_FEATURES, (ulong)features), "rbd image option features");
            Check(rbd_image_options_set_uint64(opts, RBD_IMAGE_OPTION_ORDER, (ulong)order), "rbd image option order");
            Check(rbd_create4(io.Handle, name, sizeBytes, opts), $"creating image {io.Pool}/{name}");
        }
        finally
        {
            rbd_image_options_destroy(opts);
        }
    }

    /// <summary>Clones <paramref name="parent"/>@<paramref name="snapshot"/> as a format-2 clone (no protect step).</summary>
    public static void Clone(RadosIoContext io, string parent, string snapshot, string child, RbdFeatures features)
    {
        rbd_image_options_create(out nint opts);
        try
        {
            Check(rbd_image_options_set_uint64(opts, RBD_IMAGE_OPTION_FORMAT, 2), "rbd image option format");
            Check(rbd_image_options_set_uint64(opts, RBD_IMAGE_OPTION_FEATURES, (ulong)features), "rbd image option features");
            Check(rbd_image_options_set_uint64(opts, RBD_IMAGE_OPTION_CLONE_FORMAT, 2), "rbd image option clone format");
            Check(rbd_clone3(io.Handle, parent, snapshot, io.Handle, child, opts),
                $"cloning {io.Pool}/{parent}@{snapshot} as {child}");
        }
        finally
        {
            rbd_image_options_destroy(opts);
        }
    }

    /// <summary>Removes an image. ENOTEMPTY when it has snapshots, EBUSY while another client watches it.</summary>
    public static void Remove(RadosIoContext io, string name) => Check(rbd_remove(io.Handle, name), $"removing image {io.Pool}/{name}");

    public static void Rename(RadosIoContext io, string name, string newName) =>
        Check(rbd_rename(io.Handle, name, newName), $"renaming image {io.Pool}/{name} to {newName}");

    /// <summary>The names of the pool's images (not those in the trash).</summary>
    public static List<string> List(RadosIoContext io)
    {
        nuint capacity = 64;
        while (true)
        {
            var specs = new rbd_image_spec_t[(int)capacity];
            fixed (rbd_image_spec_t* p = specs)
            {
                nuint count = capacity;
                int rc = rbd_list2(io.Handle, p, ref count);
                if (rc == -34) // ERANGE: count now holds the number needed
                {
                    capacity = count;
                    continue;
                }
                Check(rc, $"listing images of pool {io.Pool}");
                var names = new List<string>((int)count);
                for (int i = 0; i < (int)count; i++) names.Add(Utf8(p[i].name));
                rbd_image_spec_list_cleanup(p, count);
                return names;
            }
        }
    }
}

/// <summary>
/// An open RBD image (or a snapshot of one, read-only). Control calls are synchronous; data calls are librbd's
/// asynchronous ones, started with a completion from <see cref="RbdCompletion"/>. Thread-safe, as librbd is.
/// </summary>
public sealed unsafe class RbdImage : IDisposable
{
    private readonly RbdImageHandle _handle;
    private readonly nint _raw;

    private RbdImage(RbdImageHandle handle, RadosIoContext io, string name, string? snapshot)
    {
        _lastCallReturned = Environment.TickCount64; // rbd_open just returned
        _handle = handle;
        _raw = handle.DangerousGetHandle();
        IoContext = io;
        Name = name;
        Snapshot = snapshot;
    }

    /// <summary>
    /// Opens an image, or its snapshot <paramref name="snapshot"/>. <paramref name="readOnly"/> opens without a watch
    /// on the header (no lock, no write).
    /// </summary>
    /// <remarks>
    /// How a writable image is closed (issue 10's librbd race, see DeferredImageClose): by default disposal first waits
    /// out <see cref="WritableCloseGrace"/> since the last synchronous call, then closes. <paramref name="closeLater"/>
    /// is for an image whose owner calls <see cref="ReleaseForLaterClose"/> before disposing it (a served volume, whose
    /// lock must be free the moment its last client leaves): disposal returns at once and the image is closed on the
    /// deferred-close thread once that margin has passed.
    /// </remarks>
    public static RbdImage Open(RadosIoContext io, string name, string? snapshot = null, bool readOnly = false, bool closeLater = false)
    {
        bool writable = !readOnly && snapshot == null;
        int rc = writable
            ? rbd_open(io.Handle, name, out nint raw, null)
            : rbd_open_read_only(io.Handle, name, out raw, snapshot);
        Check(rc, snapshot == null ? $"opening image {io.Pool}/{name}" : $"opening snapshot {io.Pool}/{name}@{snapshot}");
        // A read-only image is closed a grace period after its disposal: see DeferredImageClose (issue 10's abort).
        var handle = new RbdImageHandle { CloseLater = !writable || closeLater };
        handle.Set(raw, io.Handle);
        return new RbdImage(handle, io, name, snapshot) { _writable = writable };
    }

    public RadosIoContext IoContext { get; }

    public string Name { get; }

    public string? Snapshot { get; }

    private string What => Snapshot == null ? $"{IoContext.Pool}/{Name}" : $"{IoContext.Pool}/{Name}@{Snapshot}";

    public ulong Size
    {
        get
        {
            Call(rbd_get_size(_handle, out ulong size), $"size of {What}");
            return size;
        }
    }

    public RbdFeatures Features
    {
        get
        {
            Call(rbd_get_features(_handle, out ulong features), $"features of {What}");
            return (RbdFeatures)features;
        }
    }

    /// <summary>The object size in bytes (each image is striped over objects of this size).</summary>
    public ulong ObjectSize
    {
        get
        {
            rbd_image_info_t info;
            Call(rbd_stat(_handle, &info, (nuint)sizeof(rbd_image_info_t)), $"stat of {What}");
            return info.obj_size;
        }
    }

    /// <summary>The image's id (stable across renames; names its objects <c>rbd_data.ID.*</c>).</summary>
    public string Id
    {
        get
        {
            byte* buffer = stackalloc byte[64];
            Call(rbd_get_id(_handle, buffer, 64), $"id of {What}");
            return Utf8(buffer);
        }
    }

    public DateTimeOffset CreatedAt
    {
        get
        {
            Timespec ts;
            Call(rbd_get_create_timestamp(_handle, &ts), $"creation time of {What}");
            return DateTimeOffset.FromUnixTimeSeconds(ts.tv_sec).AddTicks(ts.tv_nsec / 100);
        }
    }

    /// <summary>Resizes; a shrink is refused with EINVAL unless <paramref name="allowShrink"/>.</summary>
    public void Resize(ulong sizeBytes, bool allowShrink) =>
        Call(rbd_resize2(_handle, sizeBytes, allowShrink, &NoProgress, 0), $"resizing {What} to {sizeBytes} bytes");

    /// <summary>The parent of a clone, or null for an image that is not one.</summary>
    public RbdParent? GetParent()
    {
        rbd_linked_image_spec_t image;
        rbd_snap_spec_t snap;
        int rc = rbd_get_parent(_handle, &image, &snap);
        if (rc == -CephException.ENOENT) return null;
        Call(rc, $"parent of {What}");
        var parent = new RbdParent(Utf8(image.pool_name), Utf8(image.image_name), Utf8(snap.name), snap.id);
        rbd_linked_image_spec_cleanup(&image);
        rbd_snap_spec_cleanup(&snap);
        return parent;
    }

    /// <summary>
    /// Copies the parent's data the clone still reads through into the clone and detaches it (<c>rbd_flatten</c>;
    /// with deep-flatten, from its snapshots too). Blocks for the copy. EINVAL when the image has no parent.
    /// </summary>
    public void Flatten() => Call(rbd_flatten(_handle), $"flattening {What}");

    /// <summary>The clones of the snapshot this handle is opened at (open the snapshot to ask).</summary>
    public List<RbdChild> ListChildren()
    {
        nuint capacity = 16;
        while (true)
        {
            var specs = new rbd_linked_image_spec_t[(int)capacity];
            fixed (rbd_linked_image_spec_t* p = specs)
            {
                nuint count = capacity;
                int rc = rbd_list_children3(_handle, p, ref count);
                if (rc == -34)
                {
                    capacity = count;
                    continue;
                }
                Call(rc, $"children of {What}");
                var children = new List<RbdChild>((int)count);
                for (int i = 0; i < (int)count; i++)
                {
                    children.Add(new RbdChild(Utf8(p[i].pool_name), Utf8(p[i].image_name), p[i].trash != 0));
                }
                rbd_linked_image_spec_list_cleanup(p, count);
                return children;
            }
        }
    }

    /// <summary>An image-metadata value (<c>rbd image-meta get</c>), or null when the key is not set.</summary>
    public string? GetMetadata(string key)
    {
        nuint length = 256;
        while (true)
        {
            var buffer = new byte[(int)length];
            fixed (byte* p = buffer)
            {
                nuint size = length;
                int rc = rbd_metadata_get(_handle, key, p, ref size);
                Returned();
                if (rc == -CephException.ENOENT) return null;
                if (rc == -34)
                {
                    length = size;
                    continue;
                }
                Call(rc, $"metadata {key} of {What}");
                return Utf8(p);
            }
        }
    }

    public void SetMetadata(string key, string value) => Call(rbd_metadata_set(_handle, key, value), $"setting metadata {key} of {What}");

    public void RemoveMetadata(string key)
    {
        int rc = rbd_metadata_remove(_handle, key);
        Returned();
        if (rc != -CephException.ENOENT) Check(rc, $"removing metadata {key} of {What}");
    }

    // ---- snapshots ----

    /// <summary>The image's user snapshots, oldest first.</summary>
    public List<RbdSnapshot> ListSnapshots()
    {
        int capacity = 16;
        while (true)
        {
            var infos = new rbd_snap_info_t[capacity]; // librbd wants room for a terminating entry too
            fixed (rbd_snap_info_t* p = infos)
            {
                int count = capacity;
                int rc = rbd_snap_list(_handle, p, ref count);
                if (rc == -34)
                {
                    capacity = count;
                    continue;
                }
                Call(rc, $"snapshots of {What}");
                var snapshots = new List<RbdSnapshot>(rc);
                for (int i = 0; i < rc; i++) snapshots.Add(new RbdSnapshot(p[i].id, Utf8(p[i].name), p[i].size));
                rbd_snap_list_end(p);
                return snapshots;
            }
        }
    }

    public DateTimeOffset GetSnapshotTimestamp(ulong snapshotId)
    {
        Timespec ts;
        Call(rbd_snap_get_timestamp(_handle, snapshotId, &ts), $"timestamp of a snapshot of {What}");
        return DateTimeOffset.FromUnixTimeSeconds(ts.tv_sec).AddTicks(ts.tv_nsec / 100);
    }

    /// <summary>Creates a snapshot (librbd flushes in-flight writes first). Skips the quiesce hooks: there are none.</summary>
    public void CreateSnapshot(string name) =>
        Call(rbd_snap_create2(_handle, name, 1 /* RBD_SNAP_CREATE_SKIP_QUIESCE */, &NoProgress, 0), $"creating snapshot {What}@{name}");

    /// <summary>Removes a snapshot; EBUSY while clones of it exist (clone format 2 moves it to the trash instead).</summary>
    public void RemoveSnapshot(string name) => Call(rbd_snap_remove(_handle, name), $"removing snapshot {What}@{name}");

    /// <summary>Rolls the image's content back to a snapshot (rewrites every object; needs the exclusive lock).</summary>
    public void RollbackSnapshot(string name) => Call(rbd_snap_rollback(_handle, name), $"rolling {What} back to {name}");

    /// <summary>
    /// Calls <paramref name="callback"/>(offset, length, exists) for every extent in [offset, offset+length) that changed
    /// since <paramref name="fromSnapshot"/> (null: since creation, i.e. what is allocated). <paramref name="includeParent"/>
    /// reports a clone's parent's data too. The callback returning false stops the walk (the call then returns false).
    /// </summary>
    public bool DiffIterate(string? fromSnapshot, ulong offset, ulong length, bool includeParent, bool wholeObject,
        Func<ulong, ulong, bool, bool> callback)
    {
        DiffIteratesOnThisThread++;
        var state = new DiffState(callback);
        var gc = GCHandle.Alloc(state);
        try
        {
            int rc = rbd_diff_iterate2(_handle, fromSnapshot, offset, length, includeParent ? (byte)1 : (byte)0,
                wholeObject ? (byte)1 : (byte)0, &OnDiffExtent, GCHandle.ToIntPtr(gc));
            if (state.Stopped) return false;
            if (state.Failure != null) throw state.Failure;
            Call(rc, fromSnapshot == null ? $"allocated extents of {What}" : $"changes of {What} since {fromSnapshot}");
            return true;
        }
        finally
        {
            gc.Free();
        }
    }

    /// <summary>
    /// How many diff walks this thread started: a test's way to see that a catalog call (a snapshot create) does not
    /// walk the image, without timing it. Per thread, so tests running in parallel do not count each other's walks.
    /// </summary>
    [ThreadStatic] internal static long DiffIteratesOnThisThread;

    private sealed class DiffState(Func<ulong, ulong, bool, bool> callback)
    {
        public readonly Func<ulong, ulong, bool, bool> Callback = callback;
        public bool Stopped;
        public Exception? Failure;
    }

    [UnmanagedCallersOnly]
    private static int OnDiffExtent(ulong offset, nuint length, int exists, nint arg)
    {
        var state = (DiffState)GCHandle.FromIntPtr(arg).Target!;
        try
        {
            if (state.Callback(offset, length, exists != 0)) return 0;
            state.Stopped = true;
            return -125; // ECANCELED: librbd stops the walk and returns it
        }
        catch (Exception e)
        {
            state.Failure = e; // never let an exception cross into native code
            return -125;
        }
    }

    // ---- exclusive lock ----

    /// <summary>
    /// Acquires the exclusive lock explicitly. librbd then switches the image to its standard lock policy: the lock is
    /// not handed over when another client asks for it (that client gets EROFS) until this handle releases it or
    /// someone breaks it. EROFS/EBUSY here when another client holds it.
    /// </summary>
    public void AcquireExclusiveLock() => Call(rbd_lock_acquire(_handle, RBD_LOCK_MODE_EXCLUSIVE), $"locking {What}");

    public void ReleaseExclusiveLock() => Call(rbd_lock_release(_handle), $"unlocking {What}");

    public bool IsExclusiveLockOwner
    {
        get
        {
            Call(rbd_is_exclusive_lock_owner(_handle, out int owner), $"lock owner of {What}");
            return owner != 0;
        }
    }

    /// <summary>The clients holding the image's exclusive lock (their addresses), empty when it is free.</summary>
    public List<string> GetLockOwners()
    {
        const int capacity = 8;
        nint* owners = stackalloc nint[capacity];
        nuint count = capacity;
        int rc = rbd_lock_get_owners(_handle, out _, owners, ref count);
        if (rc == -CephException.ENOENT) return [];
        Call(rc, $"lock owners of {What}");
        var result = new List<string>((int)count);
        for (int i = 0; i < (int)count; i++) result.Add(Marshal.PtrToStringUTF8(owners[i]) ?? "");
        rbd_lock_get_owners_cleanup(owners, count);
        return result;
    }

    /// <summary>
    /// Breaks the exclusive lock held by <paramref name="owner"/> (an address from <see cref="GetLockOwners"/>). With
    /// <c>rbd_blocklist_on_break_lock</c> (on by default) librbd blocklists the owner first.
    /// </summary>
    public void BreakExclusiveLock(string owner) =>
        Call(rbd_lock_break(_handle, RBD_LOCK_MODE_EXCLUSIVE, owner), $"breaking the lock of {What} held by {owner}");

    // ---- data: asynchronous ----
    // The caller keeps each buffer pinned and this image undisposed until the completion fires.

    public void BeginWrite(ulong offset, byte* buffer, nuint length, RbdCompletion completion, RbdOpFlags flags) =>
        Check(rbd_aio_write2(_raw, offset, length, buffer, completion.Handle, (int)flags), $"write to {What}");

    public void BeginRead(ulong offset, byte* buffer, nuint length, RbdCompletion completion, RbdOpFlags flags) =>
        Check(rbd_aio_read2(_raw, offset, length, buffer, completion.Handle, (int)flags), $"read from {What}");

    public void BeginFlush(RbdCompletion completion) => Check(rbd_aio_flush(_raw, completion.Handle), $"flush of {What}");

    public void BeginDiscard(ulong offset, ulong length, RbdCompletion completion) =>
        Check(rbd_aio_discard(_raw, offset, length, completion.Handle), $"discard on {What}");

    public void BeginWriteZeroes(ulong offset, nuint length, RbdCompletion completion) =>
        Check(rbd_aio_write_zeroes(_raw, offset, length, completion.Handle, 0, 0), $"write-zeroes on {What}");

    /// <summary>Synchronous flush of everything written through this handle.</summary>
    public void Flush() => Call(rbd_flush(_handle), $"flush of {What}");

    /// <summary>
    /// Flushes and releases the exclusive lock if this handle holds it, so that the next opener (this server's next
    /// client, another server) gets the lock at once while the image itself is closed later (an image opened with
    /// closeLater). A fenced client cannot do either (its writes fail, its lock was broken): its error is returned, not
    /// thrown, since the image is being given up either way.
    /// </summary>
    public CephException? ReleaseForLaterClose()
    {
        try
        {
            Flush();
            if (IsExclusiveLockOwner) ReleaseExclusiveLock();
            return null;
        }
        catch (CephException e)
        {
            return e;
        }
    }

    /// <summary>
    /// Disposes the image. A read-only one, or one opened with closeLater, is closed on the deferred-close thread (a
    /// grace period later); any other writable one waits out <see cref="WritableCloseGrace"/> since its last synchronous
    /// call and is closed now (flushed, its lock released).
    /// </summary>
    public void Dispose()
    {
        if (_handle.IsClosed) return;
        long due = Volatile.Read(ref _lastCallReturned) + (long)WritableCloseGrace.TotalMilliseconds;
        if (_writable && _handle.CloseLater)
        {
            _handle.CloseDue = Math.Max(due, Environment.TickCount64);
        }
        else if (_writable)
        {
            // A writable image closes now (a watch or lock left behind would be seen), so it waits out the margin
            // here instead: librbd may still be inside the image after the last synchronous call returned
            // (DeferredImageClose explains the race). Only an image used a moment ago waits.
            long wait = due - Environment.TickCount64;
            if (wait > 0) Thread.Sleep((int)wait);
        }
        _handle.Dispose();
    }

    /// <summary>
    /// How long a writable image is left alone after a synchronous librbd call returned before it is closed. Shorter
    /// than the read-only images' deferral (whose closes nobody waits for): this one is waited for by the caller, after
    /// a snapshot create, delete or metadata change on a volume this server does not serve. It is many times the
    /// scheduler's wait for a CPU on a loaded two-core machine, and a writable close then spends several round trips
    /// to the OSDs (flush, lock release, unwatch) before it frees anything.
    /// </summary>
    internal static readonly TimeSpan WritableCloseGrace = TimeSpan.FromMilliseconds(250);

    private long _lastCallReturned;
    private bool _writable;

    /// <summary>Checks a synchronous call's result and notes when it returned (see <see cref="Dispose"/>).</summary>
    private void Call(int rc, string what)
    {
        Returned();
        Check(rc, what);
    }

    /// <summary>Notes that a synchronous call on the image just returned (for calls whose result is not simply checked).</summary>
    private void Returned() => Volatile.Write(ref _lastCallReturned, Environment.TickCount64);

    /// <summary>Waits until every read-only image disposed so far is closed (before its pool and connection are).</summary>
    public static void WaitForDeferredCloses() => DeferredImageClose.Drain();
}

/// <summary>LIBRADOS_OP_FLAG_* values accepted by librbd's write2/read2.</summary>
[Flags]
public enum RbdOpFlags
{
    None = 0,
    FadviseRandom = 0x4,
    FadviseSequential = 0x8,
    FadviseWillNeed = 0x10,
    FadviseDontNeed = 0x20,
    FadviseNoCache = 0x40,
    /// <summary>Write through any librbd cache before completing.</summary>
    FadviseFua = 0x80,
}

/// <summary>
/// A librbd completion (<c>rbd_completion_t</c>): created for one request, fires <c>callback(completion, arg)</c> on a
/// librbd thread when the request finishes, then must be released. A value type: no managed allocation per request.
/// </summary>
public readonly unsafe struct RbdCompletion
{
    private RbdCompletion(nint handle) => Handle = handle;

    public nint Handle { get; }

    /// <summary>Creates a completion that calls <paramref name="callback"/> with <paramref name="arg"/>.</summary>
    public static RbdCompletion Create(nint arg, delegate* unmanaged<nint, nint, void> callback)
    {
        Check(rbd_aio_create_completion(arg, callback, out nint handle), "rbd_aio_create_completion");
        return new RbdCompletion(handle);
    }

    /// <summary>Wraps the raw completion a callback receives.</summary>
    public static RbdCompletion FromHandle(nint handle) => new(handle);

    /// <summary>The request's result: bytes (reads) or 0 on success, a negative errno on failure.</summary>
    public long ReturnValue => rbd_aio_get_return_value(Handle);

    public void Release() => rbd_aio_release(Handle);

    /// <summary>The exception for a negative <see cref="ReturnValue"/>.</summary>
    public static CephException ToException(long returnValue, string what) => CephException.FromErrno((int)-returnValue, what);
}
