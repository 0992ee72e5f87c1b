using Platter.Storage.Tests.Support;
using Xunit;

namespace Platter.Storage.Tests;

/// <summary>Every block's checksum is verified on every read: corruption is an error, never data.</summary>
public sealed class ChecksumTests : IDisposable
{
    private const int B = Blocks.Size;
    private readonly TempDirectory _dir = new();
    private readonly FaultyStore _faults = new();

    public void Dispose() => _dir.Dispose();

    private void WriteBlocksAndClose(int blocks)
    {
        using var store = _faults.Open(_dir.Path);
        store.CreateVolume("v", 1 << 20);
        store.CreateVolume("other", 1 << 20);
        using var v = store.OpenVolume("v");
        for (int b = 0; b < blocks; b++) v.Write(b * (long)B, Blocks.Pattern(1, b));
        using var o = store.OpenVolume("other");
        o.Write(0, Blocks.Pattern(9, 0));
        v.Flush();
    }

    /// <summary>Finds where the data file stores a block's content (the engine writes it verbatim).</summary>
    private long LocateInDataFile(byte[] content)
    {
        var file = File.ReadAllBytes(Path.Combine(_dir.Path, "data"));
        int at = file.AsSpan().IndexOf(content);
        Assert.True(at >= 0, "the block's content is not in the data file");
        Assert.True(file.AsSpan(at + 1).IndexOf(content) < 0, "the block's content is in the data file twice");
        return at;
    }

    private void FlipByte(long fileOffset)
    {
        using var fs = new FileStream(Path.Combine(_dir.Path, "data"), FileMode.Open, FileAccess.ReadWrite);
        fs.Position = fileOffset;
        int old = fs.ReadByte();
        fs.Position = fileOffset;
        fs.WriteByte((byte)(old ^ 0x01)); // a single bit: the smallest corruption there is
    }

    [Fact]
    public void Flipped_byte_in_the_data_file_fails_that_block_only()
    {
        WriteBlocksAndClose(16);
        FlipByte(LocateInDataFile(Blocks.Pattern(1, 7)) + 1234);

        using var store = _faults.Open(_dir.Path);
        using var v = store.OpenVolume("v");
        StorageAssert.Throws(() => v.ReadAll(7 * B, B), StorageError.ChecksumMismatch);
        StorageAssert.Throws(() => v.ReadAll(7 * B + 4000, 10), StorageError.ChecksumMismatch); // a part of it too
        StorageAssert.Throws(() => v.ReadAll(0, 16 * B), StorageError.ChecksumMismatch);        // a range covering it
        Assert.Equal(Blocks.Pattern(1, 6), v.ReadAll(6 * B, B));
        Assert.Equal(Blocks.Pattern(1, 8), v.ReadAll(8 * B, B));
        Assert.Equal(Blocks.Pattern(1, 0), v.ReadAll(0, B));
        using (var o = store.OpenVolume("other")) Assert.Equal(Blocks.Pattern(9, 0), o.ReadAll(0, B));
        Assert.True(store.Counters.ChecksumErrors >= 3, $"ChecksumErrors = {store.Counters.ChecksumErrors}");

        // A partial write must read the block to merge: it fails rather than spread the damage.
        StorageAssert.Throws(() => v.Write(7 * B + 10, new byte[] { 1, 2, 3 }), StorageError.ChecksumMismatch);
        StorageAssert.Throws(() => v.ReadAll(7 * B, B), StorageError.ChecksumMismatch);

        var report = store.Check(verifyChecksums: true);
        Assert.False(report.Ok, "the checksum scan must find the flipped byte");
        Assert.NotEmpty(report.Problems);
        var structural = store.Check(verifyChecksums: false);
        Assert.True(structural.Ok, "without the scan the metadata is consistent: " + string.Join("; ", structural.Problems));

        // Overwriting the whole block repairs it (copy-on-write puts the new data elsewhere).
        v.Write(7 * B, Blocks.Pattern(2, 7));
        Assert.Equal(Blocks.Pattern(2, 7), v.ReadAll(7 * B, B));
        v.Flush();
        StoreChecks.AssertConsistent(store, "after overwriting the corrupt block");
    }

    [Fact]
    public void Trimming_a_corrupt_block_makes_it_read_zeros()
    {
        WriteBlocksAndClose(4);
        FlipByte(LocateInDataFile(Blocks.Pattern(1, 2)));
        using var store = _faults.Open(_dir.Path);
        using var v = store.OpenVolume("v");
        StorageAssert.Throws(() => v.ReadAll(2 * B, B), StorageError.ChecksumMismatch);
        v.Trim(2 * B, B);
        Assert.True(Blocks.IsZero(v.ReadAll(2 * B, B)));
        Assert.Equal(Blocks.Pattern(1, 3), v.ReadAll(3 * B, B));
    }

    [Fact]
    public void Corruption_in_transit_from_the_device_is_caught()
    {
        WriteBlocksAndClose(8);
        using var store = _faults.Open(_dir.Path);
        using var v = store.OpenVolume("v");
        // The disk returns a flipped bit in every read (bad cable, bad controller): no data gets through.
        _faults.Data!.OnRead = (_, buf) => { if (buf.Length > 0) buf[buf.Length / 2] ^= 0x10; };
        for (int b = 0; b < 8; b++)
            StorageAssert.Throws(() => v.ReadAll(b * (long)B, B), StorageError.ChecksumMismatch);
        // Unmapped space needs no device read.
        Assert.True(Blocks.IsZero(v.ReadAll(100 * B, B)));
        _faults.Data.OnRead = null;
        for (int b = 0; b < 8; b++) Assert.Equal(Blocks.Pattern(1, b), v.ReadAll(b * (long)B, B));
    }
}
