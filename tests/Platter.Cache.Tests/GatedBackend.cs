namespace Platter.Cache.Tests;

/// <summary>
/// A backend handle (the embedded engine's, below) whose writes can be held back, slowed down or cut off, so a test
/// decides how far write-back gets. Records the order in which writes reach the backend.
/// </summary>
internal sealed class GatedBackend(IVolumeHandle inner) : DelegatingVolumeHandle(inner)
{
    private readonly object _lock = new();
    private TaskCompletionSource _open = Opened();
    private volatile bool _cut;

    private static TaskCompletionSource Opened()
    {
        var tcs = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        tcs.SetResult();
        return tcs;
    }

    /// <summary>Delay before each write reaches the backend.</summary>
    public TimeSpan WriteDelay { get; set; }

    /// <summary>After this many writes reach the backend, cut it off (as <see cref="Cut"/>).</summary>
    public int CutAfterWrites { get; set; } = int.MaxValue;

    /// <summary>After this many writes reach the backend, hold later ones (as <see cref="Pause"/>).</summary>
    public int PauseAfterWrites { get; set; } = int.MaxValue;

    /// <summary>Writes in flight now (called and not yet returned).</summary>
    public int InFlight => Volatile.Read(ref _inFlight);

    /// <summary>Most writes that were in flight at once (called and not yet returned).</summary>
    public int MaxInFlight => Volatile.Read(ref _maxInFlight);

    private int _inFlight;
    private int _maxInFlight;

    /// <summary>Writes that reached the backend, in order.</summary>
    public List<(long Offset, int Length)> Applied { get; } = [];

    /// <summary>Holds every later write until <see cref="Resume"/>.</summary>
    public void Pause()
    {
        lock (_lock) if (_open.Task.IsCompleted) _open = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    public void Resume()
    {
        lock (_lock) _open.TrySetResult();
    }

    /// <summary>From now on no write reaches the backend (the cache node died): writes in flight fail.</summary>
    public void Cut()
    {
        _cut = true;
        Resume();
    }

    public override async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, bool fua, CancellationToken cancellationToken = default)
    {
        int inFlight = Interlocked.Increment(ref _inFlight);
        for (int max = Volatile.Read(ref _maxInFlight); inFlight > max; max = Volatile.Read(ref _maxInFlight))
            Interlocked.CompareExchange(ref _maxInFlight, inFlight, max);
        try
        {
            await WriteCoreAsync(offset, source, fua, cancellationToken);
        }
        finally
        {
            Interlocked.Decrement(ref _inFlight);
        }
    }

    private async ValueTask WriteCoreAsync(long offset, ReadOnlyMemory<byte> source, bool fua, CancellationToken cancellationToken)
    {
        Task gate;
        lock (_lock) gate = _open.Task;
        await gate.WaitAsync(cancellationToken);
        if (WriteDelay > TimeSpan.Zero) await Task.Delay(WriteDelay, cancellationToken);
        lock (_lock)
        {
            if (_cut) throw new StorageException(StorageError.Closed, "the test cut the backend off");
            // Applied under the lock, so "cut after N" means exactly N writes reached the backend.
            Inner.WriteAsync(offset, source, fua, cancellationToken).AsTask().GetAwaiter().GetResult();
            Applied.Add((offset, source.Length));
            if (Applied.Count >= CutAfterWrites) _cut = true;
            if (Applied.Count == PauseAfterWrites) Pause();
        }
    }
}
