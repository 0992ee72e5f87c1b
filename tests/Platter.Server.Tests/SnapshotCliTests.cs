using System.CommandLine;
using System.Text.Json;
using Platter.Cli;
using Platter.Server.Api;
using Xunit;

namespace Platter.Server.Tests;

/// <summary>platter snapshot|clone|rollback|diff|du and volume delete --recursive against a real server.</summary>
public class SnapshotCliTests
{
    private const int Block = 4096;

    private static async Task<CliRunner.Result> Ok(Dictionary<string, string> env, params string[] args)
    {
        var result = await CliRunner.RunAsync(env, args);
        Assert.True(result.ExitCode == 0, string.Join(' ', args) + "\n" + result);
        Assert.Equal("", result.Error);
        return result;
    }

    private static async Task Fails(Dictionary<string, string> env, int exitCode, string fragment, params string[] args)
    {
        var result = await CliRunner.RunAsync(env, args);
        Assert.True(result.ExitCode == exitCode, string.Join(' ', args) + "\n" + result);
        var line = Assert.Single(result.Error.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("platter: ", line);
        Assert.Contains(fragment, line);
        Assert.Equal("", result.Out);
    }

    [Fact]
    public async Task SnapshotCommandsForPeopleAndScripts()
    {
        await using var server = await RunningHost.StartAsync();
        var env = server.CliEnvironment();
        await Ok(env, "volume", "create", "vm1", "--size", "1M");
        SnapshotApiTests.Write(server, "vm1", 0, SnapshotApiTests.Pattern(1));

        Assert.Equal("no snapshots (take one with `platter snapshot create VOLUME@SNAPSHOT`)\n", (await Ok(env, "snapshot", "list")).Out);
        Assert.Equal("created snapshot 'vm1@s1' (1 MiB)\n", (await Ok(env, "snapshot", "create", "vm1@s1")).Out);
        var json = JsonSerializer.Deserialize((await Ok(env, "snapshot", "create", "vm1@s2", "--json")).Out, PlatterJsonContext.Default.SnapshotDto)!;
        Assert.Equal("vm1@s2", json.FullName);
        Assert.Equal(1 << 20, json.SizeBytes);
        Assert.Equal(Block, json.AllocatedBytes);

        await Ok(env, "volume", "create", "db", "--size", "1M");
        await Ok(env, "snapshot", "create", "db@nightly");
        var lines = (await Ok(env, "snapshot", "list")).Out.TrimEnd('\n').Split('\n');
        Assert.Equal(4, lines.Length);
        Assert.Matches(@"^NAME\s+SIZE\s+ALLOCATED\s+CREATED\s+CLONES$", lines[0]);
        Assert.Matches(@"^db@nightly\s+1 MiB\s+0 B\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ\s+-$", lines[1]);
        Assert.Matches(@"^vm1@s1\s+1 MiB\s+4 KiB\s+", lines[2]);
        Assert.Matches(@"^vm1@s2\s+", lines[3]);

        var only = JsonSerializer.Deserialize((await Ok(env, "snapshot", "list", "vm1", "--json")).Out, PlatterJsonContext.Default.SnapshotListDto)!;
        Assert.Equal(["vm1@s1", "vm1@s2"], only.Snapshots.Select(s => s.FullName).ToArray());

        Assert.Equal("deleted snapshot 'vm1@s2'\n", (await Ok(env, "snapshot", "delete", "vm1@s2")).Out);
        Assert.Equal("{\"deleted\":\"db@nightly\"}\n", (await Ok(env, "snapshot", "rm", "db@nightly", "--json")).Out);
        Assert.Equal("volume 'db' has no snapshots (take one with `platter snapshot create db@SNAPSHOT`)\n", (await Ok(env, "snapshot", "list", "db")).Out);
        Assert.Equal(["vm1@s1"], server.Host.Store.ListSnapshots().Select(s => s.FullName).ToArray());

        var info = (await Ok(env, "volume", "info", "vm1")).Out;
        Assert.Contains("origin:     -\n", info);
        Assert.Contains("snapshots:  1\n", info);
    }

    [Fact]
    public async Task CloneRollbackDiffAndDu()
    {
        await using var server = await RunningHost.StartAsync();
        var env = server.CliEnvironment();
        await Ok(env, "volume", "create", "vm1", "--size", "1M");
        SnapshotApiTests.Write(server, "vm1", 0, SnapshotApiTests.Pattern(1));
        await Ok(env, "snapshot", "create", "vm1@s1");
        SnapshotApiTests.Write(server, "vm1", 65536, SnapshotApiTests.Pattern(2, 2 * Block));

        Assert.Equal("cloned 'vm1@s1' to volume 'c1' (1 MiB)\n", (await Ok(env, "clone", "vm1@s1", "c1")).Out);
        var clone = JsonSerializer.Deserialize((await Ok(env, "clone", "vm1@s1", "c2", "--json")).Out, PlatterJsonContext.Default.VolumeDto)!;
        Assert.Equal("vm1@s1", clone.Origin);
        Assert.Contains("origin:     vm1@s1\n", (await Ok(env, "volume", "info", "c1")).Out);
        Assert.Matches(@"vm1@s1\s+1 MiB\s+4 KiB\s+\S+ \S+\s+c1,c2\n", (await Ok(env, "snapshot", "list", "vm1")).Out);
        Assert.Equal(SnapshotApiTests.Pattern(1), SnapshotApiTests.Read(server, "c1", 0, Block));

        // diff: the live volume is the default second point.
        var diff = (await Ok(env, "diff", "vm1@s1")).Out;
        Assert.Equal(diff, (await Ok(env, "diff", "vm1@s1", "vm1")).Out);
        var diffLines = diff.TrimEnd('\n').Split('\n');
        Assert.Equal(3, diffLines.Length);
        Assert.Matches(@"^OFFSET\s+LENGTH\s+CONTENT$", diffLines[0]);
        Assert.Matches(@"^ 65536\s+8192\s+data$", diffLines[1]);
        Assert.Equal("8 KiB changed in 1 range between 'vm1@s1' and 'vm1'", diffLines[2]);
        var diffJson = JsonSerializer.Deserialize((await Ok(env, "diff", "vm1@s1", "--json")).Out, PlatterJsonContext.Default.DiffDto)!;
        Assert.Equal([new ChangedExtentDto(65536, 2 * Block, true)], diffJson.Extents);
        Assert.Null(diffJson.To);
        await Ok(env, "snapshot", "create", "vm1@s2");
        Assert.Equal("no changes between 'vm1@s2' and 'vm1'\n", (await Ok(env, "diff", "vm1@s2")).Out);
        Assert.Equal(diff.Replace("and 'vm1'", "and 'vm1@s2'"), (await Ok(env, "diff", "vm1@s1", "vm1@s2")).Out);

        // du: the store's totals, then a row per volume and snapshot.
        using (var v = server.Host.EmbeddedStore().OpenVolume("vm1")) await v.FlushAsync();
        var du = (await Ok(env, "du")).Out;
        Assert.Contains("volumes:      3\n", du);
        Assert.Matches(@"\nNAME\s+ALLOCATED\s+UNIQUE\s+SHARED\n", du);
        Assert.Matches(@"\nvm1\s+12 KiB\s+\S+ \S+\s+\S+ \S+\n", du);
        Assert.Matches(@"\nvm1@s1\s+4 KiB\s+0 B\s+4 KiB\n", du);
        Assert.Matches(@"\nc1\s+\S+ \S+\s+\S+ \S+\s+\S+ \S+\n", du);
        using (var report = JsonDocument.Parse((await Ok(env, "du", "--json")).Out))
        {
            Assert.Equal(3, report.RootElement.GetProperty("volumeCount").GetInt32());
            var entries = report.RootElement.GetProperty("entries").EnumerateArray()
                .ToDictionary(e => e.GetProperty("name").GetString()!, e => e);
            Assert.Equal(["c1", "c2", "vm1", "vm1@s1", "vm1@s2"], entries.Keys.Order(StringComparer.Ordinal).ToArray());
            Assert.True(entries["vm1@s1"].GetProperty("isSnapshot").GetBoolean());
            Assert.Equal(3 * Block, entries["vm1"].GetProperty("allocatedBytes").GetInt64());
            Assert.Equal(0, entries["vm1@s1"].GetProperty("uniqueBytes").GetInt64());
        }
        // The old `du --json` readers still find the store's totals where they were.
        Assert.Equal(3, JsonSerializer.Deserialize((await Ok(env, "du", "--json")).Out, PlatterJsonContext.Default.UsageDto)!.VolumeCount);

        // rollback: refused while a newer snapshot exists, unless --recursive.
        await Fails(env, 1, "--recursive", "rollback", "vm1@s1");
        Assert.Equal(SnapshotApiTests.Pattern(2, 2 * Block), SnapshotApiTests.Read(server, "vm1", 65536, 2 * Block));
        Assert.Equal("rolled volume 'vm1' back to snapshot 'vm1@s1' (1 MiB)\n", (await Ok(env, "rollback", "vm1@s1", "--recursive")).Out);
        Assert.Equal(new byte[2 * Block], SnapshotApiTests.Read(server, "vm1", 65536, 2 * Block));
        Assert.Equal(["vm1@s1"], server.Host.Store.ListSnapshots().Select(s => s.FullName).ToArray());
        var rolled = JsonSerializer.Deserialize((await Ok(env, "rollback", "vm1@s1", "--json")).Out, PlatterJsonContext.Default.VolumeDto)!;
        Assert.Equal(1, rolled.SnapshotCount);

        // Deleting: the clones hold the snapshot, the snapshot holds the volume.
        await Fails(env, 1, "c1", "snapshot", "delete", "vm1@s1");
        await Fails(env, 1, "--recursive", "volume", "delete", "vm1");
        await Fails(env, 1, "c1", "volume", "delete", "vm1", "--recursive");
        await Ok(env, "volume", "delete", "c1");
        await Ok(env, "volume", "delete", "c2");
        Assert.Equal("deleted volume 'vm1' and its snapshots\n", (await Ok(env, "volume", "delete", "vm1", "--recursive")).Out);
        Assert.Empty(server.Host.Store.ListVolumes());
        Assert.Empty(server.Host.Store.ListSnapshots());
    }

    [Fact]
    public async Task ErrorsAreOneLineWithExitCodes()
    {
        await using var server = await RunningHost.StartAsync();
        var env = server.CliEnvironment();
        await Ok(env, "volume", "create", "vm1", "--size", "1M");
        await Ok(env, "volume", "create", "other", "--size", "1M");
        await Ok(env, "snapshot", "create", "vm1@s1");

        // The command line is wrong: exit 2, nothing sent.
        await Fails(env, 2, "VOLUME@SNAPSHOT", "snapshot", "create", "vm1");
        await Fails(env, 2, "invalid snapshot name 'a/b'", "snapshot", "create", "vm1@a/b");
        await Fails(env, 2, "invalid volume name 'a/b'", "snapshot", "delete", "a/b@s1");
        await Fails(env, 2, "invalid snapshot name ''", "clone", "vm1@", "c1");
        await Fails(env, 2, "invalid volume name 'c@1'", "clone", "vm1@s1", "c@1");
        await Fails(env, 2, "same volume", "diff", "vm1@s1", "other@s1");
        await Fails(env, 2, "TO must be 'vm1'", "diff", "vm1@s1", "other");
        await Fails(env, 2, "VOLUME@SNAPSHOT", "rollback", "vm1");

        // The server says no: exit 1.
        await Fails(env, 1, "no snapshot 'vm1@nope' (see `platter snapshot list vm1`)", "snapshot", "delete", "vm1@nope");
        await Fails(env, 1, "no volume named 'ghost'", "snapshot", "create", "ghost@s1");
        await Fails(env, 1, "no volume named 'ghost'", "snapshot", "list", "ghost");
        await Fails(env, 1, "no snapshot 'vm1@nope'", "clone", "vm1@nope", "c1");
        await Fails(env, 1, "no snapshot 'vm1@nope'", "rollback", "vm1@nope");
        await Fails(env, 1, "no snapshot 'vm1@nope'", "diff", "vm1@s1", "vm1@nope");
        await Fails(env, 1, "no snapshot 'vm1@nope'", "diff", "vm1@nope");
        await Fails(env, 1, "no volume named 'ghost'", "diff", "ghost@s1");
        await Fails(env, 1, "no snapshot 'vm1@nope'", "attach", "vm1@nope", "--tcp", "192.0.2.7:10809");
        await Fails(env, 1, "s1", "snapshot", "create", "vm1@s1");
        await Fails(env, 1, "other", "clone", "vm1@s1", "other");

        Assert.Equal(["vm1@s1"], server.Host.Store.ListSnapshots().Select(s => s.FullName).ToArray());
        Assert.Equal(["other", "vm1"], server.Host.Store.ListVolumes().Select(v => v.Name).Order().ToArray());
    }

    [Fact]
    public async Task AttachingASnapshotIsReadOnly()
    {
        await using var server = await RunningHost.StartAsync();
        var env = server.CliEnvironment();
        await Ok(env, "volume", "create", "vm1", "--size", "1M");
        await Ok(env, "snapshot", "create", "vm1@s1");

        var qemu = (await Ok(env, "attach", "vm1@s1", "--socket", "/run/p/nbd.sock", "--qemu")).Out;
        Assert.Contains(",server.path=/run/p/nbd.sock,export=vm1@s1,", qemu);
        Assert.Contains(",read-only=on", qemu);

        var all = (await Ok(env, "attach", "vm1@s1", "--socket", "/run/p/nbd.sock")).Out;
        Assert.Contains("<readonly/>", all);
        Assert.Contains("# A snapshot is read-only", all);
        // The live volume stays writable.
        Assert.DoesNotContain("read-only=on", (await Ok(env, "attach", "vm1", "--socket", "/run/p/nbd.sock", "--qemu")).Out);
    }

    [Theory]
    [InlineData("O(1)", "snapshot", "create")]
    [InlineData("cannot be deleted while those clones exist", "snapshot", "delete")]
    [InlineData("O(1)", "clone")]
    [InlineData("its snapshot cannot be deleted", "clone")]
    [InlineData("discarded", "rollback")]
    [InlineData("newer than this one", "rollback")]
    [InlineData("--recursive", "volume", "delete")]
    [InlineData("live volume", "diff")]
    [InlineData("UNIQUE", "du")]
    [InlineData("origin", "volume", "info")]
    public async Task HelpExplainsWhatUsersNeedToKnow(string fragment, params string[] command)
    {
        var help = await CliRunner.RunAsync(null, [.. command, "--help"]);
        Assert.Equal(0, help.ExitCode);
        Assert.Contains(fragment, help.Out);
    }

    [Fact]
    public void EverySnapshotCommandAndOptionIsDescribed()
    {
        var root = PlatterCli.BuildRootCommand(new CliContext());
        var commands = new[] { "snapshot", "clone", "rollback", "diff", "du" }.Select(n => root.Subcommands.Single(c => c.Name == n)).ToList();
        commands.AddRange(commands[0].Subcommands);
        foreach (var command in commands)
        {
            Assert.False(string.IsNullOrWhiteSpace(command.Description), command.Name);
            foreach (var option in command.Options) Assert.False(string.IsNullOrWhiteSpace(option.Description), $"{command.Name} {option.Name}");
            foreach (var argument in command.Arguments) Assert.False(string.IsNullOrWhiteSpace(argument.Description), $"{command.Name} {argument.Name}");
        }
    }

    [Fact]
    public void ReadmeShowsEverySnapshotCommand()
    {
        var readme = File.ReadAllText(Repository.PathOf("README.md"));
        foreach (var usage in new[]
                 {
                     "platter snapshot create", "platter snapshot list", "platter snapshot delete", "platter clone", "platter rollback",
                     "platter diff", "platter du", "platter volume delete", "--recursive", "qemu:dirty-bitmap:", "qemu:allocation-depth",
                 })
        {
            Assert.Contains(usage, readme);
        }
    }
}
