using System.Text.Json;
using Platter.Testing;
using Xunit;

namespace Platter.Rbd.Tests;

/// <summary>
/// Real <c>platter serve --store rbd:POOL</c> processes on the test cluster with real peers: the <c>rbd</c> CLI,
/// qemu-io/qemu-img through qemu's own rbd driver and over NBD, python3-libnbd clients that hold a volume open.
/// </summary>
[Collection(CephCollection.Name)]
public sealed class ServerTests(CephCluster ceph)
{
    private string Rbd(params string[] args) => ceph.ExecOk("rbd", args);

    private string QemuRbd(string image) => $"rbd:{ceph.Pool}/{image}:conf={ceph.ConfFile}";

    private async Task<string> QemuIo(string target, params string[] commands)
    {
        var args = new List<string> { "-f", "raw" };
        if (target.Contains('@')) args.Add("-r"); // an RBD snapshot opens read-only only
        foreach (var c in commands) { args.Add("-c"); args.Add(c); }
        args.Add(target);
        var result = await ProcessRunner.RunAsync("qemu-io", args, TimeSpan.FromSeconds(90), new Dictionary<string, string?> { ["CEPH_CONF"] = ceph.ConfFile });
        Assert.True(result.ExitCode == 0 && !result.Stdout.Contains("fail", StringComparison.OrdinalIgnoreCase) &&
                    !result.Stdout.Contains("Pattern verification failed"), result.Describe());
        return result.Stdout;
    }

    [Fact]
    public async Task Rbd_cli_and_qemu_rbd_driver_see_what_platter_serves()
    {
        string name = CephCluster.UniqueName("interop");
        Rbd("create", "--size", "64M", $"{ceph.Pool}/{name}"); // an image Platter did not make
        await QemuIo(QemuRbd(name), "write -P 0x11 0 64k");

        await using var server = ceph.CreateServer();
        await server.StartAsync();
        var info = await server.CliOkAsync("volume", "info", name);
        Assert.Contains($"backend:    rbd (rbd:{ceph.Pool})", info);
        Assert.Contains("64 MiB", info);
        Assert.Contains("allocated:  n/a (not counted on this store unless asked: --usage)", info); // a lookup does not walk the image

        await QemuIo(server.Uri(name), "read -P 0x11 0 64k", "write -P 0x22 8M 64k", "flush");
        await server.CliOkAsync("snapshot", "create", $"{name}@s1");
        await QemuIo(server.Uri(name), "write -P 0x33 16M 4k", "write -z 20M 4M", "flush");
        await server.CliOkAsync("snapshot", "create", $"{name}@s2");

        // rbd snap ls and platter snapshot list agree
        var rbdSnaps = JsonDocument.Parse(Rbd("snap", "ls", "--format", "json", $"{ceph.Pool}/{name}")).RootElement
            .EnumerateArray().Select(s => s.GetProperty("name").GetString()!).ToArray();
        var platterSnaps = JsonDocument.Parse(await server.CliOkAsync("snapshot", "list", name, "--json")).RootElement
            .GetProperty("snapshots").EnumerateArray().Select(s => s.GetProperty("name").GetString()!).ToArray();
        Assert.Equal(["s1", "s2"], rbdSnaps);
        Assert.Equal(rbdSnaps, platterSnaps);
        // A listing does not count the snapshots' allocated bytes on RBD (a walk of each object map) and says so
        // rather than showing 0; du counts them (s1 holds objects 0 and 2: 8 MiB).
        Assert.All(JsonDocument.Parse(await server.CliOkAsync("snapshot", "list", name, "--json")).RootElement.GetProperty("snapshots").EnumerateArray(),
            s => Assert.Equal(JsonValueKind.Null, s.GetProperty("allocatedBytes").ValueKind));
        var listing = await server.CliOkAsync("snapshot", "list", name);
        Assert.Matches($@"{name}@s1\s+64 MiB\s+n/a\s", listing);
        Assert.Contains("n/a: not counted when listing on this store", listing);
        var du = JsonDocument.Parse(await server.CliOkAsync("du", "--json")).RootElement;
        Assert.Equal(8L << 20, du.GetProperty("entries").EnumerateArray().Single(e => e.GetProperty("name").GetString() == $"{name}@s1")
            .GetProperty("allocatedBytes").GetInt64());
        // The same for volumes: the list says n/a; info --usage counts what du counts for the volume.
        var volumes = await server.CliOkAsync("volume", "list");
        Assert.Matches($@"{name}\s+64 MiB\s+n/a\s", volumes);
        Assert.Contains("n/a: not counted when listing on this store", volumes);
        Assert.Equal(du.GetProperty("entries").EnumerateArray().Single(e => e.GetProperty("name").GetString() == name).GetProperty("allocatedBytes").GetInt64(),
            JsonDocument.Parse(await server.CliOkAsync("volume", "info", name, "--usage", "--json")).RootElement.GetProperty("allocatedBytes").GetInt64());

        // rbd diff and platter diff agree, extent by extent
        var rbdDiff = JsonDocument.Parse(Rbd("diff", "--from-snap", "s1", "--format", "json", $"{ceph.Pool}/{name}@s2")).RootElement
            .EnumerateArray().Select(e => (e.GetProperty("offset").GetInt64(), e.GetProperty("length").GetInt64(), e.GetProperty("exists").GetString() == "true"))
            .ToArray();
        var platterDiff = JsonDocument.Parse(await server.CliOkAsync("diff", $"{name}@s1", $"{name}@s2", "--json")).RootElement
            .GetProperty("extents").EnumerateArray().Select(e => (e.GetProperty("offset").GetInt64(), e.GetProperty("length").GetInt64(), e.GetProperty("allocated").GetBoolean()))
            .ToArray();
        Assert.NotEmpty(rbdDiff);
        Assert.Equal(rbdDiff, platterDiff);

        // the whole image over NBD equals `rbd export`, and qemu's rbd driver reads what was written over NBD
        using var files = new TempDirectory("prbdx");
        (await ProcessRunner.RunAsync("qemu-img", ["convert", "-f", "raw", "-O", "raw", server.Uri(name), files.Combine("nbd.raw")])).EnsureSuccess();
        await server.StopAsync(); // closes the image: its lock is released
        Rbd("export", $"{ceph.Pool}/{name}", files.Combine("rbd.raw"));
        Assert.True(File.ReadAllBytes(files.Combine("nbd.raw")).AsSpan().SequenceEqual(File.ReadAllBytes(files.Combine("rbd.raw"))));
        await QemuIo(QemuRbd(name), "read -P 0x11 0 64k", "read -P 0x22 8M 64k", "read -P 0x33 16M 4k", "read -P 0 20M 4M");
        await QemuIo(QemuRbd(name + "@s1"), "read -P 0x22 8M 64k", "read -P 0 16M 4k");
    }

    [Fact]
    public async Task A_second_server_refuses_a_held_volume_naming_the_holder()
    {
        await using var a = ceph.CreateServer();
        await using var b = ceph.CreateServer();
        await a.StartAsync();
        await b.StartAsync();
        string name = CephCluster.UniqueName("held");
        await a.CliOkAsync("volume", "create", name, "--size", "16M");
        using var holder = new NbdHolder(a.Uri(name));
        Assert.Equal("ok", holder.Send("w 0 7", TimeSpan.FromSeconds(60)));

        var refused = await ProcessRunner.RunAsync("qemu-io", ["-f", "raw", "-c", "read 0 4k", b.Uri(name)], TimeSpan.FromSeconds(60));
        Assert.NotEqual(0, refused.ExitCode);
        Assert.Contains($"volume '{name}' is served by another server: held by {Environment.MachineName} (pid {a.ProcessId}", refused.Stderr);
        Assert.Contains("platter volume takeover", refused.Stderr);
        Assert.Equal("ok", holder.Send("w 4096 8", TimeSpan.FromSeconds(60))); // the holder was never disturbed
    }

    [Fact]
    public async Task Crash_then_takeover_keeps_every_flushed_block_and_fences_the_dead_server()
    {
        await using var a = ceph.CreateServer();
        await using var b = ceph.CreateServer();
        await a.StartAsync();
        await b.StartAsync();
        string name = CephCluster.UniqueName("crash");
        await a.CliOkAsync("volume", "create", name, "--size", "16M");
        var flushed = new List<int>();
        using (var holder = new NbdHolder(a.Uri(name)))
        {
            // sequence-stamped blocks, each flushed before the next; the ones answered "ok" are durable
            for (int i = 1; i <= 40; i++)
            {
                if (holder.Send($"w {i * 4096} {i}", TimeSpan.FromSeconds(60)) == "ok") flushed.Add(i);
            }
            await a.KillAsync(); // SIGKILL while the client is connected: the lock stays behind with a dead holder
        }
        Assert.Equal(40, flushed.Count);

        var takeover = await b.CliOkAsync("volume", "takeover", name);
        Assert.Contains($"took volume '{name}' over: fenced the previous holder", takeover);
        string address = takeover[(takeover.IndexOf("client ", StringComparison.Ordinal) + "client ".Length)..].TrimEnd().TrimEnd(')');
        Assert.Contains(address, ceph.ExecOk("ceph", "osd", "blocklist", "ls"));

        using var reader = new NbdHolder(b.Uri(name));
        foreach (int i in flushed) Assert.Equal($"ok {i}", reader.Send($"r {i * 4096}", TimeSpan.FromSeconds(60)));
    }

    [Fact]
    public async Task Zombie_server_writes_fail_after_takeover_and_its_other_volumes_keep_working()
    {
        await using var a = ceph.CreateServer();
        await using var b = ceph.CreateServer();
        await a.StartAsync();
        await b.StartAsync();
        string zombie = CephCluster.UniqueName("zomb");
        string other = CephCluster.UniqueName("other");
        await a.CliOkAsync("volume", "create", zombie, "--size", "16M");
        await a.CliOkAsync("volume", "create", other, "--size", "16M");
        using var onZombie = new NbdHolder(a.Uri(zombie));
        using var onOther = new NbdHolder(a.Uri(other));
        Assert.Equal("ok", onZombie.Send("w 0 1", TimeSpan.FromSeconds(60)));
        Assert.Equal("ok", onOther.Send("w 0 1", TimeSpan.FromSeconds(60)));

        a.Signal("STOP"); // hung, not dead: its connections and lock stay
        try
        {
            Assert.Contains("fenced the previous holder", await b.CliOkAsync("volume", "takeover", zombie));
            using var onB = new NbdHolder(b.Uri(zombie));
            Assert.Equal("ok", onB.Send("w 0 187", TimeSpan.FromSeconds(60)));
        }
        finally
        {
            a.Signal("CONT");
        }

        // A wakes up and writes: refused (blocklisted), and the image keeps B's data
        var late = onZombie.Send("w 0 170", TimeSpan.FromSeconds(120));
        Assert.StartsWith("err", late);
        using (var check = new NbdHolder(b.Uri(zombie)))
        {
            Assert.Equal("ok 187", check.Send("r 0", TimeSpan.FromSeconds(60)));
        }
        // A's other volume has its own connection, which nobody fenced
        Assert.Equal("ok", onOther.Send("w 4096 2", TimeSpan.FromSeconds(60)));
        Assert.Equal("ok 2", onOther.Send("r 4096", TimeSpan.FromSeconds(60)));
    }
}
