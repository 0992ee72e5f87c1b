using Platter.Volumes;
using Platter.Testing;
using Xunit;

namespace Platter.Rbd.Tests;

/// <summary>
/// Where a caller's code runs after an RBD request completes (<see cref="IInlineCompletions"/>): on the thread pool,
/// unless the caller promised a continuation that never waits (the NBD door), and then on librbd's completion thread
/// for successful requests only. librbd calls every completion of an image on one strand of its io_context_pool
/// threads: a caller that blocked there (a close, a synchronous librbd call, a lock) would hold up or deadlock them all.
/// </summary>
[Collection(CephCollection.Name)]
public sealed class InlineCompletionTests(CephCluster ceph)
{
    // librbd names its asio threads so (ceph::async::io_context_pool); .NET's pool threads are ".NET TP Worker".
    private const string LibrbdThread = "io_context_pool";

    // Each test body runs on the thread pool (Task.Run), away from xunit's synchronization context: the continuations
    // checked are then exactly the ones the handle chose where to run.
    [Fact]
    public Task By_default_every_continuation_runs_on_the_thread_pool_never_on_librbds_thread() => Task.Run(async () =>
    {
        using var backend = ceph.OpenBackend();
        string name = CephCluster.UniqueName("inline-off");
        backend.CreateVolume(name, 16L << 20);
        try
        {
            using var handle = backend.OpenVolumeHandle(name);
            var data = new byte[4096];
            Array.Fill(data, (byte)7);

            var back = new byte[4096];
            AssertThreadPool(await ContinuationThread(() => handle.WriteAsync(0, data, fua: false)), "write");
            AssertThreadPool(await ContinuationThread(() => handle.FlushAsync()), "flush");
            AssertThreadPool(await ContinuationThread(() => handle.ReadAsync(0, back)), "read");
            Assert.All(back, b => Assert.Equal((byte)7, b));
            AssertThreadPool(await ContinuationThread(() => handle.TrimAsync(0, 4096, fua: false)), "trim");
        }
        finally
        {
            backend.DeleteVolume(name, recursive: false);
        }
    });

    [Fact]
    public Task After_opting_in_successful_requests_continue_on_librbds_thread_and_large_reads_and_failures_on_the_pool() => Task.Run(async () =>
    {
        using var backend = ceph.OpenBackend();
        string name = CephCluster.UniqueName("inline-on");
        const long Size = 16L << 20;
        backend.CreateVolume(name, Size);
        try
        {
            using var handle = backend.OpenVolumeHandle(name);
            Assert.IsAssignableFrom<IInlineCompletions>(handle).CompleteInline();
            var data = new byte[4096];
            Array.Fill(data, (byte)9);

            // A request that completes before its caller awaits it continues on the caller's thread (a flush with
            // nothing in flight can, on a busy machine), so each kind gets a few tries to show where it continues.
            var back = new byte[4096];
            Assert.True(await ContinuesOnLibrbdThread(() => handle.WriteAsync(8192, data, fua: false)), "no write continued on librbd's thread");
            // A flush with a write in flight completes after that write's round trip to the OSDs.
            Assert.True(await ContinuesOnLibrbdThread(async () =>
            {
                var write = handle.WriteAsync(8192, data, fua: false);
                await handle.FlushAsync();
                await write;
            }), "no flush continued on librbd's thread");
            Assert.True(await ContinuesOnLibrbdThread(() => handle.ReadAsync(8192, back)), "no read continued on librbd's thread");
            Assert.True(await ContinuesOnLibrbdThread(() => handle.WriteZeroesAsync(0, 4096, deallocate: false, fua: false)),
                "no write-zeroes continued on librbd's thread");
            Assert.All(back, b => Assert.Equal((byte)9, b));

            // A large read's reply is a long copy into the socket: not on librbd's thread.
            var large = new byte[1 << 20];
            for (int attempt = 0; attempt < 5; attempt++)
            {
                AssertThreadPool(await ContinuationThread(() => handle.ReadAsync(0, large)), "1 MiB read");
            }
            Assert.Equal(9, large[8192]);

            // Requests librbd fails (this connection fenced by a takeover: EBLOCKLISTED) continue on the pool, where
            // their error is thrown and logged.
            using (var other = ceph.OpenBackend()) Assert.NotNull(other.TakeOverVolume(name));
            for (int attempt = 0; attempt < 30; attempt++)
            {
                string? thread = null;
                await Assert.ThrowsAsync<StorageException>(async () =>
                {
                    try
                    {
                        await handle.WriteAsync(8192, data, fua: false);
                    }
                    finally
                    {
                        thread = ThisThread();
                        await Task.Yield();
                    }
                });
                AssertThreadPool(thread!, "failed write");
            }
        }
        finally
        {
            backend.DeleteVolume(name, recursive: false);
        }
    });

    // A request librbd fails before the caller looks at it must look failed: VolumeExport answers a request that is
    // already IsCompletedSuccessfully without awaiting it, so a failure reported as success was an "ok" to the client
    // (a fenced zombie's write, seen in ServerTests).
    [Fact]
    public Task A_request_that_failed_before_it_was_awaited_reports_its_failure() => Task.Run(async () =>
    {
        using var backend = ceph.OpenBackend();
        string name = CephCluster.UniqueName("failed-early");
        backend.CreateVolume(name, 16L << 20);
        try
        {
            using var handle = backend.OpenVolumeHandle(name);
            var data = new byte[4096];
            await handle.WriteAsync(0, data, fua: false);
            using (var other = ceph.OpenBackend()) Assert.NotNull(other.TakeOverVolume(name));
            for (int attempt = 0; attempt < 3; attempt++)
            {
                ValueTask write = handle.WriteAsync(0, data, fua: false);
                Assert.True(SpinWait.SpinUntil(() => write.IsCompleted, TimeSpan.FromSeconds(60)), "the fenced write did not complete");
                Assert.False(write.IsCompletedSuccessfully, "a write librbd failed reported success");
                await Assert.ThrowsAsync<StorageException>(async () => await write);
            }
        }
        finally
        {
            backend.DeleteVolume(name, recursive: false);
        }
    });

    private static async Task<bool> ContinuesOnLibrbdThread(Func<ValueTask> request)
    {
        for (int attempt = 0; attempt < 20; attempt++)
        {
            if (await ContinuationThread(request) == LibrbdThread) return true;
        }
        return false;
    }

    // The thread the request's continuation ran on. The caller then leaves it at once (Task.Yield goes to the pool), as
    // the promise asks: a failed assertion there would unwind into closing the volume on librbd's thread, which waits
    // for that very thread.
    private static async Task<string> ContinuationThread(Func<ValueTask> request)
    {
        await request();
        string thread = ThisThread();
        await Task.Yield();
        return thread;
    }

    private static string ThisThread() => File.ReadAllText("/proc/thread-self/comm").Trim();

    private static void AssertThreadPool(string thread, string what) =>
        Assert.True(thread.StartsWith(".NET TP", StringComparison.Ordinal), $"the continuation of a {what} ran on thread '{thread}', not on the thread pool");
}
