using System.Runtime.InteropServices;

namespace Platter.Ceph;

/// <summary>
/// The slice of the librados and librbd C APIs Platter uses (Debian's librados2 and librbd1, Ceph 16.2 "pacific";
/// the declarations follow src/include/rados/librados.h and src/include/rbd/librbd.h of that release).
/// Every call returns 0 or a positive count on success and a negative errno on failure.
/// </summary>
internal static unsafe partial class Native
{
    private const string Rados = "librados.so.2";
    private const string Rbd = "librbd.so.1";

    // ---- librados ----

    [LibraryImport(Rados, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int rados_create2(out nint cluster, string clusterName, string name, ulong flags);
    [LibraryImport(Rados, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int rados_conf_read_file(RadosHandle cluster, string? path);
    [LibraryImport(Rados, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int rados_conf_set(RadosHandle cluster, string option, string value);
    [LibraryImport(Rados, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int rados_conf_get(RadosHandle cluster, string option, byte* buf, nuint len);
    [LibraryImport(Rados)] internal static partial int rados_connect(RadosHandle cluster);
    [LibraryImport(Rados)] internal static partial void rados_shutdown(nint cluster);
    [LibraryImport(Rados)] internal static partial ulong rados_get_instance_id(RadosHandle cluster);
    [LibraryImport(Rados)] internal static partial int rados_getaddrs(RadosHandle cluster, out nint addrs);
    [LibraryImport(Rados)] internal static partial void rados_buffer_free(nint buf);
    [LibraryImport(Rados)] internal static partial int rados_cluster_fsid(RadosHandle cluster, byte* buf, nuint len);
    [LibraryImport(Rados)] internal static partial int rados_cluster_stat(RadosHandle cluster, RadosClusterStat* result);
    [LibraryImport(Rados)] internal static partial int rados_wait_for_latest_osdmap(RadosHandle cluster);
    [LibraryImport(Rados, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int rados_blocklist_add(RadosHandle cluster, string clientAddress, uint expireSeconds);
    [LibraryImport(Rados, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int rados_ioctx_create(RadosHandle cluster, string poolName, out nint ioctx);
    [LibraryImport(Rados)] internal static partial void rados_ioctx_destroy(nint ioctx);
    [LibraryImport(Rados)] internal static partial int rados_ioctx_pool_stat(IoContextHandle ioctx, RadosPoolStat* stats);

    [StructLayout(LayoutKind.Sequential)]
    internal struct RadosClusterStat
    {
        public ulong kb, kb_used, kb_avail, num_objects;
    }

    [StructLayout(LayoutKind.Sequential)]
    internal struct RadosPoolStat
    {
        public ulong num_bytes, num_kb, num_objects, num_object_clones, num_object_copies,
            num_objects_missing_on_primary, num_objects_unfound, num_objects_degraded, num_rd, num_rd_kb, num_wr,
            num_wr_kb, num_user_bytes, compressed_bytes_orig, compressed_bytes, compressed_bytes_alloc;
    }

    // ---- librbd: images ----

    internal const int RBD_IMAGE_OPTION_FORMAT = 0;
    internal const int RBD_IMAGE_OPTION_FEATURES = 1;
    internal const int RBD_IMAGE_OPTION_ORDER = 2;
    internal const int RBD_IMAGE_OPTION_CLONE_FORMAT = 12;

    [StructLayout(LayoutKind.Sequential)]
    internal struct rbd_image_spec_t
    {
        public byte* id;
        public byte* name;
    }

    [StructLayout(LayoutKind.Sequential)]
    internal struct rbd_linked_image_spec_t
    {
        public long pool_id;
        public byte* pool_name;
        public byte* pool_namespace;
        public byte* image_id;
        public byte* image_name;
        public byte trash; // C bool
    }

    [StructLayout(LayoutKind.Sequential)]
    internal struct rbd_snap_spec_t
    {
        public ulong id;
        public int namespace_type;
        public byte* name;
    }

    [StructLayout(LayoutKind.Sequential)]
    internal struct rbd_snap_info_t
    {
        public ulong id;
        public ulong size;
        public byte* name;
    }

    [StructLayout(LayoutKind.Sequential)]
    internal struct rbd_image_info_t
    {
        public ulong size;
        public ulong obj_size;
        public ulong num_objs;
        public int order;
        public fixed byte block_name_prefix[24];
        public long parent_pool;
        public fixed byte parent_name[96];
    }

    [StructLayout(LayoutKind.Sequential)]
    internal struct Timespec
    {
        public long tv_sec;
        public long tv_nsec;
    }

    [LibraryImport(Rbd)] internal static partial void rbd_image_options_create(out nint opts);
    [LibraryImport(Rbd)] internal static partial void rbd_image_options_destroy(nint opts);
    [LibraryImport(Rbd)] internal static partial int rbd_image_options_set_uint64(nint opts, int optname, ulong value);

    [LibraryImport(Rbd)] internal static partial int rbd_list2(IoContextHandle io, rbd_image_spec_t* images, ref nuint maxImages);
    [LibraryImport(Rbd)] internal static partial void rbd_image_spec_list_cleanup(rbd_image_spec_t* images, nuint count);
    [LibraryImport(Rbd, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int rbd_create4(IoContextHandle io, string name, ulong size, nint opts);
    [LibraryImport(Rbd, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int rbd_clone3(IoContextHandle parentIo, string parentName, string parentSnapName,
        IoContextHandle childIo, string childName, nint opts);
    [LibraryImport(Rbd, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int rbd_remove(IoContextHandle io, string name);
    [LibraryImport(Rbd, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int rbd_rename(IoContextHandle io, string sourceName, string destinationName);

    [LibraryImport(Rbd, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int rbd_open(IoContextHandle io, string name, out nint image, string? snapName);
    [LibraryImport(Rbd, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int rbd_open_read_only(IoContextHandle io, string name, out nint image, string? snapName);
    [LibraryImport(Rbd)] internal static partial int rbd_close(nint image);
    [LibraryImport(Rbd)]
    internal static partial int rbd_resize2(RbdImageHandle image, ulong size, [MarshalAs(UnmanagedType.U1)] bool allowShrink,
        delegate* unmanaged<ulong, ulong, nint, int> progress, nint progressArg);
    [LibraryImport(Rbd)] internal static partial int rbd_stat(RbdImageHandle image, rbd_image_info_t* info, nuint infoSize);
    [LibraryImport(Rbd)] internal static partial int rbd_get_size(RbdImageHandle image, out ulong size);
    [LibraryImport(Rbd)] internal static partial int rbd_get_features(RbdImageHandle image, out ulong features);
    [LibraryImport(Rbd)] internal static partial int rbd_get_create_timestamp(RbdImageHandle image, Timespec* timestamp);
    [LibraryImport(Rbd)] internal static partial int rbd_get_id(RbdImageHandle image, byte* id, nuint idLen);
    [LibraryImport(Rbd)]
    internal static partial int rbd_get_parent(RbdImageHandle image, rbd_linked_image_spec_t* parentImage, rbd_snap_spec_t* parentSnap);
    [LibraryImport(Rbd)] internal static partial int rbd_flatten(RbdImageHandle image);
    [LibraryImport(Rbd)] internal static partial void rbd_linked_image_spec_cleanup(rbd_linked_image_spec_t* image);
    [LibraryImport(Rbd)] internal static partial void rbd_linked_image_spec_list_cleanup(rbd_linked_image_spec_t* images, nuint count);
    [LibraryImport(Rbd)] internal static partial void rbd_snap_spec_cleanup(rbd_snap_spec_t* snap);
    [LibraryImport(Rbd)]
    internal static partial int rbd_list_children3(RbdImageHandle image, rbd_linked_image_spec_t* images, ref nuint maxImages);
    [LibraryImport(Rbd, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int rbd_metadata_get(RbdImageHandle image, string key, byte* value, ref nuint valueLen);
    [LibraryImport(Rbd, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int rbd_metadata_set(RbdImageHandle image, string key, string value);
    [LibraryImport(Rbd, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int rbd_metadata_remove(RbdImageHandle image, string key);

    // ---- librbd: snapshots ----

    [LibraryImport(Rbd)] internal static partial int rbd_snap_list(RbdImageHandle image, rbd_snap_info_t* snaps, ref int maxSnaps);
    [LibraryImport(Rbd)] internal static partial void rbd_snap_list_end(rbd_snap_info_t* snaps);
    [LibraryImport(Rbd, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int rbd_snap_create2(RbdImageHandle image, string snapName, uint flags,
        delegate* unmanaged<ulong, ulong, nint, int> progress, nint progressArg);

    /// <summary>
    /// librbd calls the progress callback of resize2/snap_create2 without checking it for NULL (a shrink that trims
    /// objects crashed the process with a null callback): this one ignores the progress.
    /// </summary>
    [UnmanagedCallersOnly]
    internal static int NoProgress(ulong offset, ulong total, nint arg) => 0;
    [LibraryImport(Rbd, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int rbd_snap_remove(RbdImageHandle image, string snapName);
    [LibraryImport(Rbd, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int rbd_snap_rollback(RbdImageHandle image, string snapName);
    [LibraryImport(Rbd)] internal static partial int rbd_snap_get_timestamp(RbdImageHandle image, ulong snapId, Timespec* timestamp);

    [LibraryImport(Rbd, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int rbd_diff_iterate2(RbdImageHandle image, string? fromSnapName, ulong offset, ulong length,
        byte includeParent, byte wholeObject, delegate* unmanaged<ulong, nuint, int, nint, int> callback, nint arg);

    // ---- librbd: exclusive lock ----

    internal const int RBD_LOCK_MODE_EXCLUSIVE = 0;

    [LibraryImport(Rbd)] internal static partial int rbd_is_exclusive_lock_owner(RbdImageHandle image, out int isOwner);
    [LibraryImport(Rbd)] internal static partial int rbd_lock_acquire(RbdImageHandle image, int lockMode);
    [LibraryImport(Rbd)] internal static partial int rbd_lock_release(RbdImageHandle image);
    [LibraryImport(Rbd)]
    internal static partial int rbd_lock_get_owners(RbdImageHandle image, out int lockMode, nint* lockOwners, ref nuint maxLockOwners);
    [LibraryImport(Rbd)] internal static partial void rbd_lock_get_owners_cleanup(nint* lockOwners, nuint count);
    [LibraryImport(Rbd, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int rbd_lock_break(RbdImageHandle image, int lockMode, string lockOwner);

    // ---- librbd: asynchronous I/O ----
    // The image handle is passed as a raw pointer: the caller (RbdImage) keeps the SafeHandle referenced for as long
    // as a request is in flight, so these calls skip the per-call AddRef/Release.

    [LibraryImport(Rbd)]
    internal static partial int rbd_aio_create_completion(nint callbackArg, delegate* unmanaged<nint, nint, void> callback, out nint completion);
    [LibraryImport(Rbd)] internal static partial nint rbd_aio_get_return_value(nint completion);
    [LibraryImport(Rbd)] internal static partial void rbd_aio_release(nint completion);
    [LibraryImport(Rbd)] internal static partial int rbd_aio_write2(nint image, ulong offset, nuint length, byte* buffer, nint completion, int opFlags);
    [LibraryImport(Rbd)] internal static partial int rbd_aio_read2(nint image, ulong offset, nuint length, byte* buffer, nint completion, int opFlags);
    [LibraryImport(Rbd)] internal static partial int rbd_aio_flush(nint image, nint completion);
    [LibraryImport(Rbd)] internal static partial int rbd_aio_discard(nint image, ulong offset, ulong length, nint completion);
    [LibraryImport(Rbd)]
    internal static partial int rbd_aio_write_zeroes(nint image, ulong offset, nuint length, nint completion, int zeroFlags, int opFlags);
    [LibraryImport(Rbd)] internal static partial int rbd_flush(RbdImageHandle image);

    [LibraryImport("libc", EntryPoint = "strerror")] private static partial nint strerror(int errnum);

    internal static string ErrorText(int errno) => Marshal.PtrToStringUTF8(strerror(errno)) ?? $"errno {errno}";

    internal static string Utf8(byte* text) => text == null ? "" : Marshal.PtrToStringUTF8((nint)text) ?? "";

    /// <summary>Throws <see cref="CephException"/> for a negative return code; returns non-negative ones.</summary>
    internal static int Check(int rc, string what) => rc >= 0 ? rc : throw CephException.FromErrno(-rc, what);
}
