using System.Diagnostics;
using System.Text.Json;
using Xunit.Sdk;

namespace Platter.Interop.Tests;

/// <summary>
/// Stop the server with SIGTERM (or kill it), start it again on the same store: every flushed byte must be
/// there, and a clean shutdown also flushes what it had acknowledged. These tests restart their class's server.
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
        string expected = Scratch.Combine("expected.raw");
        string after = Scratch.Combine("after.raw");
        SparseImage.Create(expected, size, seed, [(0, 2 * MiB), (9 * MiB + 4 * KiB, 20 * MiB), (90 * MiB, 6 * MiB)]);

        // Bulk data over four connections, flushed by nbdcopy at the end.
        (await ProcessRunner.RunAsync(Tools.NbdCopy, ["--connections=4", "--threads=4", "--flush", expected, export.Uri], TimeSpan.FromSeconds(120)))
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

        (await ProcessRunner.RunAsync(Tools.NbdCopy, ["--connections=4", "--threads=4", export.Uri, after], TimeSpan.FromSeconds(120)))
            .EnsureSuccess("nbdcopy out of the restarted volume failed");
        Assert.True(SparseImage.Sha256(expected) == SparseImage.Sha256(after), $"data after restart differs from what was flushed (seed {seed})");
        // The discarded range is still a hole after restart, not zeros written out.
        var map = await Clients.NbdInfoMapAsync(export.Uri);
        Assert.Contains(map, m => m.IsHole && m.Offset <= 10 * MiB && m.End >= 11 * MiB);
    }

    [Fact]
    public async Task Sigterm_with_a_client_connected_flushes_acknowledged_writes()
    {
        var export = await Fixture.CreateExportAsync("idle-client", 64 * MiB);

        // The client writes without ever flushing, stays connected, and waits; the server is stopped under it.
        using var client = Nbdsh.Start("""
            import os, sys, nbd
            h = nbd.NBD()
            h.connect_uri(os.environ["URI"])
            for i in range(64):
                h.pwrite(bytes([0x40 + i]) * 65536, i * 131072)
            print("ready", flush=True)
            sys.stdin.readline()
            """, new Dictionary<string, string> { ["URI"] = export.Uri });
        try
        {
            await WaitForLineAsync(client, "ready");
            int exitCode = await Server.StopAsync();
            Assert.True(exitCode == 0, $"server exited with code {exitCode} on SIGTERM with a client connected\n{Server.Log}");
        }
        finally
        {
            ProcessRunner.KillTree(client);
        }
        await Server.StartAsync();

        var reads = new List<string>();
        for (int i = 0; i < 64; i++)
        {
            reads.Add($"read -P 0x{0x40 + i:x2} {i * 131072} 65536");
            reads.Add($"read -P 0x00 {i * 131072 + 65536} 65536");
        }
        await Clients.QemuIoAsync(export.Uri, [.. reads]);
    }

    [Theory]
    [InlineData(4096, 4096)]       // 16 MiB in 4 KiB writes: many small requests in flight
    [InlineData(262144, 128)]      // 32 MiB in 256 KiB writes: SIGTERM likely lands mid-payload
    public async Task Sigterm_during_a_write_stream_keeps_every_acknowledged_write(int chunkBytes, int chunks)
    {
        var export = await Fixture.CreateExportAsync("stream", 64 * MiB);

        // Sixteen writes in flight at all times, each filling one chunk with a value that changes every round.
        // The script records the last acknowledged value per chunk, and what was still in flight when the
        // server closed the connection (those may or may not have landed).
        using var writer = Nbdsh.Start("""
            import json, os, sys, nbd
            CHUNK, CHUNKS, DEPTH = int(os.environ["CHUNK"]), int(os.environ["CHUNKS"]), 16
            h = nbd.NBD()
            h.connect_uri(os.environ["URI"])
            bufs = [nbd.Buffer.from_bytearray(bytearray([v]) * CHUNK) for v in range(256)]
            acked, pending, n, announced, error = [0] * CHUNKS, {}, 0, False, ""
            try:
                while True:
                    while h.aio_in_flight() < DEPTH:
                        n += 1
                        chunk, value = n % CHUNKS, n % 255 + 1
                        pending[h.aio_pwrite(bufs[value], chunk * CHUNK)] = (chunk, value)
                    h.poll(-1)
                    while True:
                        cookie = h.aio_peek_command_completed()
                        if cookie <= 0:
                            break
                        chunk, value = pending.pop(cookie)
                        h.aio_command_completed(cookie)
                        acked[chunk] = value
                    if not announced and n > 2 * CHUNKS:
                        print("streaming", flush=True)
                        announced = True
            except nbd.Error as e:
                error = e.string
            print(json.dumps({"acked": acked, "pending": list(pending.values()), "writes": n, "error": error}))
            """, Variables(export, chunkBytes, chunks));
        JsonElement outcome;
        try
        {
            await WaitForLineAsync(writer, "streaming");
            int exitCode = await Server.StopAsync();
            Assert.True(exitCode == 0, $"server exited with code {exitCode} on SIGTERM under load\n{Server.Log}");
            var rest = await writer.StandardOutput.ReadToEndAsync().WaitAsync(TimeSpan.FromSeconds(60));
            var last = rest.Split('\n', StringSplitOptions.RemoveEmptyEntries).LastOrDefault()
                ?? throw new XunitException($"writer printed no outcome\n{await writer.StandardError.ReadToEndAsync()}");
            using var doc = JsonDocument.Parse(last);
            outcome = doc.RootElement.Clone();
        }
        finally
        {
            ProcessRunner.KillTree(writer);
        }
        Output.WriteLine($"writer: {outcome.GetProperty("writes").GetInt64()} writes submitted, ended with \"{outcome.GetProperty("error").GetString()}\"");

        await Server.StartAsync();

        // Every 4 KiB block holds its chunk's last acknowledged value, or the value that was in flight for it:
        // nothing older, nothing torn inside a block, nothing else.
        var verdict = await Nbdsh.RunAsync("""
            import json, os, nbd
            BS, CHUNK, CHUNKS = 4096, int(os.environ["CHUNK"]), int(os.environ["CHUNKS"])
            outcome = json.loads(os.environ["OUTCOME"])
            allowed = [{v} for v in outcome["acked"]]
            for chunk, value in outcome["pending"]:
                allowed[chunk].add(value)
            h = nbd.NBD()
            h.connect_uri(os.environ["URI"])
            bad = []
            for c in range(CHUNKS):
                data = h.pread(CHUNK, c * CHUNK)
                for b in range(CHUNK // BS):
                    block = data[b * BS:(b + 1) * BS]
                    uniform = block == bytes([block[0]]) * BS
                    if not uniform or block[0] not in allowed[c]:
                        bad.append({"offset": c * CHUNK + b * BS, "first": block[0], "uniform": uniform, "allowed": sorted(allowed[c])})
            print(json.dumps({"bad": bad[:20], "badCount": len(bad)}))
            """, new Dictionary<string, string>(Variables(export, chunkBytes, chunks)) { ["OUTCOME"] = outcome.GetRawText() });

        Assert.True(verdict.GetProperty("badCount").GetInt32() == 0, $"acknowledged writes lost or torn across SIGTERM: {verdict}");
    }

    private static Dictionary<string, string> Variables(NbdExport export, int chunkBytes, int chunks) =>
        new() { ["URI"] = export.Uri, ["CHUNK"] = $"{chunkBytes}", ["CHUNKS"] = $"{chunks}" };

    [Fact]
    public async Task Flush_on_one_connection_makes_writes_of_another_durable_even_across_a_crash()
    {
        var export = await Fixture.CreateExportAsync("multi-conn", 64 * MiB);

        // Multi-conn's promise (NBD_FLAG_CAN_MULTI_CONN): a flush acknowledged on any connection covers writes
        // acknowledged on all of them. nbdcopy and QEMU flush on one connection only and rely on this.
        using var client = Nbdsh.Start("""
            import os, sys, nbd
            writer, flusher = nbd.NBD(), nbd.NBD()
            writer.connect_uri(os.environ["URI"])
            flusher.connect_uri(os.environ["URI"])
            assert writer.can_multi_conn()
            for i in range(32):
                writer.pwrite(bytes([0x80 + i]) * 65536, i * 262144)
            flusher.flush()
            print("flushed", flush=True)
            sys.stdin.readline()
            """, new Dictionary<string, string> { ["URI"] = export.Uri });
        try
        {
            await WaitForLineAsync(client, "flushed");
            // SIGKILL: no shutdown flush can rescue the writes; only the client's flush made them durable.
            await Server.KillAsync();
        }
        finally
        {
            ProcessRunner.KillTree(client);
        }
        // The crash left the socket files behind: the server must start anyway.
        await Server.StartAsync();

        var reads = new List<string>();
        for (int i = 0; i < 32; i++) reads.Add($"read -P 0x{0x80 + i:x2} {i * 262144} 65536");
        await Clients.QemuIoAsync(export.Uri, [.. reads]);
    }

    [Fact]
    public async Task Acknowledged_writes_survive_a_sigkill_without_any_flush()
    {
        // The kill must land while acknowledged writes are still uncommitted (the committer commits every second): a
        // client stalled for a second on a loaded machine would let everything commit first and prove nothing. So
        // the check repeats until a restart has replayed writes from the pending-operation ring (the first, nearly always).
        for (int attempt = 1; attempt <= 3; attempt++)
        {
            int recoveredBefore = CountOf(Server.Log, "Recovered ");
            await KillWhileWritingAndVerifyAsync($"unflushed-{attempt}");
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
            while (CountOf(Server.Log, "Recovered ") <= recoveredBefore && DateTime.UtcNow < deadline) await Task.Delay(100);
            if (CountOf(Server.Log, "Recovered ") > recoveredBefore) return;
            Output.WriteLine($"attempt {attempt}: every acknowledged write had been committed before the kill; again");
        }
        Assert.Fail("in three kills during writes the restart never recovered anything from the pending-operation ring:\n" + Server.Log);
    }

    private async Task KillWhileWritingAndVerifyAsync(string name)
    {
        const int Chunk = 64 * 1024, Chunks = 1024;
        var export = await Fixture.CreateExportAsync(name, (long)Chunk * Chunks);

        // The client never flushes: it writes chunk after chunk and prints each index once its write is acknowledged.
        using var client = Nbdsh.Start("""
            import os, nbd
            h = nbd.NBD()
            h.connect_uri(os.environ["URI"])
            for i in range(int(os.environ["CHUNKS"])):
                h.pwrite(bytes([1 + i % 251]) * int(os.environ["CHUNK"]), i * int(os.environ["CHUNK"]))
                print(i, flush=True)
            """, Variables(export, Chunk, Chunks));
        int acknowledged = -1;
        try
        {
            while (acknowledged < 200)
            {
                var line = await client.StandardOutput.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(60))
                    ?? throw new XunitException($"the client ended before its 200th write: {await client.StandardError.ReadToEndAsync()}");
                acknowledged = int.Parse(line, System.Globalization.CultureInfo.InvariantCulture);
            }
            await Server.KillAsync();
            // Lines printed after the kill are writes acknowledged before it.
            while (await client.StandardOutput.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(60)) is { } line)
                acknowledged = int.Parse(line, System.Globalization.CultureInfo.InvariantCulture);
        }
        finally
        {
            ProcessRunner.KillTree(client);
        }
        Output.WriteLine($"{name}: {acknowledged + 1} writes acknowledged before the kill");
        await Server.StartAsync();

        var reads = new List<string>();
        for (int i = 0; i <= acknowledged; i++) reads.Add($"read -P 0x{1 + i % 251:x2} {(long)i * Chunk} {Chunk}");
        await Clients.QemuIoAsync(export.Uri, [.. reads]);
    }

    private static int CountOf(string text, string fragment)
    {
        int n = 0;
        for (int at = text.IndexOf(fragment, StringComparison.Ordinal); at >= 0; at = text.IndexOf(fragment, at + 1, StringComparison.Ordinal)) n++;
        return n;
    }

    private static async Task WaitForLineAsync(Process process, string expected)
    {
        var line = await process.StandardOutput.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(60));
        if (line != expected)
        {
            ProcessRunner.KillTree(process);
            throw new XunitException($"nbdsh client printed \"{line}\" instead of \"{expected}\"\n{await process.StandardError.ReadToEndAsync()}");
        }
    }

    private static void WriteFill(FileStream image, long offset, long length, byte value)
    {
        image.Position = offset;
        var buffer = new byte[length];
        Array.Fill(buffer, value);
        image.Write(buffer);
    }
}
