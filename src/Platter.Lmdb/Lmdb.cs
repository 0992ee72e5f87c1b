using static Platter.Lmdb.Native;

namespace Platter.Lmdb;

/// <summary>An LMDB call failed. <see cref="ErrorCode"/> is LMDB's (negative) or an errno (positive).</summary>
public sealed class LmdbException(int errorCode, string message) : IOException(message, errorCode)
{
    public int ErrorCode { get; } = errorCode;
}

/// <summary>A named database (sub-table) inside an environment. Valid for the environment's lifetime.</summary>
public readonly record struct LmdbDatabase(uint Handle);

/// <summary>
/// An LMDB environment: one memory-mapped B+tree file with copy-on-write pages and an atomic meta-page commit.
/// Write transactions are serialised by LMDB; a write transaction must begin and end on the same thread.
/// </summary>
public sealed unsafe class LmdbEnvironment : IDisposable
{
    private nint _env;

    private LmdbEnvironment(nint env) => _env = env;

    /// <summary>Opens (creating when missing) the environment in <paramref name="directory"/>.</summary>
    /// <param name="directory">Directory holding data.mdb and lock.mdb.</param>
    /// <param name="mapSizeBytes">Address space reserved for the map: the largest the file may grow to.</param>
    /// <param name="maxDatabases">Named databases the environment may hold.</param>
    /// <param name="noSync">When true commits do not fsync; the caller calls <see cref="Sync"/> itself.</param>
    public static LmdbEnvironment Open(string directory, long mapSizeBytes, int maxDatabases, bool noSync = false)
    {
        Check(mdb_env_create(out nint env), "mdb_env_create");
        try
        {
            Check(mdb_env_set_mapsize(env, (nuint)mapSizeBytes), "mdb_env_set_mapsize");
            Check(mdb_env_set_maxdbs(env, (uint)maxDatabases), "mdb_env_set_maxdbs");
            Check(mdb_env_set_maxreaders(env, 256), "mdb_env_set_maxreaders");
            // NOTLS: read transactions are not tied to OS threads (.NET may move work between threads).
            // NORDAHEAD: random access to a large map; readahead only pollutes the page cache.
            uint flags = MDB_NOTLS | MDB_NORDAHEAD | (noSync ? MDB_NOSYNC : 0);
            Check(mdb_env_open(env, directory, flags, Convert.ToInt32("644", 8)), $"mdb_env_open({directory})");
            return new LmdbEnvironment(env);
        }
        catch
        {
            mdb_env_close(env);
            throw;
        }
    }

    internal nint Handle => _env != 0 ? _env : throw new ObjectDisposedException(nameof(LmdbEnvironment));

    public LmdbTransaction BeginTransaction(bool readOnly)
    {
        Check(mdb_txn_begin(Handle, 0, readOnly ? MDB_RDONLY : 0, out nint txn), "mdb_txn_begin");
        return new LmdbTransaction(txn, readOnly);
    }

    /// <summary>Flushes the environment to disk (needed after commits made with noSync).</summary>
    public void Sync() => Check(mdb_env_sync(Handle, 1), "mdb_env_sync");

    public void Dispose()
    {
        if (_env != 0)
        {
            mdb_env_close(_env);
            _env = 0;
        }
    }
}

/// <summary>A transaction. Values returned as spans point into the map and are valid until the transaction ends.</summary>
public sealed unsafe class LmdbTransaction : IDisposable
{
    private nint _txn;

    internal LmdbTransaction(nint txn, bool readOnly)
    {
        _txn = txn;
        IsReadOnly = readOnly;
    }

    public bool IsReadOnly { get; }

    private nint Handle => _txn != 0 ? _txn : throw new ObjectDisposedException(nameof(LmdbTransaction));

    /// <summary>Opens a named database, creating it when <paramref name="create"/> (write transactions only).</summary>
    public LmdbDatabase OpenDatabase(string name, bool create)
    {
        Check(mdb_dbi_open(Handle, name, create ? MDB_CREATE : 0, out uint dbi), $"mdb_dbi_open({name})");
        return new LmdbDatabase(dbi);
    }

    /// <summary>Looks a key up. "Not found" is a normal answer, not an error.</summary>
    public bool TryGet(LmdbDatabase db, ReadOnlySpan<byte> key, out ReadOnlySpan<byte> value)
    {
        fixed (byte* k = key)
        {
            var kv = new MDB_val { mv_size = (nuint)key.Length, mv_data = k };
            MDB_val dv;
            int rc = mdb_get(Handle, db.Handle, &kv, &dv);
            if (rc == MDB_NOTFOUND)
            {
                value = default;
                return false;
            }
            Check(rc, "mdb_get");
            value = new ReadOnlySpan<byte>(dv.mv_data, (int)dv.mv_size);
            return true;
        }
    }

    public void Put(LmdbDatabase db, ReadOnlySpan<byte> key, ReadOnlySpan<byte> value)
    {
        fixed (byte* k = key)
        fixed (byte* v = value)
        {
            var kv = new MDB_val { mv_size = (nuint)key.Length, mv_data = k };
            var dv = new MDB_val { mv_size = (nuint)value.Length, mv_data = v };
            Check(mdb_put(Handle, db.Handle, &kv, &dv, 0), "mdb_put");
        }
    }

    /// <summary>Deletes a key; returns false when it was not there.</summary>
    public bool Delete(LmdbDatabase db, ReadOnlySpan<byte> key)
    {
        fixed (byte* k = key)
        {
            var kv = new MDB_val { mv_size = (nuint)key.Length, mv_data = k };
            int rc = mdb_del(Handle, db.Handle, &kv, null);
            if (rc == MDB_NOTFOUND) return false;
            Check(rc, "mdb_del");
            return true;
        }
    }

    /// <summary>Removes every key of a database (keeps the database).</summary>
    public void Clear(LmdbDatabase db) => Check(mdb_drop(Handle, db.Handle, 0), "mdb_drop");

    /// <summary>
    /// Entries LMDB counts in the database (kept in the database's root record, updated by every put and delete):
    /// a walk that finds fewer has lost records to a damaged page.
    /// </summary>
    public long CountEntries(LmdbDatabase db)
    {
        MDB_stat stat;
        Check(mdb_stat(Handle, db.Handle, &stat), "mdb_stat");
        return (long)stat.ms_entries;
    }

    public LmdbCursor OpenCursor(LmdbDatabase db)
    {
        Check(mdb_cursor_open(Handle, db.Handle, out nint cursor), "mdb_cursor_open");
        return new LmdbCursor(cursor);
    }

    /// <summary>Commits atomically (and durably unless the environment was opened with noSync).</summary>
    public void Commit()
    {
        nint txn = Handle;
        _txn = 0;
        Check(mdb_txn_commit(txn), "mdb_txn_commit");
    }

    public void Abort()
    {
        if (_txn != 0)
        {
            mdb_txn_abort(_txn);
            _txn = 0;
        }
    }

    public void Dispose() => Abort();
}

/// <summary>A cursor over one database, ordered by key (memcmp order).</summary>
public sealed unsafe class LmdbCursor : IDisposable
{
    private nint _cursor;
    private MDB_val _key;
    private MDB_val _value;

    internal LmdbCursor(nint cursor) => _cursor = cursor;

    private nint Handle => _cursor != 0 ? _cursor : throw new ObjectDisposedException(nameof(LmdbCursor));

    /// <summary>Key at the cursor (valid until the next cursor move or write).</summary>
    public ReadOnlySpan<byte> Key => new(_key.mv_data, (int)_key.mv_size);

    /// <summary>Value at the cursor (valid until the next cursor move or write).</summary>
    public ReadOnlySpan<byte> Value => new(_value.mv_data, (int)_value.mv_size);

    /// <summary>Positions at the first key greater than or equal to <paramref name="key"/>.</summary>
    public bool SeekAtOrAfter(ReadOnlySpan<byte> key)
    {
        fixed (byte* k = key)
        {
            _key = new MDB_val { mv_size = (nuint)key.Length, mv_data = k };
            return Move(MDB_SET_RANGE);
        }
    }

    public bool First() => Move(MDB_FIRST);
    public bool Last() => Move(MDB_LAST);
    public bool Next() => Move(MDB_NEXT);
    public bool Previous() => Move(MDB_PREV);

    /// <summary>Deletes the item at the cursor; the cursor then sits on the next item (use <see cref="Current"/>).</summary>
    public void DeleteCurrent() => Check(mdb_cursor_del(Handle, 0), "mdb_cursor_del");

    /// <summary>Re-reads the item at the cursor position (after a delete, that is the following item).</summary>
    public bool Current() => Move(MDB_GET_CURRENT);

    private bool Move(int op)
    {
        MDB_val k = _key, v;
        int rc = mdb_cursor_get(Handle, &k, &v, op);
        if (rc == MDB_NOTFOUND)
        {
            _key = default;
            _value = default;
            return false;
        }
        Check(rc, "mdb_cursor_get");
        _key = k;
        _value = v;
        return true;
    }

    public void Dispose()
    {
        if (_cursor != 0)
        {
            mdb_cursor_close(_cursor);
            _cursor = 0;
        }
    }
}
