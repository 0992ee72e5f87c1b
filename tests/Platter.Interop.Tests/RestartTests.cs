using System.Diagnostics;
using Xunit.Sdk;

namespace Platter.Interop.Tests;

/// <summary>
/// Stop the server with SIGTERM, start it again on the same store: every flushed byte must be there, and a
/// clean shutdown also flushes what it had acknowledged. These tests restart their class's server.
/// </summary>
public sealed class RestartTests(ServerFixture fixture, ITestOutputHelper output) : InteropTest(fixture, output), IClassFixture<ServerFixture>
{
    [Fact]
    public async Task Flushed_data_survives_sigterm_and_restart()
    {
        const long size = 96 * MiB;
        int seed = Random.Shared.Next();
        Output.WriteLine($"seed {seed}");
        var export = await Fixture.CreateExportAsync("durable", size);
        string expected = Scratch.File("expected.raw");
        string after = Scratch.File("after.raw");
        SparseImage.Create(expected, size, seed, [(0, 2 * MiB), (9 * MiB + 4 * KiB, 20 * MiB), (90 * MiB, 6 * MiB)]);

        // Bulk data over four connections, flushed by nbdcopy at the end.
        (await Proc.RunAsync(Tools.NbdCopy, ["--connections=4", "--threads=4", "--flush", expected, export.Uri], TimeSpan.FromSeconds(120)))
            .EnsureSuccess("nbdcopy into the volume failed");
        // Small writes, a discard and write-zeroes on top, then an explicit flush.
        await Clients.QemuIoAsync(export.Uri,
            $"write -P 0xee {1 * MiB + 512} 1024",
            $"discard {10 * MiB} {1 * MiB}",
            $"write -z {92 * MiB} {64 * KiB}",
            $"write -P 0xdd {50 * MiB} {256 * KiB}",
            "flush");
        using (var image = new FileStream(expected, FileMode.Open, FileAccess.Write))
        {
            WriteFill(image, 1 * MiB + 512, 1024, 0xee);
            WriteFill(image, 10 * MiB, 1 * MiB, 0x00);
            WriteFill(image, 92 * MiB, 64 * KiB, 0x00);
            WriteFill(image, 50 * MiB, 256 * KiB, 0xdd);
        }

        int exitCode = await Server.StopAsync();
        Assert.True(exitCode == 0, $"server exited with code {exitCode} on SIGTERM; a clean shutdown exits 0\n{Server.Log}");
        await Server.StartAsync();

        (await Proc.RunAsync(Tools.NbdCopy, ["--connections=4", "--threads=4", export.Uri, after], TimeSpan.FromSeconds(120)))
            .EnsureSuccess("nbdcopy out of the restarted volume failed");
        Assert.True(SparseImage.Sha256(expected) == SparseImage.Sha256(after), $"data after restart differs from what was flushed (seed {seed})");
        // The discarded range is still a hole after restart, not zeros written out.
        var map = await Clients.NbdInfoMapAsync(export.Uri);
        Assert.Contains(map, m => m.IsHole && m.Offset <= 10 * MiB && m.End >= 11 * MiB);
    }

    [Fact]
    public async Task Sigterm_with_a_client_connected_flushes_acknowledged_writes()
    {
        var export = await Fixture.CreateExportAsync("in-flight", 64 * MiB);

        // The client writes without ever flushing, stays connected, and waits; the server is stopped under it.
        string script = """
            import os, sys, nbd
            h = nbd.NBD()
            h.connect_uri(os.environ["URI"])
            for i in range(64):
                h.pwrite(bytes([0x40 + i % 64]) * 65536, i * 131072)
            print("ready", flush=True)
            sys.stdin.readline()
            """;
        var psi = Proc.CreateStartInfo(Tools.Require("nbdsh", "python3-libnbd"), ["-n", "-c", script], new Dictionary<string, string?>
        {
            ["PATH"] = Tools.RequireLibnbdPythonDirectory() + ":" + Environment.GetEnvironmentVariable("PATH"),
            ["URI"] = export.Uri,
        });
        psi.RedirectStandardInput = true;
        using var client = Process.Start(psi)!;
        try
        {
            var stderr = client.StandardError.ReadToEndAsync();
            var line = await client.StandardOutput.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(60));
            if (line != "ready")
                throw new XunitException($"nbdsh writer did not get its writes acknowledged: {line}\n{await stderr.WaitAsync(TimeSpan.FromSeconds(5))}");

            int exitCode = await Server.StopAsync();
            Assert.True(exitCode == 0, $"server exited with code {exitCode} on SIGTERM with a client connected\n{Server.Log}");
        }
        finally
        {
            Proc.KillTree(client);
        }
        await Server.StartAsync();

        var reads = new List<string>();
        for (int i = 0; i < 64; i++)
        {
            reads.Add($"read -P 0x{0x40 + i % 64:x2} {i * 131072} 65536");
            reads.Add($"read -P 0x00 {i * 131072 + 65536} 65536");
        }
        await Clients.QemuIoAsync(export.Uri, [.. reads]);
    }

    private static void WriteFill(FileStream image, long offset, long length, byte value)
    {
        image.Position = offset;
        var buffer = new byte[length];
        Array.Fill(buffer, value);
        image.Write(buffer);
    }
}
