using System.Runtime.InteropServices;

namespace Platter.Ceph;

/// <summary>
/// Closes images a grace period after their owner is done with them, on one background thread: read-only images, and
/// served writable images whose owner has already released their exclusive lock.
/// </summary>
/// <remarks>
/// librbd 16.2 wakes a synchronous caller (<c>rbd_open</c>, <c>rbd_open_read_only</c>, a refresh) from
/// <c>ImageState::complete_action_unlock</c> and then locks <c>ImageState::m_lock</c> again on its own thread. A caller
/// that closes the image at once (an open, a few calls answered from memory, a close) can free the
/// <c>ImageState</c> before that re-lock: librbd then locks a mutex in freed memory, gets EINVAL, and the exception ends
/// the process ("terminate called after throwing an instance of 'std::system_error' what(): Invalid argument";
/// docs/PERFORMANCE.md, issue 10, has the stack). No librbd call orders the caller after that tail, so the only cure
/// from outside is not to free the image while a librbd thread may still be in it: an image is closed only after it
/// has been left alone for a grace period, which is orders of magnitude longer than the tail (a few instructions plus
/// however long the thread waits for a CPU). Read-only images wait <see cref="Grace"/> after disposal: they hold no
/// header watch and no lock, so a late close changes nothing anyone can observe. A served writable image has flushed
/// and released its exclusive lock before it comes here (the next opener gets the lock at once) and waits
/// RbdImage.WritableCloseGrace after its last synchronous call; until then its header watch makes rbd_remove refuse,
/// which a delete in this process answers by draining this queue first. One-shot catalog images close when disposed,
/// after waiting out that margin themselves (a lock librbd took for them on its own must go with them).
/// </remarks>
internal static class DeferredImageClose
{
    /// <summary>How long a disposed read-only image stays open before it is closed.</summary>
    internal static readonly TimeSpan Grace = TimeSpan.FromSeconds(1);

    private static readonly PriorityQueue<(nint Image, SafeHandle? Parent), long> Pending = new(); // by due time
    private static readonly object Gate = new(); // Monitor (Wait/Pulse); guards Pending, _closing and _thread; never held across rbd_close
    private static int _closing; // dequeued, not yet closed
    private static Thread? _thread;
    private static long _closed;

    /// <summary>Images closed by this class so far (for tests).</summary>
    internal static long ClosedCount => Interlocked.Read(ref _closed);

    /// <summary>Images disposed and not yet closed (for tests).</summary>
    internal static int PendingCount
    {
        get
        {
            lock (Gate) return Pending.Count + _closing;
        }
    }

    /// <summary>
    /// Queues <paramref name="image"/> for closing at <paramref name="due"/> (Environment.TickCount64; 0: <see cref="Grace"/>
    /// from now); <paramref name="parent"/>'s reference is released after it.
    /// </summary>
    public static void Enqueue(nint image, SafeHandle? parent, long due = 0)
    {
        lock (Gate)
        {
            Pending.Enqueue((image, parent), due != 0 ? due : Environment.TickCount64 + (long)Grace.TotalMilliseconds);
            if (_thread is null)
            {
                _thread = new Thread(Run) { IsBackground = true, Name = "rbd deferred close" };
                _thread.Start();
            }
            Monitor.PulseAll(Gate);
        }
    }

    /// <summary>Waits until every image queued so far is closed (a backend closing its pool and connection).</summary>
    public static void Drain()
    {
        lock (Gate)
        {
            while (Pending.Count > 0 || _closing > 0) Monitor.Wait(Gate);
        }
    }

    private static void Run()
    {
        while (true)
        {
            (nint Image, SafeHandle? Parent) next;
            lock (Gate)
            {
                while (Pending.Count == 0) Monitor.Wait(Gate);
                Pending.TryPeek(out _, out long due);
                long wait = due - Environment.TickCount64;
                if (wait > 0)
                {
                    Monitor.Wait(Gate, (int)wait); // an earlier deadline queued meanwhile pulses
                    continue;
                }
                next = Pending.Dequeue();
                _closing++;
            }
            try
            {
                // Read-only: nothing to flush, no lock. Writable: flushed and unlocked by its owner; this drops the watch.
                Native.rbd_close(next.Image);
                Interlocked.Increment(ref _closed);
                next.Parent?.DangerousRelease();
            }
            finally
            {
                lock (Gate)
                {
                    _closing--;
                    Monitor.PulseAll(Gate);
                }
            }
        }
    }
}
