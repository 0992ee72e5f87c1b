using System.Reflection;
using Platter.Server.Api;
using Platter.Storage;
using Xunit;

namespace Platter.Server.Tests;

/// <summary>The scrub endpoints in-process: the embedded store scrubs; a backend that does not scrub (Ceph) says what to run instead.</summary>
public class ScrubApiTests
{
    [Fact]
    public async Task The_embedded_store_scrubs_through_the_api_and_the_cli()
    {
        await using var server = await RunningHost.StartAsync();
        using var client = server.Client();
        Assert.Equal("none", (await client.GetScrubStatusAsync()).State);
        await client.CreateVolumeAsync("vm1", 1 << 20);
        var missing = await CliRunner.RunAsync(server.CliEnvironment(), "scrub", "start", "ghost");
        Assert.Equal(1, missing.ExitCode);
        Assert.Equal("platter: no volume named 'ghost'", missing.Error.Trim());
        var started = await CliRunner.RunAsync(server.CliEnvironment(), "scrub", "start", "vm1", "--rate", "0");
        Assert.True(started.ExitCode == 0, started.ToString());
        Assert.Contains("scrub of vm1", started.Out);
        // Polled until finished (a bound against a hang, not a timing assertion).
        var status = await client.GetScrubStatusAsync();
        for (int i = 0; i < 600 && status.State == "running"; i++)
        {
            await Task.Delay(100);
            status = await client.GetScrubStatusAsync();
        }
        Assert.Equal("finished", status.State);
        Assert.Equal(["vm1"], status.Targets);
        Assert.Equal(100, status.Percent);
        var refused = await CliRunner.RunAsync(server.CliEnvironment(), "scrub", "start", "--rate", "-1");
        Assert.Equal(2, refused.ExitCode);
        Assert.Contains("--rate must be 0", refused.Error);
    }

    [Fact]
    public async Task A_backend_that_does_not_scrub_answers_with_the_ceph_commands_in_one_line()
    {
        await using var server = await RunningHost.StartAsync(dir => new PlatterHostOptions
        {
            StoreDirectory = dir.Combine("store"),
            ApiSocketPath = dir.Combine("api.sock"),
            OpenBackend = _ => CephLikeBackend.Wrap(VolumeStore.Open(dir.Combine("store"))),
        });
        foreach (var args in new[] { new[] { "scrub", "start" }, ["scrub", "status"], ["scrub", "stop"] })
        {
            var result = await CliRunner.RunAsync(server.CliEnvironment(), args);
            Assert.True(result.ExitCode == 1, result.ToString());
            var line = Assert.Single(result.Error.Split('\n', StringSplitOptions.RemoveEmptyEntries));
            Assert.StartsWith("platter: the rbd store rbd:vms is scrubbed by Ceph, not by Platter", line);
            Assert.Contains("`ceph osd pool deep-scrub vms` (or `ceph pg deep-scrub PGID`)", line);
        }
    }

    /// <summary>The embedded store seen through the seam alone, named like a Ceph pool: no <see cref="Platter.Volumes.IVolumeScrub"/>.</summary>
    public class CephLikeBackend : DispatchProxy
    {
        private VolumeStore? _inner;

        public static IVolumeBackend Wrap(VolumeStore inner)
        {
            var proxy = Create<IVolumeBackend, CephLikeBackend>();
            ((CephLikeBackend)(object)proxy)._inner = inner;
            return proxy;
        }

        protected override object? Invoke(MethodInfo? method, object?[]? args) => method!.Name switch
        {
            "get_Kind" => "rbd",
            "get_Location" => "rbd:vms",
            _ => Unwrap(() => method.Invoke(_inner, args)),
        };

        private static object? Unwrap(Func<object?> call)
        {
            try
            {
                return call();
            }
            catch (TargetInvocationException e) when (e.InnerException is not null)
            {
                throw e.InnerException;
            }
        }
    }
}
