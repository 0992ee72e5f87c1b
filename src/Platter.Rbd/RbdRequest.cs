using System.Buffers;
using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using System.Threading.Tasks.Sources;
using Platter.Ceph;

namespace Platter.Rbd;

/// <summary>
/// One asynchronous librbd request as a <see cref="ValueTask{T}"/> of librbd's result, or as a <see cref="ValueTask"/>
/// that throws the request's error itself (<see cref="Checked"/>: a handle's read or write returns it directly, without
/// an async method of its own around it). librbd's completion callback completes it. Requests are pooled (a request
/// object, its GCHandle and its callback are reused), so a read or write allocates nothing on the managed heap; librbd
/// allocates its own completion per request (the C API has no way to reuse one).
/// </summary>
/// <remarks>
/// librbd 16.2 calls every completion callback of an image on one strand of its <c>io_context_pool</c> threads
/// (<c>AioCompletion::complete_external_callback</c>), so whatever runs there holds up every other completion of the
/// image. By default the continuation goes to the thread pool. A request started with <c>inline: true</c> (a handle
/// whose caller promised a short continuation that never waits, <see cref="Platter.Volumes.IInlineCompletions"/>) runs
/// it on librbd's thread when the request succeeded; a failed one still goes to the thread pool (its continuation
/// throws, maps and logs the error). The callback itself only reads the result, releases librbd's completion and
/// unpins the buffer: it takes no lock.
/// </remarks>
internal sealed unsafe class RbdRequest : IValueTaskSource<long>, IValueTaskSource
{
    // Requests kept for reuse. Beyond it a burst's extra requests are dropped to the GC: the pool never grows past
    // what a busy server keeps in flight (NBD limits in-flight requests per connection to a few hundred).
    private const int PooledMax = 1024;
    private static readonly ConcurrentQueue<RbdRequest> Pool = new();
    private static int _pooled;

    private readonly GCHandle _self;
    private ManualResetValueTaskSourceCore<long> _core;
    private MemoryHandle _pin;
    private string? _volume; // for the error a failed Checked request throws
    private string? _operation;
    // librbd's result, kept beside _core's so that the Checked view can report a failure as Faulted before GetResult.
    private long _result;

    private RbdRequest()
    {
        _self = GCHandle.Alloc(this);
        _core.RunContinuationsAsynchronously = true;
    }

    public static RbdRequest Rent()
    {
        if (Pool.TryDequeue(out var request))
        {
            Interlocked.Decrement(ref _pooled);
            return request;
        }
        return new RbdRequest();
    }

    /// <summary>
    /// A completion that completes this request; the buffer (if any) stays pinned until then. With
    /// <paramref name="inline"/> a successful completion runs the awaiting continuation on librbd's thread.
    /// </summary>
    public RbdCompletion Start(MemoryHandle pin, bool inline = false)
    {
        _pin = pin;
        _core.RunContinuationsAsynchronously = !inline;
        return RbdCompletion.Create(GCHandle.ToIntPtr(_self), &OnComplete);
    }

    /// <summary>The request could not be submitted: unpin and recycle (the caller throws).</summary>
    public void Abandon(RbdCompletion completion)
    {
        completion.Release();
        _pin.Dispose();
        _pin = default;
        _core.Reset();
        Return();
    }

    public ValueTask<long> Task => new(this, _core.Version);

    /// <summary>The request as a task that completes when librbd does and throws the seam's error if librbd failed it.</summary>
    public ValueTask Checked(string volume, string operation)
    {
        _volume = volume;
        _operation = operation;
        return new ValueTask(this, _core.Version);
    }

    [UnmanagedCallersOnly]
    private static void OnComplete(nint completion, nint arg)
    {
        var request = (RbdRequest)GCHandle.FromIntPtr(arg).Target!;
        var c = RbdCompletion.FromHandle(completion);
        long result = c.ReturnValue;
        c.Release();
        request._pin.Dispose();
        request._pin = default;
        // A failure's continuation builds and throws an exception and may log: never on librbd's thread.
        if (result < 0) request._core.RunContinuationsAsynchronously = true;
        request._result = result; // before SetResult publishes the completion
        request._core.SetResult(result);
    }

    public long GetResult(short token)
    {
        try
        {
            return _core.GetResult(token);
        }
        finally
        {
            _core.Reset();
            Return();
        }
    }

    void IValueTaskSource.GetResult(short token)
    {
        long result;
        string? volume = _volume, operation = _operation;
        try
        {
            result = _core.GetResult(token);
        }
        finally
        {
            _volume = null;
            _operation = null;
            _core.Reset();
            Return();
        }
        if (result < 0) throw RbdErrors.ForRequest(result, volume!, operation!);
    }

    public ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);

    // The Checked view throws librbd's error: a request that already failed must say Faulted, or a caller that looks at
    // IsCompletedSuccessfully before awaiting (VolumeExport does, for completions that beat it) never calls GetResult
    // and answers the client "ok" for a failed write (a fenced zombie's, in the Rbd ServerTests).
    ValueTaskSourceStatus IValueTaskSource.GetStatus(short token)
    {
        var status = _core.GetStatus(token);
        return status == ValueTaskSourceStatus.Succeeded && _result < 0 ? ValueTaskSourceStatus.Faulted : status;
    }

    public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _core.OnCompleted(continuation, state, token, flags);

    private void Return()
    {
        if (Interlocked.Increment(ref _pooled) <= PooledMax)
        {
            Pool.Enqueue(this);
        }
        else
        {
            Interlocked.Decrement(ref _pooled);
            _self.Free();
        }
    }
}
