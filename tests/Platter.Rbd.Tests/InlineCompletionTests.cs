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

            await handle.WriteAsync(0, data, fua: false);
            AssertOnThreadPool("write");
            await handle.FlushAsync();
            AssertOnThreadPool("flush");
            var back = new byte[4096];
            await handle.ReadAsync(0, back);
            AssertOnThreadPool("read");
            Assert.All(back, b => Assert.Equal((byte)7, b));
            await handle.TrimAsync(0, 4096, fua: false);
            AssertOnThreadPool("trim");
        }
        finally
        {
            backend.DeleteVolume(name, recursive: false);
        }
    });

    [Fact]
    public Task After_opting_in_successful_requests_continue_on_librbds_thread_and_failures_and_large_reads_on_the_pool() => Task.Run(async () =>
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

            // After each inline continuation the test leaves librbd's thread at once (Task.Yield goes to the pool), as
            // the promise asks: nothing here may wait on that thread.
            await handle.WriteAsync(8192, data, fua: false);
            string afterWrite = ThisThread();
            await Task.Yield();
            await handle.FlushAsync();
            string afterFlush = ThisThread();
            await Task.Yield();
            var back = new byte[4096];
            await handle.ReadAsync(8192, back);
            string afterRead = ThisThread();
            await Task.Yield();
            await handle.WriteZeroesAsync(0, 4096, deallocate: false, fua: false);
            string afterZero = ThisThread();
            await Task.Yield();
            Assert.Equal(LibrbdThread, afterWrite);
            Assert.Equal(LibrbdThread, afterFlush);
            Assert.Equal(LibrbdThread, afterRead);
            Assert.Equal(LibrbdThread, afterZero);
            Assert.All(back, b => Assert.Equal((byte)9, b));

            // A read librbd refuses (past the end, which a door never sends: EINVAL) continues on the pool, where its error is thrown.
            var failed = await Assert.ThrowsAsync<StorageException>(async () =>
            {
                try
                {
                    await handle.ReadAsync(Size + 4096, back);
                }
                finally
                {
                    AssertOnThreadPool("failed read");
                }
            });
            Assert.Contains(name, failed.Message);

            // A large read's reply is a long copy into the socket: not on librbd's thread either.
            var large = new byte[1 << 20];
            await handle.ReadAsync(0, large);
            AssertOnThreadPool("1 MiB read");
            Assert.Equal(9, large[8192]);
        }
        finally
        {
            backend.DeleteVolume(name, recursive: false);
        }
    });

    private static string ThisThread() => File.ReadAllText("/proc/thread-self/comm").Trim();

    private static void AssertOnThreadPool(string what)
    {
        string thread = ThisThread();
        Assert.True(Thread.CurrentThread.IsThreadPoolThread && thread != LibrbdThread,
            $"the continuation of a {what} ran on thread '{thread}', not on the thread pool");
    }
}
