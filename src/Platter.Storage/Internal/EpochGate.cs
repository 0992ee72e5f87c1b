namespace Platter.Storage.Internal;

/// <summary>
/// Tells when no reader can still be looking at a physical block that was unmapped.
/// A read enters the current epoch before it looks the map up and leaves after its I/O. Freed blocks are tagged
/// with the epoch current when they were released; they may be handed out again once every reader of that epoch
/// or an earlier one has left (<see cref="TryAdvance"/> reports how far that holds). Two counters suffice because
/// the epoch only advances after the older slot has drained.
/// </summary>
internal sealed class EpochGate
{
    private long _epoch = 2;
    // Separate cache lines: readers on different cores hit different counters as the epochs alternate.
    private readonly long[] _active = new long[16];

    private static int Slot(long epoch) => (int)(epoch & 1) * 8;

    public long Current => Volatile.Read(ref _epoch);

    public long Enter()
    {
        while (true)
        {
            long e = Volatile.Read(ref _epoch);
            Interlocked.Increment(ref _active[Slot(e)]);
            if (Volatile.Read(ref _epoch) == e) return e;
            Interlocked.Decrement(ref _active[Slot(e)]);
        }
    }

    public void Exit(long epoch) => Interlocked.Decrement(ref _active[Slot(epoch)]);

    /// <summary>
    /// Advances the epoch when the previous one has drained. Returns the newest epoch all of whose readers (and all
    /// earlier ones) have left. Called only by the committer thread.
    /// </summary>
    public long TryAdvance()
    {
        long e = Volatile.Read(ref _epoch);
        if (Volatile.Read(ref _active[Slot(e - 1)]) != 0) return e - 2;
        // Readers of e-1 and earlier are gone; new readers move to e+1, whose slot (that of e-1) is empty.
        Interlocked.Increment(ref _epoch);
        return e - 1;
    }
}
