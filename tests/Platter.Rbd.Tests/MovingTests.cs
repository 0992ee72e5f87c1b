using System.Text.Json;
using Platter.Testing;
using Xunit;

namespace Platter.Rbd.Tests;

/// <summary>
/// <c>platter send | platter receive</c> between an embedded store and a cluster store (<c>--store rbd:POOL</c>),
/// both ways, each end a real <c>platter serve</c> and the pipe a real shell pipe; qemu-img compares what arrived.
/// </summary>
[Collection(CephCollection.Name)]
public sealed class MovingTests(CephCluster ceph)
{
    [Fact]
    public async Task Full_and_incremental_streams_move_a_volume_from_an_embedded_store_to_rbd_and_back()
    {
        string onRbd = CephCluster.UniqueName("mvrbd");
        await using var embedded = new PlatterServer();
        await embedded.StartAsync();
        await using var rbd = ceph.CreateServer();
        await rbd.StartAsync();

        await embedded.CliOkAsync("volume", "create", "src", "--size", "16M");
        await QemuIoAsync(embedded.Uri("src"), "write -P 0x11 0 4M", "write -P 0x22 12M 64k");
        await embedded.CliOkAsync("snapshot", "create", "src@s1");
        await PipeAsync(embedded, ["send", "src@s1"], rbd, ["receive", onRbd]);
        await CompareAsync(embedded.Uri("src@s1"), rbd.Uri(onRbd));

        // A change, a trim and a grow, then only the change crosses (the stream follows it, not the 24 MiB volume).
        await QemuIoAsync(embedded.Uri("src"), "write -P 0x33 1M 64k", "discard 12M 64k");
        await embedded.CliOkAsync("volume", "resize", "src", "--size", "24M");
        await QemuIoAsync(embedded.Uri("src"), "write -P 0x44 20M 64k");
        await embedded.CliOkAsync("snapshot", "create", "src@s2");
        using var files = new TempDirectory("prbdmove");
        string inc = files.Combine("s1-s2.stream");
        await embedded.CliOkAsync("send", "src@s2", "--from", "s1", "-o", inc);
        Assert.InRange(new FileInfo(inc).Length, 128 * 1024, 1024 * 1024);
        await rbd.CliOkAsync("receive", onRbd, "-i", inc);
        await CompareAsync(embedded.Uri("src@s2"), rbd.Uri(onRbd));
        using (var snaps = JsonDocument.Parse(await rbd.CliOkAsync("snapshot", "list", onRbd, "--json")))
            Assert.Equal(["s1", "s2"], snaps.RootElement.GetProperty("snapshots").EnumerateArray().Select(s => s.GetProperty("name").GetString()!).ToArray());

        // And back: from the cluster store into a second volume of the embedded store.
        await PipeAsync(rbd, ["send", $"{onRbd}@s2"], embedded, ["receive", "back"]);
        await CompareAsync(embedded.Uri("src@s2"), embedded.Uri("back"));

        await rbd.CliOkAsync("volume", "delete", onRbd, "--recursive");
    }

    private static async Task QemuIoAsync(string uri, params string[] commands) =>
        (await ProcessRunner.RunAsync("qemu-io", ["-f", "raw", .. commands.SelectMany(c => new[] { "-c", c }), "-c", "flush", uri])).EnsureSuccess();

    private static async Task CompareAsync(string expected, string actual)
    {
        var compare = await ProcessRunner.RunAsync("qemu-img", ["compare", "-f", "raw", "-F", "raw", expected, actual]);
        Assert.True(compare.ExitCode == 0, $"{actual} differs from {expected}\n{compare.Describe()}");
        // qemu-img compare lets a longer image pass when its tail reads as zeros: the sizes are compared too.
        var sizes = new List<string>();
        foreach (var uri in new[] { expected, actual })
            sizes.Add((await ProcessRunner.RunAsync("nbdinfo", ["--size", uri])).EnsureSuccess().Stdout.Trim());
        Assert.Equal(sizes[0], sizes[1]);
    }

    private static async Task PipeAsync(PlatterServer from, string[] send, PlatterServer to, string[] receive) =>
        (await PlatterServer.PipeAsync(from, send, to, receive)).EnsureSuccess("send | receive failed");
}
