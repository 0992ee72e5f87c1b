using System.Diagnostics;
using System.Net.Sockets;
using Platter.Testing;
using Xunit;

namespace Platter.Rbd.Tests;

/// <summary>
/// Storage nodes dying under a running workload: fio over NBD with verification, against a Platter server on the
/// size-3 / min_size-2 pool, while OSDs are SIGKILLed and started again.
/// </summary>
[Collection(IsolatedCephCollection.Name)]
public sealed class NodeLossTests(IsolatedCephCluster ceph)
{
    private static Task<ProcessResult> FioAsync(string uri, int seed, string size) => ProcessRunner.RunAsync("fio",
    [
        "--name=node-loss", "--ioengine=nbd", $"--uri={uri}", "--rw=randwrite", "--bs=4k", "--iodepth=8",
        $"--size={size}", "--verify=crc32c", "--verify_fatal=1", $"--randseed={seed}",
    ], TimeSpan.FromMinutes(5));

    private void WaitAllOsdsUp()
    {
        var deadline = Stopwatch.StartNew();
        while (!ceph.ExecOk("ceph", "osd", "stat").Contains("3 osds: 3 up"))
        {
            Assert.True(deadline.Elapsed < TimeSpan.FromMinutes(2), "the OSDs did not all come back up within 2 minutes");
            Thread.Sleep(500);
        }
    }

    [Fact]
    public async Task One_osd_killed_during_verified_io_gives_the_client_no_error()
    {
        await using var server = ceph.CreateServer();
        await server.StartAsync();
        string name = CephCluster.UniqueName("loss1");
        await server.CliOkAsync("volume", "create", name, "--size", "64M");
        var fio = FioAsync(server.Uri(name), 11, "24M");
        await Task.Delay(TimeSpan.FromSeconds(2));
        Assert.False(fio.IsCompleted, "fio finished before the OSD was killed: make its run longer");
        ceph.KillOsd(1);
        try
        {
            var result = await fio;
            Assert.True(result.ExitCode == 0, result.Describe());
            Assert.Contains("err= 0", result.Stdout);
        }
        finally
        {
            ceph.StartOsd(1);
            WaitAllOsdsUp();
        }
    }

    /// <summary>Waits until the monitor's OSD map shows exactly <paramref name="up"/> OSDs up.</summary>
    private void WaitOsdsUp(int up)
    {
        var deadline = Stopwatch.StartNew();
        while (!ceph.ExecOk("ceph", "osd", "stat").Contains($"3 osds: {up} up"))
        {
            Assert.True(deadline.Elapsed < TimeSpan.FromMinutes(2), $"the OSD map did not show {up} OSDs up within 2 minutes");
            Thread.Sleep(250);
        }
    }

    [Fact]
    public async Task Two_osds_down_make_io_wait_and_it_resumes_when_one_returns()
    {
        await using var server = ceph.CreateServer();
        await server.StartAsync();
        string name = CephCluster.UniqueName("loss2");
        await server.CliOkAsync("volume", "create", name, "--size", "64M");
        await using var client = await NbdTestClient.ConnectAsync(server.NbdSocketPath, name);
        var flushed = new byte[1 << 20];
        new Random(21).NextBytes(flushed);
        Assert.Equal(0u, await client.WriteAsync(32 << 20, flushed));
        Assert.Equal(0u, await client.FlushAsync());

        var fio = FioAsync(server.Uri(name), 12, "24M");
        await Task.Delay(TimeSpan.FromSeconds(2));
        Assert.False(fio.IsCompleted, "fio finished before the OSDs were killed: make its run longer");
        ceph.KillOsd(1);
        ceph.KillOsd(2);
        try
        {
            // Marked down now rather than after the heartbeat grace: from here on every placement group has one
            // replica up of min_size 2, so no write can complete until an OSD returns.
            ceph.ExecOk("ceph", "osd", "down", "1", "2");
            WaitOsdsUp(1);

            // A write with FUA sent below min_size gets no reply: it waits (neither completes nor fails).
            var waiting = new byte[4096];
            Array.Fill(waiting, (byte)0x5c);
            ulong cookie = client.NextCookie();
            await client.SendRequestAsync(NbdTestClient.CmdWrite, NbdTestClient.FlagFua, cookie, 40 << 20, 4096, waiting);
            await Task.Delay(TimeSpan.FromSeconds(10));
            Assert.False(((NetworkStream)client.Stream).DataAvailable, "a write below min_size was answered instead of waiting");
            Assert.False(fio.IsCompleted, "fio finished while the pool was below min_size");

            ceph.StartOsd(2);
            Assert.Equal(0u, NbdTestClient.ErrorOf(await client.ReadReplyAsync(cookie)));
            var result = await fio;
            Assert.True(result.ExitCode == 0, result.Describe());
            Assert.Contains("err= 0", result.Stdout);

            // nothing lost: the data flushed before the loss and the write that waited through it
            var before = await client.ReadAsync(32 << 20, flushed.Length);
            Assert.Equal(0u, before.Error);
            Assert.True(flushed.AsSpan().SequenceEqual(before.Data), "data flushed before the OSDs died differs");
            var after = await client.ReadAsync(40 << 20, 4096);
            Assert.Equal(0u, after.Error);
            Assert.True(waiting.AsSpan().SequenceEqual(after.Data), "the write that waited below min_size is not there");
        }
        finally
        {
            ceph.StartOsd(1);
            ceph.StartOsd(2);
            WaitAllOsdsUp();
        }
    }

    [Fact]
    public async Task Every_osd_lost_while_serving_fails_requests_with_a_clear_error_after_the_op_timeout()
    {
        await using var server = ceph.CreateServer(opTimeoutSeconds: 8);
        await server.StartAsync();
        string name = CephCluster.UniqueName("lossall");
        await server.CliOkAsync("volume", "create", name, "--size", "16M");
        await using var client = await NbdTestClient.ConnectAsync(server.NbdSocketPath, name, structured: true);
        Assert.Equal(0u, await client.WriteAsync(0, new byte[4096], NbdTestClient.FlagFua));
        try
        {
            foreach (int id in new[] { 0, 1, 2 }) ceph.KillOsd(id);
            ceph.ExecOk("ceph", "osd", "down", "0", "1", "2");
            WaitOsdsUp(0);

            // Nothing can answer: the request fails once --ceph-op-timeout passes, with EIO and a message that says
            // why (structured replies carry it), rather than hanging the client forever.
            ulong cookie = client.NextCookie();
            await client.SendRequestAsync(NbdTestClient.CmdWrite, NbdTestClient.FlagFua, cookie, 4096, 4096, new byte[4096]);
            var reply = await client.ReadReplyAsync(cookie);
            Assert.Equal(5u, NbdTestClient.ErrorOf(reply)); // EIO
            var chunk = Assert.Single(reply, c => c.Type == NbdTestClient.ReplyError);
            int length = System.Buffers.Binary.BinaryPrimitives.ReadUInt16BigEndian(chunk.Payload.AsSpan(4));
            string message = System.Text.Encoding.UTF8.GetString(chunk.Payload, 6, length);
            Assert.Contains("the Ceph OSDs did not answer within the operation timeout", message);
        }
        finally
        {
            foreach (int id in new[] { 0, 1, 2 }) ceph.StartOsd(id);
            WaitAllOsdsUp();
        }
    }

    [Fact]
    public void Unreachable_cluster_at_start_is_a_clear_error_not_a_hang()
    {
        using var dir = new TempDirectory("prbdu");
        File.WriteAllText(dir.Combine("ceph.conf"), $"[global]\nmon host = [v2:127.0.0.1:9]\nkeyring = {Path.Combine(ceph.Directory, "keyring")}\n");
        var watch = Stopwatch.StartNew();
        var error = Assert.Throws<Platter.Volumes.StorageException>(() => RbdBackend.Open(new RbdBackendOptions
        {
            Pool = ceph.Pool,
            ConfFile = dir.Combine("ceph.conf"),
            ConnectTimeout = TimeSpan.FromSeconds(3),
        }));
        Assert.Contains("Ceph cluster unreachable", error.Message);
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(60), $"took {watch.Elapsed}");
    }
}
