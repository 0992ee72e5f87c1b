using System.Buffers.Binary;

namespace Platter.Lmdb;

/// <summary>
/// Checks an LMDB data file against its own header before it is mapped. LMDB maps the whole file and trusts it:
/// a file shorter than the pages its meta page says are in use makes the first touch of a missing page a SIGBUS
/// that kills the process with no message. Reading the two meta pages with plain reads first turns that into an
/// error that says what is wrong.
/// </summary>
public static class LmdbFile
{
    // LMDB 0.9 (lmdb.h / mdb.c): every page starts with a 16-byte header; pages 0 and 1 hold an MDB_meta each:
    // magic u32, version u32, address ptr, mapsize size_t, two MDB_db of 48 bytes (the free-page DB's md_pad is the
    // page size), last used page number, transaction id. The meta with the higher transaction id is the current one.
    private const uint Magic = 0xBEEFC0DE;
    private const uint DataVersion = 1;
    private const int MetaOffset = 16;
    private const int PageSizeOffset = MetaOffset + 24;
    private const int LastPageOffset = MetaOffset + 120;
    private const int TransactionOffset = MetaOffset + 128;
    private const int MetaBytes = TransactionOffset + 8;

    /// <summary>
    /// Returns null when <paramref name="path"/> is a whole LMDB file (or does not exist), else one line saying what
    /// is wrong: not an LMDB file, damaged meta pages, or shorter than the pages its current meta page uses.
    /// </summary>
    public static string? Inspect(string path)
    {
        if (!File.Exists(path)) return null;
        using var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        long length = file.Length;
        if (length < MetaBytes) return $"{path} is {length} bytes long, too short to be an LMDB file (truncated?)";
        Span<byte> first = stackalloc byte[MetaBytes];
        file.ReadExactly(first);
        if (BinaryPrimitives.ReadUInt32LittleEndian(first[MetaOffset..]) != Magic)
            return $"{path} does not start with an LMDB meta page (damaged or not an LMDB file)";
        uint pageSize = BinaryPrimitives.ReadUInt32LittleEndian(first[PageSizeOffset..]);
        if (pageSize is < 512 or > 65536 || (pageSize & (pageSize - 1)) != 0)
            return $"{path}: the LMDB meta page records a page size of {pageSize} bytes (damaged)";
        if (length < 2L * pageSize) return $"{path} is {length} bytes long, shorter than LMDB's two meta pages (truncated)";

        Span<byte> second = stackalloc byte[MetaBytes];
        file.Position = pageSize;
        file.ReadExactly(second);
        var metas = new[] { Read(first), Read(second) };
        var valid = metas.Where(m => m.Valid).ToList();
        if (valid.Count == 0) return $"{path}: both LMDB meta pages are damaged";
        // LMDB opens the meta page with the higher transaction id; that one decides which pages must exist.
        var current = valid.MaxBy(m => m.Transaction);
        long needed = (current.LastPage + 1) * pageSize;
        if (current.LastPage < 1 || needed < 0 || current.LastPage > long.MaxValue / pageSize)
            return $"{path}: the LMDB meta page records last page {current.LastPage} (damaged)";
        // LMDB does not write "loose" pages (allocated and freed again within one transaction; they go to the free
        // list), so after a SIGKILL the file may legitimately end a few pages before last page + 1: nothing references
        // those pages, and refusing such a store would refuse a healthy one (the crash tests hit a one-page shortfall).
        // A shortfall beyond a few pages, or beyond a sixteenth of the file, is a truncation.
        long tolerated = Math.Min(16L * pageSize, needed / 16 / pageSize * pageSize);
        if (length < needed - tolerated)
            return $"{path} is truncated: {length} bytes, but its LMDB meta page (transaction {current.Transaction}) uses pages up to {current.LastPage}, {needed} bytes";
        return null;
    }

    private static (bool Valid, long LastPage, long Transaction) Read(ReadOnlySpan<byte> page) =>
        (BinaryPrimitives.ReadUInt32LittleEndian(page[MetaOffset..]) == Magic
            && BinaryPrimitives.ReadUInt32LittleEndian(page[(MetaOffset + 4)..]) == DataVersion,
         BinaryPrimitives.ReadInt64LittleEndian(page[LastPageOffset..]),
         BinaryPrimitives.ReadInt64LittleEndian(page[TransactionOffset..]));
}
