namespace Platter.Storage.Internal;

/// <summary>
/// Gives freed runs back to the file system (fallocate PUNCH_HOLE) on a thread of its own, so a large free never delays
/// a commit round, and with it every flush waiting for that round. A punch costs about the same whatever its length but
/// grows with the extents it removes: 152 ms for a 512 MiB run on ext4 (docs/PERFORMANCE.md), which used to sit on the
/// committer thread between a delete's commit and the next flush.
///
/// Why it is safe: a batch of blocks reaches this queue only after the commit that freed them is durable and no reader
/// of their epoch remains (it leaves <see cref="Space"/>'s quarantine), and it is handed to the allocator only after its
/// holes are punched. So no write can have been given a block before the punch of that block has returned: a punch never
/// zeroes live data. Until then the blocks count as quarantined, so a check sees each block in exactly one place. After a
/// crash the durable metadata says these blocks are free; a punch that never ran leaves that space allocated in the data
/// file (free to the store, reused first), never wrong data.
///
/// Limit: at most <see cref="EngineLimits.PunchQueueBlocksMax"/> blocks wait here. Past it <see cref="TryEnqueue"/>
/// refuses and the committer punches inline, as before: a burst of deletes costs commit latency rather than memory
/// without bound (the lists are the quarantine's own, moved here, but a stalled file system must not let them pile up).
/// </summary>
internal sealed class HolePuncher : IDisposable
{
    private readonly Action<List<long>> _punch;
    private readonly Action<List<long>> _release;
    private readonly Action<Exception> _fail;
    private readonly object _lock = new();
    private readonly Queue<List<long>> _queue = new();
    private long _queuedBlocks; // waiting and in progress
    private Thread? _thread;    // started with the first batch: a store that never frees a long run never has one
    private bool _stopping;

    /// <param name="punch">Punches the holes of one batch (a failure there costs only space, and is the callee's to log).</param>
    /// <param name="release">Hands the batch to the allocator, once punched.</param>
    /// <param name="fail">Fail-stops the store when <paramref name="release"/> finds broken state (a double free).</param>
    public HolePuncher(Action<List<long>> punch, Action<List<long>> release, Action<Exception> fail)
    {
        _punch = punch;
        _release = release;
        _fail = fail;
    }

    /// <summary>Blocks waiting to be punched or being punched now.</summary>
    public long QueuedBlocks
    {
        get { lock (_lock) return _queuedBlocks; }
    }

    /// <summary>Queues a batch; false when the queue is at its limit or stopping (the caller then punches and releases it itself).</summary>
    public bool TryEnqueue(List<long> blocks)
    {
        lock (_lock)
        {
            if (_stopping || (_queuedBlocks > 0 && _queuedBlocks + blocks.Count > EngineLimits.PunchQueueBlocksMax)) return false;
            _queue.Enqueue(blocks);
            _queuedBlocks += blocks.Count;
            if (_thread is null)
            {
                _thread = new Thread(Run) { IsBackground = true, Name = "platter-punch" };
                _thread.Start();
            }
            Monitor.PulseAll(_lock);
            return true;
        }
    }

    /// <summary>
    /// Waits until every queued batch is back in the allocator, or <paramref name="timeout"/> passes: a writer that found
    /// no space after a commit waits here for the space that commit freed. True when the queue is empty.
    /// </summary>
    public bool WaitIdle(TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        lock (_lock)
        {
            while (_queuedBlocks > 0)
            {
                var left = deadline - DateTime.UtcNow;
                if (left <= TimeSpan.Zero) return false;
                Monitor.Wait(_lock, left);
            }
            return true;
        }
    }

    private void Run()
    {
        while (true)
        {
            List<long> blocks;
            lock (_lock)
            {
                while (_queue.Count == 0 && !_stopping) Monitor.Wait(_lock);
                if (_queue.Count == 0) return; // stopping and drained
                blocks = _queue.Peek();
            }
            try
            {
                _punch(blocks);
                _release(blocks);
            }
            catch (Exception e)
            {
                _fail(e);
            }
            lock (_lock)
            {
                _queue.Dequeue();
                _queuedBlocks -= blocks.Count;
                Monitor.PulseAll(_lock);
            }
        }
    }

    /// <summary>Punches what is queued, then stops the thread. Called after the committer's last round, before the data file closes. Safe to call twice.</summary>
    public void Dispose()
    {
        Thread? thread;
        lock (_lock)
        {
            _stopping = true;
            thread = _thread;
            Monitor.PulseAll(_lock);
        }
        thread?.Join();
    }
}
