namespace Platter.Nbd.Internal;

/// <summary>
/// Bounds requests and payload bytes in flight on one connection. Only the connection's reader loop acquires,
/// so there is at most one waiter; request completions release. When the gate is full the reader stops
/// reading, which pushes back on the client through TCP.
/// </summary>
internal sealed class InFlightGate(int requestsMax, long bytesMax)
{
    private readonly object _lock = new();
    private int _requests;
    private long _bytes;
    private TaskCompletionSource? _waiter;
    private long _waiterBytes;
    private TaskCompletionSource? _idle;

    public int Requests { get { lock (_lock) return _requests; } }

    // A request bigger than the byte budget still runs when nothing else is in flight, so the budget
    // throttles concurrency without making any single valid request impossible.
    private bool Fits(long bytes) => _requests < requestsMax && (_requests == 0 || _bytes + bytes <= bytesMax);

    public ValueTask AcquireAsync(long bytes, CancellationToken cancellationToken)
    {
        TaskCompletionSource tcs;
        lock (_lock)
        {
            if (_waiter is not null) throw new InvalidOperationException("InFlightGate has a single acquirer.");
            if (Fits(bytes))
            {
                _requests++;
                _bytes += bytes;
                return default;
            }
            tcs = _waiter = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            _waiterBytes = bytes;
        }
        return WaitAsync(tcs, bytes, cancellationToken);
    }

    private async ValueTask WaitAsync(TaskCompletionSource tcs, long bytes, CancellationToken cancellationToken)
    {
        try
        {
            await tcs.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            bool granted;
            lock (_lock)
            {
                granted = !ReferenceEquals(_waiter, tcs);
                if (!granted) _waiter = null;
            }
            // Granted between the cancellation and the lock: give the slot back.
            if (granted) Release(bytes);
            throw;
        }
    }

    public void Release(long bytes)
    {
        TaskCompletionSource? wake = null, idle = null;
        lock (_lock)
        {
            _requests--;
            _bytes -= bytes;
            if (_waiter is not null && Fits(_waiterBytes))
            {
                _requests++;
                _bytes += _waiterBytes;
                wake = _waiter;
                _waiter = null;
            }
            if (_requests == 0 && _idle is not null)
            {
                idle = _idle;
                _idle = null;
            }
        }
        wake?.TrySetResult();
        idle?.TrySetResult();
    }

    /// <summary>Completes when no request is in flight.</summary>
    public Task WhenIdleAsync()
    {
        lock (_lock)
        {
            if (_requests == 0) return Task.CompletedTask;
            _idle ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            return _idle.Task;
        }
    }
}

/// <summary>
/// The write-type requests (WRITE, TRIM, WRITE_ZEROES) received between two FLUSHes. A FLUSH seals the current
/// epoch and waits for it and every earlier epoch before it reaches the export, so no write received before a
/// flush can complete after the flush's reply. Epochs are only created by flushes: plain writes cost two
/// interlocked operations.
/// </summary>
internal sealed class WriteEpoch
{
    // Starts at 1: the reference held by the connection while the epoch is open.
    private int _count = 1;
    private readonly TaskCompletionSource _done = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Task _previous;

    public WriteEpoch(Task previous) => _previous = previous;

    public void Enter() => Interlocked.Increment(ref _count);

    public void Exit()
    {
        if (Interlocked.Decrement(ref _count) == 0) _done.TrySetResult();
    }

    /// <summary>Closes the epoch; the task completes when its writes and all earlier epochs' writes are done.</summary>
    public Task Seal()
    {
        Exit();
        if (_previous.IsCompleted) return _done.Task;
        return _done.Task.IsCompleted ? _previous : Task.WhenAll(_previous, _done.Task);
    }
}
