using System.Runtime.InteropServices;

namespace Platter.Lmdb;

/// <summary>The slice of the LMDB C API Platter uses (Debian's liblmdb0, LMDB 0.9.x).</summary>
internal static unsafe partial class Native
{
    private const string Library = "liblmdb.so.0";

    [StructLayout(LayoutKind.Sequential)]
    internal struct MDB_val
    {
        public nuint mv_size;
        public byte* mv_data;
    }

    internal const uint MDB_NOSUBDIR = 0x4000;
    internal const uint MDB_NOSYNC = 0x10000;
    internal const uint MDB_RDONLY = 0x20000;
    internal const uint MDB_NOTLS = 0x200000;
    internal const uint MDB_NORDAHEAD = 0x800000;
    internal const uint MDB_CREATE = 0x40000;

    internal const int MDB_NOTFOUND = -30798;

    // MDB_cursor_op values, in the order of the C enum.
    internal const int MDB_FIRST = 0;
    internal const int MDB_GET_CURRENT = 4;
    internal const int MDB_LAST = 6;
    internal const int MDB_NEXT = 8;
    internal const int MDB_PREV = 12;
    internal const int MDB_SET_RANGE = 17;

    [LibraryImport(Library)] internal static partial int mdb_env_create(out nint env);
    [LibraryImport(Library)] internal static partial int mdb_env_set_mapsize(nint env, nuint size);
    [LibraryImport(Library)] internal static partial int mdb_env_set_maxdbs(nint env, uint dbs);
    [LibraryImport(Library)] internal static partial int mdb_env_set_maxreaders(nint env, uint readers);
    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)] internal static partial int mdb_env_open(nint env, string path, uint flags, int mode);
    [LibraryImport(Library)] internal static partial void mdb_env_close(nint env);
    [LibraryImport(Library)] internal static partial int mdb_env_sync(nint env, int force);
    [LibraryImport(Library)] internal static partial nint mdb_strerror(int err);

    [LibraryImport(Library)] internal static partial int mdb_txn_begin(nint env, nint parent, uint flags, out nint txn);
    [LibraryImport(Library)] internal static partial int mdb_txn_commit(nint txn);
    [LibraryImport(Library)] internal static partial void mdb_txn_abort(nint txn);

    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)] internal static partial int mdb_dbi_open(nint txn, string? name, uint flags, out uint dbi);
    [LibraryImport(Library)] internal static partial int mdb_get(nint txn, uint dbi, MDB_val* key, MDB_val* data);
    [LibraryImport(Library)] internal static partial int mdb_put(nint txn, uint dbi, MDB_val* key, MDB_val* data, uint flags);
    [LibraryImport(Library)] internal static partial int mdb_del(nint txn, uint dbi, MDB_val* key, MDB_val* data);
    [LibraryImport(Library)] internal static partial int mdb_drop(nint txn, uint dbi, int del);

    [StructLayout(LayoutKind.Sequential)]
    internal struct MDB_stat
    {
        public uint ms_psize;
        public uint ms_depth;
        public nuint ms_branch_pages;
        public nuint ms_leaf_pages;
        public nuint ms_overflow_pages;
        public nuint ms_entries;
    }

    [LibraryImport(Library)] internal static partial int mdb_stat(nint txn, uint dbi, MDB_stat* stat);

    [LibraryImport(Library)] internal static partial int mdb_cursor_open(nint txn, uint dbi, out nint cursor);
    [LibraryImport(Library)] internal static partial void mdb_cursor_close(nint cursor);
    [LibraryImport(Library)] internal static partial int mdb_cursor_get(nint cursor, MDB_val* key, MDB_val* data, int op);
    [LibraryImport(Library)] internal static partial int mdb_cursor_del(nint cursor, uint flags);

    internal static string ErrorText(int rc) => Marshal.PtrToStringUTF8(mdb_strerror(rc)) ?? $"LMDB error {rc}";

    internal static void Check(int rc, string what)
    {
        if (rc != 0) throw new LmdbException(rc, $"{what}: {ErrorText(rc)}");
    }
}
