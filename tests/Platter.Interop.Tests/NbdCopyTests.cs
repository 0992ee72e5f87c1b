namespace Platter.Interop.Tests;

/// <summary>nbdcopy in and out with four connections (multi-conn), verified by checksum.</summary>
public sealed class NbdCopyTests(ServerFixture fixture, ITestOutputHelper output) : InteropTest(fixture, output), IClassFixture<ServerFixture>
{
    [Fact]
    public async Task Copy_in_and_out_over_four_connections_preserves_every_byte()
    {
        const long size = 128 * MiB;
        int seed = Random.Shared.Next();
        Output.WriteLine($"seed {seed}");
        var export = await Fixture.CreateExportAsync("copy", size);
        string source = Scratch.Combine("source.raw");
        string copy = Scratch.Combine("copy.raw");
        // Data spread over the disk with holes between, so several connections each get data and holes.
        SparseImage.Create(source, size, seed,
            [(0, 3 * MiB), (10 * MiB + 4 * KiB, 12 * MiB), (40 * MiB, 4 * KiB), (64 * MiB, 30 * MiB), (127 * MiB, 1 * MiB)]);

        var copyIn = await NbdCopyAsync(source, export.Uri);
        var copyOut = await NbdCopyAsync(export.Uri, copy);

        // nbdcopy falls back to one connection when the server does not advertise multi-conn: make sure it did not.
        Assert.True(copyIn.Stderr.Contains("connections=4"), $"nbdcopy did not use 4 connections into the volume\n{copyIn.Describe()}");
        Assert.True(copyOut.Stderr.Contains("connections=4"), $"nbdcopy did not use 4 connections out of the volume\n{copyOut.Describe()}");
        Assert.True(SparseImage.Sha256(source) == SparseImage.Sha256(copy), $"copy out of the volume differs from what was copied in (seed {seed})");
    }

    [Fact]
    public async Task Copy_between_two_volumes_over_four_connections_each()
    {
        const long size = 64 * MiB;
        int seed = Random.Shared.Next();
        Output.WriteLine($"seed {seed}");
        var first = await Fixture.CreateExportAsync("copy-a", size);
        var second = await Fixture.CreateExportAsync("copy-b", size);
        string source = Scratch.Combine("source.raw");
        string copy = Scratch.Combine("copy.raw");
        SparseImage.Create(source, size, seed, [(1 * MiB, 7 * MiB), (33 * MiB + 512, 9 * MiB), (60 * MiB, 4 * MiB)]);

        await NbdCopyAsync(source, first.Uri);
        var between = await NbdCopyAsync(first.Uri, second.Uri);
        await NbdCopyAsync(second.Uri, copy);

        Assert.True(between.Stderr.Contains("connections=4"), $"nbdcopy did not use 4 connections\n{between.Describe()}");
        Assert.True(SparseImage.Sha256(source) == SparseImage.Sha256(copy), $"volume-to-volume copy changed the data (seed {seed})");
    }

    private static async Task<ProcessResult> NbdCopyAsync(string from, string to) =>
        // --threads: nbdcopy caps connections at the thread count, which defaults to the number of cores.
        // -v prints the connection count actually used.
        (await ProcessRunner.RunAsync(Tools.NbdCopy, ["-v", "--connections=4", "--threads=4", "--flush", from, to], TimeSpan.FromSeconds(120)))
            .EnsureSuccess("nbdcopy failed");
}
