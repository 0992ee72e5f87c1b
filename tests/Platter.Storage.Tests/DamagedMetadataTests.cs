using System.Buffers.Binary;
using Microsoft.Extensions.Logging;
using Platter.Storage.Tests.Support;
using Xunit;

namespace Platter.Storage.Tests;

/// <summary>
/// Damaged metadata is refused at open with an error naming the damage, never served with holes; a salvage open
/// serves the volumes whose metadata verifies, read-only, and writes nothing. Each case damages real store files the
/// way the issue reproduced it (garbled LMDB page, deleted or truncated data.mdb, damaged last journal record).
/// </summary>
public sealed class DamagedMetadataTests : IDisposable
{
    private const int B = Blocks.Size;
    private const long Journal = 1 << 20;
    private readonly TempDirectory _dir = new();

    private string MetadataPath => Path.Combine(_dir.Path, "data.mdb");
    private string DataPath => Path.Combine(_dir.Path, "data");

    private StoreOptions Options(ILoggerFactory? logging = null, bool salvage = false) => new()
    {
        JournalRegionBytes = Journal,
        DataGrowthBytes = 1 << 20,
        LoggerFactory = logging ?? Microsoft.Extensions.Logging.Abstractions.NullLoggerFactory.Instance,
        Salvage = salvage,
        CreateIfMissing = !salvage,
    };

    // Two volumes of 4 MiB, each written whole with its own pattern (4 extent records each), closed cleanly.
    private void CreateTwoVolumes()
    {
        using var store = VolumeStore.Open(_dir.Path, Options());
        foreach (var (name, tag) in new[] { ("first", 1L), ("second", 2L) })
        {
            store.CreateVolume(name, 4 << 20);
            using var v = store.OpenVolume(name);
            for (long b = 0; b < 1024; b++) v.Write(b * B, Blocks.Pattern(tag, b));
            v.Flush();
        }
    }

    // The first volume (id 1) writes to layer 2. Its first record's key, as LMDB stores it in a leaf node, follows the
    // node's key size (16, little-endian): garble 200 bytes from there, in every copy of the page.
    private int GarbleFirstVolumesFirstRecord(int seed)
    {
        var bytes = File.ReadAllBytes(MetadataPath);
        var pattern = new byte[18];
        BinaryPrimitives.WriteUInt16LittleEndian(pattern, 16);
        BinaryPrimitives.WriteInt64BigEndian(pattern.AsSpan(2), 2);
        BinaryPrimitives.WriteInt64BigEndian(pattern.AsSpan(10), 0);
        int hits = 0;
        // Pages 0 and 1 are LMDB's meta pages; records live after them.
        for (int at = bytes.AsSpan(8192).IndexOf(pattern); at >= 0; )
        {
            int position = 8192 + at;
            new Random(seed).NextBytes(bytes.AsSpan(position + 2, 200));
            hits++;
            int next = bytes.AsSpan(position + 1).IndexOf(pattern);
            at = next < 0 ? -1 : position + 1 + next - 8192;
        }
        File.WriteAllBytes(MetadataPath, bytes);
        return hits;
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void Garbled_extent_records_are_refused_and_salvage_serves_the_intact_volume(int seed)
    {
        CreateTwoVolumes();
        Assert.True(GarbleFirstVolumesFirstRecord(seed) > 0, "the first volume's first extent record was not found in data.mdb");
        var before = File.ReadAllBytes(MetadataPath);

        var e = StorageAssert.Throws(() => VolumeStore.Open(_dir.Path, Options()).Dispose(), StorageError.BadStore);
        Assert.Contains("metadata is damaged", e.Message);
        Assert.Contains("--salvage", e.Message);
        Assert.Equal(before, File.ReadAllBytes(MetadataPath));

        using (var store = VolumeStore.Open(_dir.Path, Options(salvage: true)))
        {
            Assert.True(store.IsSalvage);
            Assert.Contains(store.Damage, d => d.Contains("'first' is not served", StringComparison.Ordinal));
            Assert.Equal(["second"], store.ListVolumes().Select(v => v.Name));
            using var second = store.OpenVolume("second");
            Assert.True(second.IsReadOnly);
            for (long b = 0; b < 1024; b += 97) Assert.Equal(Blocks.Pattern(2, b), second.ReadAll(b * B, B));
            StorageAssert.Throws(() => second.Write(0, new byte[B]), StorageError.ReadOnly);
            StorageAssert.Throws(() => store.CreateVolume("third", 1 << 20), StorageError.ReadOnly);
            StorageAssert.Throws(() => store.DeleteVolume("second"), StorageError.ReadOnly);
        }
        // Salvage wrote nothing: a second look finds the store as it was.
        Assert.Equal(before, File.ReadAllBytes(MetadataPath));
    }

    // A damaged catalog cannot be loaded in open's one walk of the extent records: it is loaded layer by layer and
    // verified by a second walk, and the damage to the catalog record is what open names.
    [Fact]
    public void A_garbled_catalog_record_is_refused_naming_it()
    {
        CreateTwoVolumes();
        // The second volume's catalog record ends with its name after a 2-byte length: make the length disagree.
        var bytes = File.ReadAllBytes(MetadataPath);
        byte[] pattern = [6, 0, .. "second"u8];
        int hits = 0;
        for (int at = bytes.AsSpan(8192).IndexOf(pattern); at >= 0; hits++)
        {
            int position = 8192 + at;
            bytes[position] = 7;
            int next = bytes.AsSpan(position + 1).IndexOf(pattern);
            at = next < 0 ? -1 : position + 1 + next - 8192;
        }
        Assert.True(hits > 0, "the second volume's catalog record was not found in data.mdb");
        File.WriteAllBytes(MetadataPath, bytes);

        var e = StorageAssert.Throws(() => VolumeStore.Open(_dir.Path, Options()).Dispose(), StorageError.BadStore);
        Assert.Contains("metadata is damaged: corrupt catalog record for volume", e.Message);
        Assert.Equal(bytes, File.ReadAllBytes(MetadataPath));
        using var store = VolumeStore.Open(_dir.Path, Options(salvage: true));
        Assert.Contains(store.Damage, d => d.Contains("corrupt catalog record", StringComparison.Ordinal));
        Assert.DoesNotContain("second", store.ListVolumes().Select(v => v.Name));
    }

    [Fact]
    public void Intact_store_opens_and_salvage_of_it_reports_no_damage()
    {
        CreateTwoVolumes();
        using (var store = VolumeStore.Open(_dir.Path, Options(salvage: true)))
        {
            Assert.Empty(store.Damage);
            Assert.Equal(2, store.ListVolumes().Count);
        }
        using var reopened = VolumeStore.Open(_dir.Path, Options());
        Assert.True(reopened.Check(verifyChecksums: true).Ok);
    }

    [Fact]
    public void Data_file_without_metadata_is_refused_never_reinitialised()
    {
        CreateTwoVolumes();
        long dataBytes = new FileInfo(DataPath).Length;
        File.Delete(MetadataPath);

        var e = StorageAssert.Throws(() => VolumeStore.Open(_dir.Path, Options()).Dispose(), StorageError.BadStore);
        Assert.Contains("data.mdb", e.Message);
        Assert.Contains("missing", e.Message);
        Assert.False(File.Exists(MetadataPath), "a failed open created new metadata");
        Assert.Equal(dataBytes, new FileInfo(DataPath).Length);
    }

    [Fact]
    public void Metadata_without_its_data_file_is_refused()
    {
        CreateTwoVolumes();
        File.Delete(DataPath);
        var e = StorageAssert.Throws(() => VolumeStore.Open(_dir.Path, Options()).Dispose(), StorageError.BadStore);
        Assert.Contains("data file", e.Message);
        Assert.False(File.Exists(DataPath), "a failed open created a new data file");
    }

    [Fact]
    public void Truncated_metadata_is_an_error_not_a_signal()
    {
        CreateTwoVolumes();
        long length = new FileInfo(MetadataPath).Length;
        using (var f = new FileStream(MetadataPath, FileMode.Open)) f.SetLength(length / 2);
        // Mapping it would be a SIGBUS that kills this test process; a clear error comes first.
        var e = StorageAssert.Throws(() => VolumeStore.Open(_dir.Path, Options()).Dispose(), StorageError.BadStore);
        Assert.Contains("truncated", e.Message);
        StorageAssert.Throws(() => VolumeStore.Open(_dir.Path, Options(salvage: true)).Dispose(), StorageError.BadStore);
        Assert.Equal(length / 2, new FileInfo(MetadataPath).Length);
    }

    [Fact]
    public void Damaged_last_journal_record_is_dropped_with_a_log_line_saying_what_it_held()
    {
        var faults = new FaultyStore();
        // No timed commit: the 64 writes go into one journal record (a loaded machine's timer split them in CI).
        var store = faults.Open(_dir.Path, commitIntervalMax: TimeSpan.FromHours(1));
        store.CreateVolume("vm", 4 << 20);
        store.Checkpoint(); // the volume is in LMDB; the writes below live only in the journal
        var volume = store.OpenVolume("vm");
        for (long b = 0; b < 64; b++) volume.Write(b * B, Blocks.Pattern(7, b));
        volume.Flush();
        faults.Crash(store, volume);

        // The journal's one record after the checkpoint starts a half; damage a byte in its payload.
        long record = FindLastJournalRecord();
        using (var f = new FileStream(DataPath, FileMode.Open))
        {
            f.Position = record + 32 + 29; // the first operation's checksum field
            int b = f.ReadByte();
            f.Position = record + 32 + 29; // the first operation's checksum field
            f.WriteByte((byte)(b ^ 0xFF));
        }

        var log = new ListLoggerFactory();
        using var reopened = VolumeStore.Open(_dir.Path, Options(log));
        var line = Assert.Single(log.Lines, l => l.Contains("Dropped journal record", StringComparison.Ordinal));
        Assert.Contains("checksum does not match", line);
        // The writes normally share one record, but a round can still start among them (an allocation that grows the
        // data file commits first): the blocks of earlier records survive, and the line must name exactly the rest.
        using var v = reopened.OpenVolume("vm");
        int kept = 0;
        while (kept < 64 && v.ReadAll(kept * B, B).AsSpan().SequenceEqual(Blocks.Pattern(7, kept))) kept++;
        Assert.True(kept < 64, "no write was dropped with the damaged record");
        Assert.True(Blocks.IsZero(v.ReadAll(kept * B, (64 - kept) * B)), "blocks after the dropped record's first one were kept");
        Assert.True(line.Contains($"{64 - kept} blocks written to 'vm' at offsets {kept * B}..{64 * B - 1}", StringComparison.Ordinal), line);
    }

    // The highest-sequence record with the journal's magic ("PJRN") at the start of a record slot.
    private long FindLastJournalRecord()
    {
        var region = new byte[Journal];
        using (var f = File.OpenRead(DataPath)) f.ReadExactly(region);
        long best = -1, bestSequence = -1;
        for (int at = 0; at + 32 <= region.Length; at++)
        {
            if (BinaryPrimitives.ReadUInt32LittleEndian(region.AsSpan(at)) != 0x4E524A50) continue;
            long sequence = BinaryPrimitives.ReadInt64LittleEndian(region.AsSpan(at + 16));
            if (sequence > bestSequence) (best, bestSequence) = (at, sequence);
        }
        Assert.True(best >= 0, "no journal record found");
        return best;
    }

    public void Dispose() => _dir.Dispose();
}

/// <summary>The metadata reserve: a checkpoint that finds the disk full drops the reserve file and goes through; the journal fits small file systems.</summary>
public sealed class MetadataReserveTests : IDisposable
{
    private readonly TempDirectory _dir = new();

    [Fact]
    public void A_checkpoint_that_finds_the_disk_full_releases_the_reserve_and_commits()
    {
        int failures = 1;
        var options = new StoreOptions
        {
            JournalRegionBytes = 1 << 20,
            DataGrowthBytes = 1 << 20,
            MetadataReserveBytes = 1 << 20,
            // LMDB reports a full disk as ENOSPC from its commit; the engine must not fail the store for it.
            BeforeCheckpointCommit = () =>
            {
                if (Interlocked.Decrement(ref failures) >= 0) throw new Platter.Lmdb.LmdbException(28, "mdb_txn_commit: No space left on device (injected)");
            },
        };
        string reserve = Path.Combine(_dir.Path, "reserve");
        using (var store = VolumeStore.Open(_dir.Path, options))
        {
            Assert.Equal(1 << 20, new FileInfo(reserve).Length);
            store.CreateVolume("vm", 1 << 20);
            using var v = store.OpenVolume("vm");
            v.Write(0, Blocks.Pattern(1, 0));
            v.Flush();
            store.Checkpoint();
            Assert.True(failures < 0, "the injected ENOSPC never fired");
            // The reserve was dropped for that commit and made again once there was room (this disk has plenty).
            Assert.True(File.Exists(reserve), "the reserve file was not made again after the checkpoint");
            v.Write(4096, Blocks.Pattern(2, 1));
            v.Flush();
        }
        using var reopened = VolumeStore.Open(_dir.Path, options);
        using var volume = reopened.OpenVolume("vm");
        Assert.Equal(Blocks.Pattern(2, 1), volume.ReadAll(4096, 4096));
        Assert.True(reopened.Check(verifyChecksums: true).Ok);
    }

    [Theory]
    [InlineData(64L << 20, 2L << 20)]
    [InlineData(200L << 20, 4L << 20)]
    [InlineData(1L << 40, 128L << 20)]
    public void Journal_and_reserve_scale_with_the_file_system(long fileSystemBytes, long journalBytes)
    {
        Assert.Equal(journalBytes, Internal.EngineLimits.JournalRegionBytesFor(fileSystemBytes, Internal.EngineLimits.JournalRegionBytes));
        long reserve = Internal.EngineLimits.MetadataReserveBytes(fileSystemBytes);
        Assert.InRange(reserve, 1L << 20, 256L << 20);
        Assert.True(journalBytes + 2 * reserve < fileSystemBytes / 4, "the journal and the metadata reserve must leave most of a small file system to data");
    }

    public void Dispose() => _dir.Dispose();
}
