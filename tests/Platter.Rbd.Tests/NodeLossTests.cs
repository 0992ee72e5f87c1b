using System.Diagnostics;
using Platter.Testing;
using Xunit;

namespace Platter.Rbd.Tests;

/// <summary>
/// Storage nodes dying under a running workload: fio over NBD with verification, against a Platter server on the
/// size-3 / min_size-2 pool, while OSDs are SIGKILLed and started again.
/// </summary>
[Collection(CephCollection.Name)]
public sealed class NodeLossTests(CephCluster ceph)
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
        await using var server = new RbdServer(ceph);
        await server.StartAsync();
        string name = CephCluster.UniqueName("loss1");
        await server.CliOkAsync("volume", "create", name, "--size", "64M");
        var fio = FioAsync(server.Uri(name), 11, "24M");
        await Task.Delay(TimeSpan.FromSeconds(2));
        Assert.False(fio.IsCompleted, "fio finished before the OSD was killed: make its run longer");
        ceph.ExecOk(ceph.Script, "kill-osd", ceph.Directory, "1");
        try
        {
            var result = await fio;
            Assert.True(result.ExitCode == 0, result.Describe());
            Assert.Contains("err= 0", result.Stdout);
        }
        finally
        {
            ceph.ExecOk(ceph.Script, "start-osd", ceph.Directory, "1");
            WaitAllOsdsUp();
        }
    }

    [Fact]
    public async Task Two_osds_killed_make_io_wait_and_it_resumes_when_one_returns()
    {
        await using var server = new RbdServer(ceph);
        await server.StartAsync();
        string name = CephCluster.UniqueName("loss2");
        await server.CliOkAsync("volume", "create", name, "--size", "64M");
        var fio = FioAsync(server.Uri(name), 12, "24M");
        await Task.Delay(TimeSpan.FromSeconds(2));
        Assert.False(fio.IsCompleted, "fio finished before the OSDs were killed: make its run longer");
        ceph.ExecOk(ceph.Script, "kill-osd", ceph.Directory, "1");
        ceph.ExecOk(ceph.Script, "kill-osd", ceph.Directory, "2");
        try
        {
            // below min_size the placement groups stop taking I/O: the client waits rather than failing
            var waited = await Task.WhenAny(fio, Task.Delay(TimeSpan.FromSeconds(20)));
            Assert.NotSame(fio, waited);
            ceph.ExecOk(ceph.Script, "start-osd", ceph.Directory, "2");
            var result = await fio;
            Assert.True(result.ExitCode == 0, result.Describe());
            Assert.Contains("err= 0", result.Stdout);
        }
        finally
        {
            ceph.ExecOk(ceph.Script, "start-osd", ceph.Directory, "1");
            ceph.ExecOk(ceph.Script, "start-osd", ceph.Directory, "2");
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
