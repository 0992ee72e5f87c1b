using Platter.Cli;
using Platter.Server.Api;
using Xunit;

namespace Platter.Server.Tests;

/// <summary><c>platter serve --read-only</c>: NBD clients can read every volume and change none.</summary>
public class ReadOnlyServeTests
{
    private const uint EPERM = 1;

    [Fact]
    public async Task ReadOnlyServerRefusesNbdWritesAndStillManagesTheCatalog()
    {
        using var dir = new TempDirectory();
        var storePath = dir.Combine("store");
        var block = Enumerable.Range(0, 4096).Select(i => (byte)(i * 7 + 1)).ToArray();

        // Data written by an ordinary server first, so there is something to protect.
        await using (var writer = await RunningHost.StartAsync(_ => new PlatterHostOptions
        {
            StoreDirectory = storePath,
            ApiSocketPath = dir.Combine("setup-api.sock"),
        }))
        {
            writer.Host.Store.CreateVolume("vm1", 1 << 20);
            using var volume = writer.Host.EmbeddedStore().OpenVolume("vm1");
            volume.Write(8192, block);
            await volume.FlushAsync();
        }

        var nbdSocket = dir.Combine("nbd.sock");
        var apiSocket = dir.Combine("api.sock");
        var stop = new TaskCompletionSource();
        var serving = new TaskCompletionSource<PlatterHost>(TaskCreationOptions.RunContinuationsAsynchronously);
        var error = new StringWriter();
        var context = new CliContext
        {
            Out = new StringWriter(),
            Error = error,
            GetEnvironment = name => name == "HOME" ? dir.Path : null,
            ShutdownRequested = stop.Task,
            Serving = host => serving.TrySetResult(host),
            CreateLoggerFactory = _ => Microsoft.Extensions.Logging.Abstractions.NullLoggerFactory.Instance,
        };
        var run = PlatterCli.RunAsync(
            ["serve", "--read-only", "--store", storePath, "--listen", "none", "--socket", nbdSocket, "--api-socket", apiSocket], context);
        try
        {
            var finished = await Task.WhenAny(serving.Task, run);
            Assert.True(finished == serving.Task, $"serve ended early: {error}");
            Assert.True((await serving.Task).Options.ReadOnly);

            await using (var nbd = await NbdTestClient.ConnectWithExportNameAsync(nbdSocket, "vm1"))
            {
                Assert.Equal(1L << 20, nbd.Size);
                Assert.True((nbd.TransmissionFlags & NbdTestClient.TxReadOnly) != 0,
                    $"NBD_FLAG_READ_ONLY missing from transmission flags 0x{nbd.TransmissionFlags:x4}");

                var (writeError, _) = await nbd.RequestAsync(NbdTestClient.CmdWrite, 8192, 4096, new byte[4096]);
                Assert.Equal(EPERM, writeError);
                var (trimError, _) = await nbd.RequestAsync(NbdTestClient.CmdTrim, 8192, 4096);
                Assert.Equal(EPERM, trimError);
                var (zeroError, _) = await nbd.RequestAsync(NbdTestClient.CmdWriteZeroes, 8192, 4096);
                Assert.Equal(EPERM, zeroError);
                // A flush has nothing to make durable, so it succeeds: clients flush before they disconnect.
                var (flushError, _) = await nbd.RequestAsync(NbdTestClient.CmdFlush, 0, 0);
                Assert.Equal(0u, flushError);

                var (readError, data) = await nbd.RequestAsync(NbdTestClient.CmdRead, 8192, 4096);
                Assert.Equal(0u, readError);
                Assert.Equal(block, data);
            }

            // Only NBD is read-only: the owner still manages volumes through the API, and the CLI knows to
            // attach read-only (QEMU refuses to open a read-only export read-write).
            using var api = PlatterApiClient.ForUnixSocket(apiSocket);
            Assert.True((await api.GetHealthAsync()).NbdReadOnly);
            await api.CreateVolumeAsync("vm2", 1 << 20);
            var env = new Dictionary<string, string> { ["HOME"] = dir.Path, ["PLATTER_API_SOCKET"] = apiSocket };
            var attach = await CliRunner.RunAsync(env, "attach", "vm2", "--qemu");
            Assert.True(attach.ExitCode == 0, attach.ToString());
            Assert.Contains(",read-only=on", attach.Out);
            await using (var nbd = await NbdTestClient.ConnectWithExportNameAsync(nbdSocket, "vm2"))
            {
                Assert.True((nbd.TransmissionFlags & NbdTestClient.TxReadOnly) != 0, "a volume created while serving read-only must be read-only too");
            }
        }
        finally
        {
            stop.TrySetResult();
            Assert.Equal(0, await run);
        }
        Assert.Equal("", error.ToString());

        // Nothing an NBD client sent changed the data.
        await using var after = await RunningHost.StartAsync(_ => new PlatterHostOptions
        {
            StoreDirectory = storePath,
            ApiSocketPath = dir.Combine("check-api.sock"),
        });
        using var check = after.Host.EmbeddedStore().OpenVolume("vm1");
        var stored = new byte[4096];
        check.Read(8192, stored);
        Assert.Equal(block, stored);
    }

    [Fact]
    public async Task WritableServerAdvertisesNoReadOnlyFlag()
    {
        // The other half of the contract: without --read-only the same client may write.
        await using var server = await RunningHost.StartAsync(dir => new PlatterHostOptions
        {
            StoreDirectory = dir.Combine("store"),
            ApiSocketPath = dir.Combine("api.sock"),
            NbdSocketPath = dir.Combine("nbd.sock"),
        });
        server.Host.Store.CreateVolume("vm1", 1 << 20);
        await using var nbd = await NbdTestClient.ConnectWithExportNameAsync(server.Directory.Combine("nbd.sock"), "vm1");
        Assert.Equal(0, nbd.TransmissionFlags & NbdTestClient.TxReadOnly);
        var (writeError, _) = await nbd.RequestAsync(NbdTestClient.CmdWrite, 0, 4096, new byte[4096]);
        Assert.Equal(0u, writeError);
        using var client = server.Client();
        Assert.False((await client.GetHealthAsync()).NbdReadOnly);
    }
}
