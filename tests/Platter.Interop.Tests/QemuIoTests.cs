namespace Platter.Interop.Tests;

/// <summary>
/// qemu-io through QEMU's own NBD client (-f raw): pattern writes and reads, discard, write-zeroes, queued aio
/// writes with flush, and sub-block writes. Reads always happen on a new connection, so they see what the
/// server kept, not what one connection happened to cache.
/// </summary>
public sealed class QemuIoTests(ServerFixture fixture, ITestOutputHelper output) : InteropTest(fixture, output), IClassFixture<ServerFixture>
{
    [Fact]
    public async Task Pattern_writes_read_back_and_unwritten_ranges_read_as_zeros()
    {
        var export = await Fixture.CreateExportAsync("pattern", 64 * MiB);

        await Clients.QemuIoAsync(export.Uri,
            $"write -P 0xa5 0 {1 * MiB}",
            $"write -P 0x5a {3 * MiB} {512 * KiB}",
            $"write -P 0xc3 {64 * MiB - 64 * KiB} {64 * KiB}");

        await Clients.QemuIoAsync(export.Uri,
            $"read -P 0xa5 0 {1 * MiB}",
            $"read -P 0x00 {1 * MiB} {2 * MiB}",
            $"read -P 0x5a {3 * MiB} {512 * KiB}",
            $"read -P 0x00 {3 * MiB + 512 * KiB} {1 * MiB}",
            $"read -P 0xc3 {64 * MiB - 64 * KiB} {64 * KiB}");
    }

    [Fact]
    public async Task Overwrite_replaces_only_the_written_range()
    {
        var export = await Fixture.CreateExportAsync("overwrite", 64 * MiB);

        await Clients.QemuIoAsync(export.Uri, $"write -P 0x11 0 {1 * MiB}", $"write -P 0x22 {256 * KiB} {64 * KiB}");

        await Clients.QemuIoAsync(export.Uri,
            $"read -P 0x11 0 {256 * KiB}",
            $"read -P 0x22 {256 * KiB} {64 * KiB}",
            $"read -P 0x11 {320 * KiB} {704 * KiB}");
    }

    [Fact]
    public async Task Discarded_range_reads_as_zeros_and_its_neighbours_keep_their_data()
    {
        var export = await Fixture.CreateExportAsync("discard", 64 * MiB);

        await Clients.QemuIoAsync(export.Uri, $"write -P 0x77 0 {1 * MiB}", "flush", $"discard {256 * KiB} {256 * KiB}", "flush");

        await Clients.QemuIoAsync(export.Uri,
            $"read -P 0x77 0 {256 * KiB}",
            $"read -P 0x00 {256 * KiB} {256 * KiB}",
            $"read -P 0x77 {512 * KiB} {512 * KiB}");
    }

    [Fact]
    public async Task Write_zeroes_reads_as_zeros_with_and_without_unmap()
    {
        var export = await Fixture.CreateExportAsync("zero", 64 * MiB);

        await Clients.QemuIoAsync(export.Uri,
            $"write -P 0x66 0 {1 * MiB}",
            $"write -z {128 * KiB} {128 * KiB}",
            // -u lets the server deallocate (WRITE_ZEROES without NO_HOLE).
            $"write -z -u {512 * KiB} {64 * KiB}",
            // Unaligned to the 4 KiB block: the server must zero exactly these bytes, no more.
            $"write -z {700 * KiB + 512} {3 * KiB}");

        await Clients.QemuIoAsync(export.Uri,
            $"read -P 0x66 0 {128 * KiB}",
            $"read -P 0x00 {128 * KiB} {128 * KiB}",
            $"read -P 0x66 {256 * KiB} {256 * KiB}",
            $"read -P 0x00 {512 * KiB} {64 * KiB}",
            $"read -P 0x66 {576 * KiB} {124 * KiB + 512}",
            $"read -P 0x00 {700 * KiB + 512} {3 * KiB}",
            $"read -P 0x66 {703 * KiB + 512} {320 * KiB + 512}");
    }

    [Fact]
    public async Task Queued_aio_writes_followed_by_flush_all_read_back()
    {
        var export = await Fixture.CreateExportAsync("aio", 64 * MiB);
        const int writes = 32;
        const long chunk = 128 * KiB;

        // Interleaved offsets so neighbouring requests are in flight together and complete out of order.
        var commands = new List<string>();
        for (int i = 0; i < writes; i++)
        {
            int slot = (i * 7) % writes;
            commands.Add($"aio_write -P 0x{slot + 0x20:x2} {slot * chunk * 2} {chunk}");
        }
        commands.Add("aio_flush");
        commands.Add("flush");
        await Clients.QemuIoAsync(export.Uri, [.. commands]);

        var reads = new List<string>();
        for (int slot = 0; slot < writes; slot++)
        {
            reads.Add($"read -P 0x{slot + 0x20:x2} {slot * chunk * 2} {chunk}");
            reads.Add($"read -P 0x00 {slot * chunk * 2 + chunk} {chunk}");
        }
        await Clients.QemuIoAsync(export.Uri, [.. reads]);
    }

    [Fact]
    public async Task Unaligned_512_byte_writes_keep_every_neighbouring_sector()
    {
        var export = await Fixture.CreateExportAsync("unaligned", 64 * MiB);
        const int sector = 512;
        const int sectors = 32; // 16 KiB: four 4 KiB blocks
        var expected = new byte[sectors];
        Array.Fill(expected, (byte)0x11);

        var writes = new List<string> { $"write -P 0x11 0 {sectors * sector}" };
        // Sectors at the start, middle and end of blocks, and a 1 KiB write straddling a block boundary.
        foreach (var (first, count, pattern) in new[] { (1, 1, 0x22), (11, 1, 0x33), (15, 1, 0x44), (7, 2, 0x55), (30, 1, 0x66) })
        {
            writes.Add($"write -P 0x{pattern:x2} {first * sector} {count * sector}");
            for (int s = first; s < first + count; s++) expected[s] = (byte)pattern;
        }
        // A single sector in the middle of a never-written block: the rest of that block stays zero.
        writes.Add($"write -P 0x77 {1 * MiB + 3 * sector} {sector}");
        await Clients.QemuIoAsync(export.Uri, [.. writes]);

        var reads = new List<string>();
        for (int s = 0; s < sectors; s++) reads.Add($"read -P 0x{expected[s]:x2} {s * sector} {sector}");
        reads.Add($"read -P 0x00 {1 * MiB} {3 * sector}");
        reads.Add($"read -P 0x77 {1 * MiB + 3 * sector} {sector}");
        reads.Add($"read -P 0x00 {1 * MiB + 4 * sector} {4 * sector}");
        await Clients.QemuIoAsync(export.Uri, [.. reads]);
    }
}
