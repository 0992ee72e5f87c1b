using Platter.Server.Transfer;
using Xunit;

namespace Platter.Server.Tests;

/// <summary>
/// The send stream's writer and reader (docs/SEND_STREAM.md): a round trip, and every possible truncation and every
/// single-bit flip of a small stream refused by the reader before it returns the end record.
/// </summary>
public class SendStreamTests
{
    private static readonly SendStreamHeader Header = new(1 << 20, "s2", Guid.NewGuid(), "s1", Guid.NewGuid(), "vm1", DateTimeOffset.UnixEpoch);

    private static async Task<byte[]> WriteSampleAsync()
    {
        using var output = new MemoryStream();
        var writer = new SendStreamWriter(output);
        await writer.WriteHeaderAsync(Header, default);
        await writer.WriteDataAsync(4096, Enumerable.Range(0, 300).Select(i => (byte)i).ToArray(), default);
        await writer.WriteZeroAsync(65536, 8192, default);
        await writer.WriteDataAsync((1 << 20) - 512, new byte[512].Select(_ => (byte)0xAB).ToArray(), default);
        await writer.WriteEndAsync(default);
        return output.ToArray();
    }

    private static async Task<List<SendRecord>> ReadAllAsync(byte[] bytes)
    {
        var reader = new SendStreamReader(new MemoryStream(bytes));
        await reader.ReadHeaderAsync(default);
        var records = new List<SendRecord>();
        while (true)
        {
            var r = await reader.ReadRecordAsync(default);
            records.Add(r with { Payload = r.Payload.ToArray() });
            if (r.Type == SendRecordType.End) return records;
        }
    }

    [Fact]
    public async Task Round_trip_returns_the_header_and_records_written()
    {
        var bytes = await WriteSampleAsync();
        var reader = new SendStreamReader(new MemoryStream(bytes));
        Assert.Equal(Header, await reader.ReadHeaderAsync(default));
        var records = await ReadAllAsync(bytes);
        Assert.Equal([SendRecordType.Data, SendRecordType.Zero, SendRecordType.Data, SendRecordType.End], records.Select(r => r.Type));
        Assert.Equal((4096L, 300L), (records[0].Offset, records[0].Length));
        Assert.Equal(Enumerable.Range(0, 300).Select(i => (byte)i), records[0].Payload.ToArray());
        Assert.Equal((65536L, 8192L), (records[1].Offset, records[1].Length));
    }

    [Fact]
    public async Task Every_truncation_is_refused()
    {
        var bytes = await WriteSampleAsync();
        for (int cut = 0; cut < bytes.Length; cut++)
        {
            var e = await Assert.ThrowsAsync<SendStreamException>(() => ReadAllAsync(bytes[..cut]));
            Assert.False(string.IsNullOrWhiteSpace(e.Message));
        }
    }

    [Fact]
    public async Task Every_single_bit_flip_is_refused()
    {
        var bytes = await WriteSampleAsync();
        for (int at = 0; at < bytes.Length; at++)
        {
            for (int bit = 0; bit < 8; bit++)
            {
                var damaged = (byte[])bytes.Clone();
                damaged[at] ^= (byte)(1 << bit);
                await Assert.ThrowsAsync<SendStreamException>(() => ReadAllAsync(damaged));
            }
        }
    }

    [Fact]
    public async Task Trailing_bytes_a_record_outside_the_volume_and_another_version_are_refused()
    {
        var bytes = await WriteSampleAsync();
        var trailing = await Assert.ThrowsAsync<SendStreamException>(() => ReadAllAsync([.. bytes, 0]));
        Assert.Contains("follow the end record", trailing.Message);

        using var output = new MemoryStream();
        var writer = new SendStreamWriter(output);
        await writer.WriteHeaderAsync(Header with { VolumeSizeBytes = 4096 }, default);
        await writer.WriteDataAsync(4096, new byte[1], default);
        await writer.WriteEndAsync(default);
        var outside = await Assert.ThrowsAsync<SendStreamException>(() => ReadAllAsync(output.ToArray()));
        Assert.Contains("outside", outside.Message);

        var version = (byte[])bytes.Clone();
        version[8] = 2;
        var newer = await Assert.ThrowsAsync<SendStreamException>(() => ReadAllAsync(version));
        Assert.Contains("version 2 is not supported", newer.Message);
    }
}
