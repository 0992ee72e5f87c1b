using System.Buffers.Binary;
using System.IO.MemoryMappedFiles;
using System.Text;
using Microsoft.Extensions.Logging;

namespace Platter.Storage.Internal;

/// <summary>
/// The pending-operation ring: what makes an acknowledged write survive a crash of the process (SIGKILL, OOM kill, a
/// fault), not only a flushed one.
///
/// A write's data goes to the data file with <c>pwrite</c> before it is acknowledged, so it sits in the kernel's page
/// cache and outlives the process; its map change, though, lived only in memory (the volume's pending operations)
/// until the next commit, up to a second later. A killed server came back without those map changes, read zeros where
/// the guest had written, and a reconnecting QEMU could not tell (its next flush succeeded). The ring closes that gap
/// without a sync: every operation appended to a volume's pending log is also copied, under the volume's lock and
/// before the write is acknowledged, into this file, which is mapped shared (<c>MAP_SHARED</c>) — a store to it is a
/// store to the page cache, which a process crash does not touch. At open, after the journal, the operations that no
/// durable commit covers are replayed (<see cref="RingReplay"/>), their data checked against their CRCs, and committed.
///
/// A power cut or a reboot loses the page cache, and with it any of the ring and of the unsynced data: the ring records
/// the boot it was written in (<c>/proc/sys/kernel/random/boot_id</c>) and is ignored after another boot, so what a
/// power cut keeps is exactly what it kept before (every flushed write; FLUSH's contract is unchanged). The ring is
/// never synced: it costs a memory copy per write, no I/O on the write path.
///
/// Layout (little-endian): a 4 KiB header — magic, version, a valid flag, the tail and head (logical byte positions:
/// they only grow, over the life of the file, so a stale record of an earlier lap never matches its position), the
/// boot id — then the record area used as a circle (logical position p lives at <c>HeaderBytes + p % capacity</c>).
/// A record is 8-aligned: length, CRC32C of everything after the CRC, kind, payload length, its own logical
/// position, two values and the payload. Kind Ops: (volume id, the volume's record number), payload the encoded operations (<see cref="OpLog"/>).
/// Kind Marks: (journal sequence, count), payload count × (volume id, record number): the committer writes them
/// before the journal record of a round, saying "these volumes' records up to these numbers are in journal record
/// <c>sequence</c>"; a mark counts at replay only if that journal record is durable.
///
/// Space: the committer moves the tail, after each durable round, to the head as it was when the round began gathering
/// (every record before it was gathered by that round or an earlier one). Writers wait for a commit before they take
/// the volume lock when the ring is three quarters full (<see cref="WaitForRoom"/>); if a record still does not fit
/// (it never should), the volume's stream breaks: nothing more of that volume is copied until its pending operations
/// are gathered, so replay never applies a later operation without an earlier one (the volume then loses, on a crash,
/// what it lost before the ring existed). If the committer's marks do not fit, the whole ring is marked invalid until
/// a round has covered everything in it.
/// </summary>
internal sealed unsafe class PendingRing : IDisposable
{
    public const string FileName = "pending.ring";
    private const ulong Magic = 0x474E4952_50544C50; // "PLTPRING"
    private const uint Version = 1;
    public const int HeaderBytes = 4096;
    private const int RecordHeaderBytes = 40;
    private const uint KindOps = 1, KindMarks = 2;
    private const int BootIdBytes = 36;
    // Values of the header's valid field.
    private const uint Valid = 1, Overflowed = 0, StoreFailed = 2;

    // Header fields.
    private const int MagicAt = 0, VersionAt = 8, ValidAt = 12, TailAt = 16, HeadAt = 24, CapacityAt = 32, BootIdAt = 40;

    private readonly MemoryMappedFile? _file;
    private readonly MemoryMappedViewAccessor? _view;
    private readonly byte* _base;
    private readonly long _capacity;
    private readonly string _bootId;
    private readonly ILogger _logger;

    // Guards _head, _tail, _invalidUntil and the header's fields; held for a few instructions (no I/O: it is memory).
    private readonly object _lock = new();
    private long _head, _tail;
    private long _invalidUntil = -1;
    private int _brokenWarned;

    /// <summary>Asks for a commit and waits for it (the committer's <c>Commit</c>); set once the committer exists.</summary>
    public Action? CommitAndWait { get; set; }

    /// <summary>Asks for a commit without waiting.</summary>
    public Action? Nudge { get; set; }

    /// <summary>A ring that copies nothing: salvage opens, or a store where the file could not be created.</summary>
    public static PendingRing Disabled(ILogger logger) => new(logger);

    private PendingRing(ILogger logger)
    {
        _logger = logger;
        _bootId = "";
    }

    private PendingRing(MemoryMappedFile file, MemoryMappedViewAccessor view, long capacity, string bootId, ILogger logger)
    {
        _file = file;
        _view = view;
        _capacity = capacity;
        _bootId = bootId;
        _logger = logger;
        byte* p = null;
        view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
        _base = p + view.PointerOffset;
    }

    private volatile bool _detached;

    /// <summary>True when writes are copied (the file exists and is mapped, and the store has not failed).</summary>
    public bool Enabled => _base != null && !_detached;

    /// <summary>
    /// The store failed (a sync, a journal write or a checkpoint failed, or an invariant broke): memory may disagree
    /// with what is durable, and after a failed sync the page cache may hold data the disk lost, so nothing the ring
    /// holds may be replayed. The next open keeps what was committed, as before the ring existed.
    /// </summary>
    public void Invalidate()
    {
        if (!Enabled) return;
        lock (_lock)
        {
            _detached = true;
            BinaryPrimitives.WriteUInt32LittleEndian(new Span<byte>(_base + ValidAt, 4), StoreFailed);
        }
    }

    /// <summary>Test hook: the process "dies" now; nothing more reaches the ring (FaultyStore.Crash).</summary>
    public void DetachForTests() => _detached = true;

    /// <summary>Bytes of record area.</summary>
    public long CapacityBytes => _capacity;

    /// <summary>
    /// Opens (creating it, with its space allocated so a store to it can never fault on a full disk) the ring of the
    /// store in <paramref name="directory"/>. Returns a disabled ring, with a warning, when it cannot: the store still
    /// opens and works, only without the protection the ring gives.
    /// </summary>
    public static PendingRing Open(string directory, long capacityBytes, string? bootIdOverride, ILogger logger)
    {
        string? bootId = bootIdOverride ?? ReadBootId();
        if (bootId is null)
        {
            logger.LogWarning("Cannot read the boot id (/proc/sys/kernel/random/boot_id): acknowledged writes are durable only once flushed (no pending-operation ring)");
            return Disabled(logger);
        }
        string path = Path.Combine(directory, FileName);
        long fileBytes = HeaderBytes + capacityBytes;
        try
        {
            if (File.Exists(path) && new FileInfo(path).Length != fileBytes) File.Delete(path); // another size: nothing in it can be trusted
            FileStream stream = File.Exists(path)
                ? new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.None)
                : new FileStream(path, new FileStreamOptions
                {
                    Mode = FileMode.CreateNew, Access = FileAccess.ReadWrite, Share = FileShare.None, PreallocationSize = fileBytes,
                });
            if (stream.Length != fileBytes) stream.SetLength(fileBytes); // PreallocationSize allocates, SetLength sizes
            var file = MemoryMappedFile.CreateFromFile(stream, null, fileBytes, MemoryMappedFileAccess.ReadWrite, HandleInheritability.None, leaveOpen: false);
            var view = file.CreateViewAccessor(0, fileBytes, MemoryMappedFileAccess.ReadWrite);
            return new PendingRing(file, view, capacityBytes, bootId, logger);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            logger.LogWarning(e, "Cannot create the pending-operation ring {Path}: acknowledged writes are durable only once flushed until it can be", path);
            try { File.Delete(path); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            return Disabled(logger);
        }
    }

    private static string? ReadBootId()
    {
        try
        {
            string id = File.ReadAllText("/proc/sys/kernel/random/boot_id").Trim();
            return id.Length == BootIdBytes ? id : null;
        }
        catch (IOException)
        {
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return null;
        }
    }

    // ---- What the file holds (open) ----

    /// <summary>One copied append of a volume's pending log.</summary>
    public sealed record OpsRecord(long VolumeId, long Number, byte[] Ops);

    /// <summary>A committer's mark: the volume's records up to <paramref name="Number"/> are in journal record <paramref name="Sequence"/>.</summary>
    public readonly record struct Mark(long Sequence, long VolumeId, long Number);

    /// <summary>The ring's records between tail and head, or why there are none to trust.</summary>
    public sealed record Contents(List<OpsRecord> Records, List<Mark> Marks, string? Ignored);

    /// <summary>Reads the records left by the last process to use the store (before <see cref="Reset"/>).</summary>
    public Contents Read()
    {
        if (!Enabled) return new Contents([], [], "no ring");
        var header = new ReadOnlySpan<byte>(_base, HeaderBytes);
        if (BinaryPrimitives.ReadUInt64LittleEndian(header[MagicAt..]) != Magic) return new Contents([], [], null); // new file: nothing was ever copied
        if (BinaryPrimitives.ReadUInt32LittleEndian(header[VersionAt..]) != Version)
            return new Contents([], [], $"the ring has version {BinaryPrimitives.ReadUInt32LittleEndian(header[VersionAt..])}");
        if (BinaryPrimitives.ReadInt64LittleEndian(header[CapacityAt..]) != _capacity) return new Contents([], [], "the ring has another size");
        string boot = Encoding.ASCII.GetString(header.Slice(BootIdAt, BootIdBytes));
        if (boot != _bootId) return new Contents([], [], "the machine has restarted since it was written (a power cut or reboot keeps only flushed writes)");
        switch (BinaryPrimitives.ReadUInt32LittleEndian(header[ValidAt..]))
        {
            case Valid:
                break;
            case StoreFailed:
                return new Contents([], [], "the store had failed (a failed sync or a broken invariant): it keeps what it committed");
            default:
                return new Contents([], [], "the ring had overflowed before the crash");
        }
        long tail = BinaryPrimitives.ReadInt64LittleEndian(header[TailAt..]);
        long head = BinaryPrimitives.ReadInt64LittleEndian(header[HeadAt..]);
        if (tail < 0 || head < tail || head - tail > _capacity) return new Contents([], [], $"its tail {tail} and head {head} do not fit");
        var records = new List<OpsRecord>();
        var marks = new List<Mark>();
        var buffer = new byte[1 << 16];
        Span<byte> h = stackalloc byte[RecordHeaderBytes];
        for (long pos = tail; pos < head; )
        {
            ReadAt(pos, h);
            int length = (int)BinaryPrimitives.ReadUInt32LittleEndian(h);
            if (length < RecordHeaderBytes || (length & 7) != 0 || length > head - pos)
                return new Contents(records, marks, $"a record at {pos} has length {length}: the rest was not read");
            if (buffer.Length < length) buffer = new byte[Math.Max(length, buffer.Length * 2)];
            var r = buffer.AsSpan(0, length);
            ReadAt(pos, r);
            pos += length;
            // A record whose copy the crash interrupted (its writer had not acknowledged it) fails its CRC: skip it.
            if (Crc32C.Compute(r[8..]) != BinaryPrimitives.ReadUInt32LittleEndian(r[4..])) continue;
            if (BinaryPrimitives.ReadInt64LittleEndian(r[16..]) != pos - length) continue; // a stale record of an earlier lap
            uint kind = BinaryPrimitives.ReadUInt32LittleEndian(r[8..]);
            long a = BinaryPrimitives.ReadInt64LittleEndian(r[24..]), b = BinaryPrimitives.ReadInt64LittleEndian(r[32..]);
            int payloadBytes = BinaryPrimitives.ReadInt32LittleEndian(r[12..]);
            if (payloadBytes < 0 || payloadBytes > length - RecordHeaderBytes) continue;
            var payload = r.Slice(RecordHeaderBytes, payloadBytes);
            if (kind == KindOps)
            {
                records.Add(new OpsRecord(a, b, payload.ToArray()));
            }
            else if (kind == KindMarks)
            {
                if (b < 0 || b * 16 > payload.Length) continue;
                for (int i = 0; i < b; i++)
                    marks.Add(new Mark(a, BinaryPrimitives.ReadInt64LittleEndian(payload[(16 * i)..]), BinaryPrimitives.ReadInt64LittleEndian(payload[(16 * i + 8)..])));
            }
        }
        return new Contents(records, marks, null);
    }

    /// <summary>
    /// After open has made everything it replayed durable: the ring starts empty for this process, in this boot.
    /// Positions go on from the old head, so no old record can ever sit at a position the new ones claim.
    /// </summary>
    public void Reset()
    {
        if (!Enabled) return;
        var header = new Span<byte>(_base, HeaderBytes);
        long start = BinaryPrimitives.ReadUInt64LittleEndian(header[MagicAt..]) == Magic ? Math.Max(0, BinaryPrimitives.ReadInt64LittleEndian(header[HeadAt..])) : 0;
        start = (start + 7) & ~7L;
        lock (_lock)
        {
            _head = _tail = start;
            BinaryPrimitives.WriteUInt32LittleEndian(header[ValidAt..], Overflowed);
            BinaryPrimitives.WriteUInt64LittleEndian(header[MagicAt..], Magic);
            BinaryPrimitives.WriteUInt32LittleEndian(header[VersionAt..], Version);
            BinaryPrimitives.WriteInt64LittleEndian(header[CapacityAt..], _capacity);
            Encoding.ASCII.GetBytes(_bootId, header.Slice(BootIdAt, BootIdBytes));
            BinaryPrimitives.WriteInt64LittleEndian(header[TailAt..], start);
            BinaryPrimitives.WriteInt64LittleEndian(header[HeadAt..], start);
            BinaryPrimitives.WriteUInt32LittleEndian(header[ValidAt..], Valid);
        }
    }

    // ---- Writers ----

    // Writers stop short of the last part of the ring, which is the committer's (its marks must always fit).
    private long WriterLimit => _capacity - Math.Min(_capacity / 8, 1 << 20);

    /// <summary>
    /// Called by a writer before it takes its volume's lock: past half the ring a commit is asked for, past three
    /// quarters the writer waits for one (no lock held), so a record under the lock always finds room.
    /// </summary>
    public void WaitForRoom(int opBytes)
    {
        if (!Enabled) return;
        long need = RecordBytes(opBytes);
        for (int round = 0; round < 4; round++)
        {
            long used = Volatile.Read(ref _head) - Volatile.Read(ref _tail) + need;
            if (used <= _capacity / 2) return;
            if (used <= _capacity / 4 * 3)
            {
                Nudge?.Invoke();
                return;
            }
            CommitAndWait?.Invoke();
        }
    }

    private static long RecordBytes(int payloadBytes) => (RecordHeaderBytes + payloadBytes + 7) & ~7L;

    /// <summary>
    /// Copies what was just appended to <paramref name="volume"/>'s pending log. Caller holds the volume's lock, so a
    /// volume's records are numbered in the order of its log.
    /// </summary>
    public void Append(VolumeState volume, ReadOnlySpan<byte> ops)
    {
        long number = ++volume.RingNumber;
        if (!Enabled || volume.RingBroken || ops.IsEmpty) return;
        long need = RecordBytes(ops.Length);
        long pos;
        bool reserved;
        lock (_lock) reserved = TryReserveLocked(need, WriterLimit, out pos);
        if (!reserved)
        {
            volume.RingBroken = true;
            if (Interlocked.Exchange(ref _brokenWarned, 1) == 0)
                _logger.LogWarning("The pending-operation ring is full: volume '{Volume}' keeps its writes since the last commit in memory only until the next commit", volume.Name);
            return;
        }
        WriteRecord(pos, need, KindOps, volume.Id, number, ops);
    }

    /// <summary>
    /// The committer, before it appends journal record <paramref name="sequence"/>: the gathered volumes' records up to
    /// these numbers are in it. The committer reclaims up to the head it read before gathering (<see cref="Head"/>),
    /// never past these marks' own records.
    /// </summary>
    public void AppendMarks(long sequence, List<(long VolumeId, long Number)> marks)
    {
        if (!Enabled || marks.Count == 0) return;
        int payload = 16 * marks.Count;
        long need = RecordBytes(payload);
        long pos;
        lock (_lock)
        {
            if (!TryReserveLocked(need, _capacity, out pos))
            {
                // Replay could no longer tell what this round covers: trust nothing until a round covers all there is.
                _invalidUntil = _head;
                BinaryPrimitives.WriteUInt32LittleEndian(new Span<byte>(_base + ValidAt, 4), Overflowed);
                return;
            }
        }
        Span<byte> bytes = payload <= 4096 ? stackalloc byte[payload] : new byte[payload];
        for (int i = 0; i < marks.Count; i++)
        {
            BinaryPrimitives.WriteInt64LittleEndian(bytes[(16 * i)..], marks[i].VolumeId);
            BinaryPrimitives.WriteInt64LittleEndian(bytes[(16 * i + 8)..], marks[i].Number);
        }
        WriteRecord(pos, need, KindMarks, sequence, marks.Count, bytes);
    }

    // Under _lock: claims need bytes at the head if the ring's use stays within limit. The record's length goes first,
    // so a reader can step over a record the crash left half-copied; then the new head.
    private bool TryReserveLocked(long need, long limit, out long pos)
    {
        pos = _head;
        if (_head + need - _tail > limit) return false;
        _head += need;
        Span<byte> length = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(length, (uint)need);
        Write(pos, length);
        BinaryPrimitives.WriteInt64LittleEndian(new Span<byte>(_base + HeadAt, 8), _head);
        return true;
    }

    /// <summary>The head now: the committer reads it before it gathers a round.</summary>
    public long Head
    {
        get
        {
            lock (_lock) return _head;
        }
    }

    /// <summary>After a durable round that began gathering at <paramref name="position"/>: everything before it is in the journal.</summary>
    public void Reclaim(long position)
    {
        if (!Enabled) return;
        lock (_lock)
        {
            Invariant.Check(position >= _tail && position <= _head, $"ring reclaim to {position} outside [{_tail}, {_head}]");
            _tail = position;
            BinaryPrimitives.WriteInt64LittleEndian(new Span<byte>(_base + TailAt, 8), _tail);
            if (_invalidUntil >= 0 && position >= _invalidUntil)
            {
                _invalidUntil = -1;
                BinaryPrimitives.WriteUInt32LittleEndian(new Span<byte>(_base + ValidAt, 4), Valid);
            }
        }
    }

    // The body, then the CRC last: a record is valid only once all of it is in place.
    private void WriteRecord(long pos, long need, uint kind, long a, long b, ReadOnlySpan<byte> payload)
    {
        Span<byte> h = stackalloc byte[RecordHeaderBytes - 8];
        BinaryPrimitives.WriteUInt32LittleEndian(h, kind);
        BinaryPrimitives.WriteInt32LittleEndian(h[4..], payload.Length); // the record's length includes the padding
        BinaryPrimitives.WriteInt64LittleEndian(h[8..], pos);
        BinaryPrimitives.WriteInt64LittleEndian(h[16..], a);
        BinaryPrimitives.WriteInt64LittleEndian(h[24..], b);
        int pad = (int)(need - RecordHeaderBytes - payload.Length);
        Span<byte> zeros = stackalloc byte[8];
        zeros.Clear();
        uint crc = Crc32C.Append(0xFFFFFFFFu, h);
        crc = Crc32C.Append(crc, payload);
        crc = ~Crc32C.Append(crc, zeros[..pad]);
        Write(pos + 8, h);
        Write(pos + RecordHeaderBytes, payload);
        Write(pos + RecordHeaderBytes + payload.Length, zeros[..pad]);
        // pos is 8-aligned and the capacity a multiple of 8: the CRC never wraps. A release store: it lands after the rest.
        Volatile.Write(ref *(uint*)(_base + HeaderBytes + (pos + 4) % _capacity), crc);
    }

    // Copies into the circle, wrapping at its end.
    private void Write(long pos, ReadOnlySpan<byte> source)
    {
        long at = pos % _capacity;
        int first = (int)Math.Min(source.Length, _capacity - at);
        source[..first].CopyTo(new Span<byte>(_base + HeaderBytes + at, first));
        if (first < source.Length) source[first..].CopyTo(new Span<byte>(_base + HeaderBytes, source.Length - first));
    }

    private void ReadAt(long pos, Span<byte> destination)
    {
        long at = pos % _capacity;
        int first = (int)Math.Min(destination.Length, _capacity - at);
        new ReadOnlySpan<byte>(_base + HeaderBytes + at, first).CopyTo(destination);
        if (first < destination.Length) new ReadOnlySpan<byte>(_base + HeaderBytes, destination.Length - first).CopyTo(destination[first..]);
    }

    public void Dispose()
    {
        if (_view is not null)
        {
            _view.SafeMemoryMappedViewHandle.ReleasePointer();
            _view.Dispose();
        }
        _file?.Dispose();
    }
}
