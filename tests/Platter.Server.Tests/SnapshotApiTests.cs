using System.Net;
using System.Net.Http.Json;
using Platter.Server.Api;
using Platter.Storage;
using Xunit;

namespace Platter.Server.Tests;

/// <summary>Snapshots, clones, rollback, diff and space through the management API, against a real host and engine.</summary>
public class SnapshotApiTests
{
    private const int Block = 4096;

    internal static byte[] Pattern(byte seed, int length = Block)
    {
        var data = new byte[length];
        for (int i = 0; i < data.Length; i++) data[i] = (byte)(seed + i * 31);
        return data;
    }

    internal static void Write(RunningHost server, string volume, long offset, byte[] data)
    {
        using var v = server.Host.EmbeddedStore().OpenVolume(volume);
        v.Write(offset, data);
    }

    internal static byte[] Read(RunningHost server, string volume, long offset, int length)
    {
        using var v = server.Host.EmbeddedStore().OpenVolume(volume);
        var data = new byte[length];
        v.Read(offset, data);
        return data;
    }

    [Fact]
    public async Task SnapshotLifecycleThroughTheApi()
    {
        await using var server = await RunningHost.StartAsync();
        using var client = server.Client();
        await client.CreateVolumeAsync("vm1", 1 << 20);
        Write(server, "vm1", 0, Pattern(1));

        var taken = await client.CreateSnapshotAsync("vm1", "s1");
        Assert.Equal("vm1@s1", taken.FullName);
        Assert.Equal("vm1", taken.Volume);
        Assert.Equal("s1", taken.Name);
        Assert.Equal(1 << 20, taken.SizeBytes);
        Assert.Equal(Block, taken.AllocatedBytes);
        Assert.Empty(taken.Clones);

        // The snapshot keeps the old content while the volume changes.
        Write(server, "vm1", 0, Pattern(2));
        await client.CreateSnapshotAsync("vm1", "s2");
        using (var snap = server.Host.EmbeddedStore().OpenSnapshot("vm1", "s1"))
        {
            var old = new byte[Block];
            snap.Read(0, old);
            Assert.Equal(Pattern(1), old);
        }

        Assert.Equal(["s1", "s2"], (await client.ListSnapshotsAsync("vm1")).Select(s => s.Name).ToArray());
        Assert.Equal(taken, await client.GetSnapshotAsync("vm1", "s1"), SnapshotComparer.Instance);
        await client.CreateVolumeAsync("db", 1 << 20);
        await client.CreateSnapshotAsync("db", "nightly");
        Assert.Equal(["db@nightly", "vm1@s1", "vm1@s2"], (await client.ListSnapshotsAsync()).Select(s => s.FullName).ToArray());

        var volume = await client.GetVolumeAsync("vm1");
        Assert.Equal(2, volume.SnapshotCount);
        Assert.Null(volume.Origin);

        await client.DeleteSnapshotAsync("vm1", "s1");
        Assert.Equal(["s2"], (await client.ListSnapshotsAsync("vm1")).Select(s => s.Name).ToArray());
        Assert.Equal(1, (await client.GetVolumeAsync("vm1")).SnapshotCount);
        Assert.Equal(Pattern(2), Read(server, "vm1", 0, Block));
    }

    [Fact]
    public async Task CloneIsWritableAndKeepsItsSnapshot()
    {
        await using var server = await RunningHost.StartAsync();
        using var client = server.Client();
        await client.CreateVolumeAsync("base", 1 << 20);
        Write(server, "base", 8192, Pattern(7));
        await client.CreateSnapshotAsync("base", "golden");

        var clone = await client.CloneSnapshotAsync("base", "golden", "vm7");
        Assert.Equal("vm7", clone.Name);
        Assert.Equal("base@golden", clone.Origin);
        Assert.Equal(1 << 20, clone.SizeBytes);
        Assert.Equal(0, clone.SnapshotCount);
        Assert.Equal("base@golden", (await client.GetVolumeAsync("vm7")).Origin);
        Assert.Equal(["vm7"], (await client.GetSnapshotAsync("base", "golden")).Clones);

        // The clone reads the snapshot's data and its own writes stay its own.
        Assert.Equal(Pattern(7), Read(server, "vm7", 8192, Block));
        Write(server, "vm7", 8192, Pattern(8));
        Assert.Equal(Pattern(8), Read(server, "vm7", 8192, Block));
        Assert.Equal(Pattern(7), Read(server, "base", 8192, Block));

        // The snapshot cannot go while the clone exists; the refusal names the clone.
        var refused = await Assert.ThrowsAsync<PlatterApiException>(() => client.DeleteSnapshotAsync("base", "golden"));
        Assert.Equal(409, refused.StatusCode);
        Assert.Equal("has_dependents", refused.Code);
        Assert.Contains("vm7", refused.Message);

        // Nor can the volume, even recursively: that would delete the snapshot too.
        var volumeRefused = await Assert.ThrowsAsync<PlatterApiException>(() => client.DeleteVolumeAsync("base", recursive: true));
        Assert.Equal(409, volumeRefused.StatusCode);
        Assert.Equal("has_dependents", volumeRefused.Code);
        Assert.Contains("vm7", volumeRefused.Message);

        await client.DeleteVolumeAsync("vm7");
        await client.DeleteSnapshotAsync("base", "golden");
        Assert.Empty(await client.ListSnapshotsAsync());
    }

    [Fact]
    public async Task FlattenThroughTheApiFreesTheOriginAndKeepsTheCloneContent()
    {
        await using var server = await RunningHost.StartAsync();
        using var client = server.Client();
        await client.CreateVolumeAsync("base", 1 << 20);
        Write(server, "base", 0, Pattern(7, 64 * Block));
        await client.CreateSnapshotAsync("base", "golden");
        await client.CloneSnapshotAsync("base", "golden", "vm8");
        Write(server, "vm8", 0, Pattern(8));

        var notClone = await Assert.ThrowsAsync<PlatterApiException>(() => client.FlattenVolumeAsync("base"));
        Assert.Equal(400, notClone.StatusCode);
        Assert.Contains("not a clone", notClone.Message);
        var missing = await Assert.ThrowsAsync<PlatterApiException>(() => client.FlattenVolumeAsync("nope"));
        Assert.Equal(404, missing.StatusCode);

        var flattened = await client.FlattenVolumeAsync("vm8");
        Assert.Equal("vm8", flattened.Name);
        Assert.Equal("base@golden", flattened.Origin);
        Assert.Equal(63L * Block, flattened.CopiedBytes); // 64 shared blocks, one overwritten by the clone
        Assert.Null(flattened.Volume.Origin);
        Assert.Empty((await client.GetSnapshotAsync("base", "golden")).Clones);

        await client.DeleteVolumeAsync("base", recursive: true);
        Assert.Equal(Pattern(8), Read(server, "vm8", 0, Block));
        Assert.Equal(Pattern(7, 64 * Block).AsSpan(Block).ToArray(), Read(server, "vm8", Block, 63 * Block));
    }

    [Fact]
    public async Task DeletingAVolumeWithSnapshotsNeedsRecursive()
    {
        await using var server = await RunningHost.StartAsync();
        using var client = server.Client();
        await client.CreateVolumeAsync("vm1", 1 << 20);
        await client.CreateSnapshotAsync("vm1", "s1");

        var refused = await Assert.ThrowsAsync<PlatterApiException>(() => client.DeleteVolumeAsync("vm1"));
        Assert.Equal(409, refused.StatusCode);
        Assert.Equal("has_dependents", refused.Code);
        Assert.Single(await client.ListVolumesAsync());

        await client.DeleteVolumeAsync("vm1", recursive: true);
        Assert.Empty(await client.ListVolumesAsync());
        Assert.Empty(await client.ListSnapshotsAsync());
        Assert.Equal("not_found", (await Assert.ThrowsAsync<PlatterApiException>(() => client.GetSnapshotAsync("vm1", "s1"))).Code);
    }

    [Fact]
    public async Task RollbackRestoresContentAndSizeAndNeedsRecursiveForNewerSnapshots()
    {
        await using var server = await RunningHost.StartAsync();
        using var client = server.Client();
        await client.CreateVolumeAsync("vm1", 1 << 20);
        Write(server, "vm1", 0, Pattern(1));
        await client.CreateSnapshotAsync("vm1", "s1");
        Write(server, "vm1", 0, Pattern(2));
        Write(server, "vm1", 65536, Pattern(3));
        await client.CreateSnapshotAsync("vm1", "s2");
        await client.ResizeVolumeAsync("vm1", 2 << 20);
        Write(server, "vm1", 0, Pattern(4));

        // s2 is newer than s1: rolling back would silently lose it.
        var refused = await Assert.ThrowsAsync<PlatterApiException>(() => client.RollbackAsync("vm1", "s1"));
        Assert.Equal(409, refused.StatusCode);
        Assert.Equal("has_dependents", refused.Code);
        Assert.Contains("s2", refused.Message);
        Assert.Equal(Pattern(4), Read(server, "vm1", 0, Block));

        // To the newest snapshot nothing stands in the way.
        var toS2 = await client.RollbackAsync("vm1", "s2");
        Assert.Equal(1 << 20, toS2.SizeBytes);
        Assert.Equal(Pattern(2), Read(server, "vm1", 0, Block));
        Assert.Equal(Pattern(3), Read(server, "vm1", 65536, Block));

        var toS1 = await client.RollbackAsync("vm1", "s1", recursive: true);
        Assert.Equal(1 << 20, toS1.SizeBytes);
        Assert.Equal(1, toS1.SnapshotCount);
        Assert.Equal(Pattern(1), Read(server, "vm1", 0, Block));
        Assert.Equal(new byte[Block], Read(server, "vm1", 65536, Block));
        Assert.Equal(["s1"], (await client.ListSnapshotsAsync("vm1")).Select(s => s.Name).ToArray());
    }

    [Fact]
    public async Task DiffListsExactlyTheChangedRanges()
    {
        await using var server = await RunningHost.StartAsync();
        using var client = server.Client();
        await client.CreateVolumeAsync("vm1", 1 << 20);
        Write(server, "vm1", 0, Pattern(1));
        Write(server, "vm1", 65536, Pattern(2));
        await client.CreateSnapshotAsync("vm1", "s1");
        Write(server, "vm1", 65536, Pattern(3));
        Write(server, "vm1", 131072, Pattern(4, 2 * Block));
        await client.CreateSnapshotAsync("vm1", "s2");
        using (var v = server.Host.EmbeddedStore().OpenVolume("vm1")) v.Trim(0, Block);

        var s1ToS2 = await client.DiffAsync("vm1", "s1", "s2");
        Assert.Equal("vm1", s1ToS2.Volume);
        Assert.Equal("s1", s1ToS2.From);
        Assert.Equal("s2", s1ToS2.To);
        Assert.Equal([new ChangedExtentDto(65536, Block, true), new ChangedExtentDto(131072, 2 * Block, true)], s1ToS2.Extents);
        Assert.Equal(3 * Block, s1ToS2.ChangedBytes);

        var s1ToLive = await client.DiffAsync("vm1", "s1");
        Assert.Null(s1ToLive.To);
        Assert.Equal([new ChangedExtentDto(0, Block, false), new ChangedExtentDto(65536, Block, true), new ChangedExtentDto(131072, 2 * Block, true)], s1ToLive.Extents);

        var s2ToLive = await client.DiffAsync("vm1", "s2");
        Assert.Equal([new ChangedExtentDto(0, Block, false)], s2ToLive.Extents);
    }

    [Fact]
    public async Task SpaceUsageSplitsUniqueAndShared()
    {
        await using var server = await RunningHost.StartAsync();
        using var client = server.Client();
        await client.CreateVolumeAsync("vm1", 1 << 20);
        Write(server, "vm1", 0, Pattern(1, 4 * Block));
        await client.CreateSnapshotAsync("vm1", "s1");
        // One of the four blocks changes: the volume and the snapshot each hold one block alone and share three.
        Write(server, "vm1", 0, Pattern(2));
        using (var v = server.Host.EmbeddedStore().OpenVolume("vm1")) await v.FlushAsync();

        var entries = (await client.GetSpaceUsageAsync()).ToDictionary(e => e.Name);
        Assert.Equal(2, entries.Count);
        Assert.Equal(new SpaceUsageDto("vm1", false, 4 * Block, Block, 3 * Block), entries["vm1"]);
        Assert.Equal(new SpaceUsageDto("vm1@s1", true, 4 * Block, Block, 3 * Block), entries["vm1@s1"]);
    }

    [Fact]
    public async Task SnapshotErrorsHaveStatusCodeAndMessage()
    {
        await using var server = await RunningHost.StartAsync();
        using var client = server.Client();
        await client.CreateVolumeAsync("vm1", 1 << 20);
        await client.CreateVolumeAsync("taken", 1 << 20);
        await client.CreateSnapshotAsync("vm1", "s1");

        async Task Expect(int status, string code, string fragment, Func<Task> call)
        {
            var e = await Assert.ThrowsAsync<PlatterApiException>(call);
            Assert.Equal(status, e.StatusCode);
            Assert.Equal(code, e.Code);
            Assert.Contains(fragment, e.Message);
        }

        await Expect(400, "invalid_name", "a@b", () => client.CreateSnapshotAsync("vm1", "a@b"));
        await Expect(400, "invalid_name", "snapshot", () => client.CreateSnapshotAsync("vm1", " padded"));
        await Expect(400, "invalid_name", "clone@x", () => client.CloneSnapshotAsync("vm1", "s1", "clone@x"));
        await Expect(404, "not_found", "ghost", () => client.CreateSnapshotAsync("ghost", "s1"));
        await Expect(404, "not_found", "nope", () => client.GetSnapshotAsync("vm1", "nope"));
        await Expect(404, "not_found", "nope", () => client.DeleteSnapshotAsync("vm1", "nope"));
        await Expect(404, "not_found", "nope", () => client.CloneSnapshotAsync("vm1", "nope", "c1"));
        await Expect(404, "not_found", "nope", () => client.RollbackAsync("vm1", "nope"));
        await Expect(404, "not_found", "nope", () => client.DiffAsync("vm1", "nope"));
        await Expect(404, "not_found", "nope", () => client.DiffAsync("vm1", "s1", "nope"));
        await Expect(404, "not_found", "ghost", () => client.ListSnapshotsAsync("ghost"));
        await Expect(409, "already_exists", "s1", () => client.CreateSnapshotAsync("vm1", "s1"));
        await Expect(409, "already_exists", "taken", () => client.CloneSnapshotAsync("vm1", "s1", "taken"));

        using var http = UnixHttp.Client(server.ApiSocket);
        using (var noFrom = await http.GetAsync("/v1/volumes/vm1/diff"))
        {
            Assert.Equal(HttpStatusCode.BadRequest, noFrom.StatusCode);
            Assert.Contains("from", (await noFrom.Content.ReadFromJsonAsync(PlatterJsonContext.Default.ErrorDto))?.Message);
        }
        using (var badFlag = await http.DeleteAsync("/v1/volumes/vm1?recursive=yes"))
        {
            Assert.Equal(HttpStatusCode.BadRequest, badFlag.StatusCode);
            Assert.Contains("recursive", (await badFlag.Content.ReadFromJsonAsync(PlatterJsonContext.Default.ErrorDto))?.Message);
        }

        // None of the failures changed anything.
        Assert.Equal(["vm1@s1"], (await client.ListSnapshotsAsync()).Select(s => s.FullName).ToArray());
        Assert.Equal(["taken", "vm1"], (await client.ListVolumesAsync()).Select(v => v.Name).Order().ToArray());
    }

    /// <summary>Compares snapshots by value (the record's Clones list compares by reference).</summary>
    private sealed class SnapshotComparer : IEqualityComparer<SnapshotDto>
    {
        public static SnapshotComparer Instance { get; } = new();

        public bool Equals(SnapshotDto? x, SnapshotDto? y) =>
            x is not null && y is not null
            && (x.FullName, x.Volume, x.Name, x.Id, x.SizeBytes, x.AllocatedBytes, x.CreatedUtc) == (y.FullName, y.Volume, y.Name, y.Id, y.SizeBytes, y.AllocatedBytes, y.CreatedUtc)
            && x.Clones.SequenceEqual(y.Clones);

        public int GetHashCode(SnapshotDto obj) => obj.FullName.GetHashCode();
    }
}
