namespace Platter.Volumes;

/// <summary>
/// A process-wide count of moments at which acknowledgements became visible to clients. A write-back cache reads it
/// when a write arrives and when it acknowledges one: a client cannot have seen the acknowledgement of a write
/// acknowledged at clock value A before it sent a write that arrived at E &lt;= A (the clock had not moved past A
/// yet, so no acknowledgement made at A had left), so the second does not depend on the first and the two may reach
/// the backend in either order (decision 0014).
/// </summary>
/// <remarks>
/// Whoever makes an acknowledgement visible ticks the clock first. By default the cache does that itself when it
/// returns from a write; a front door that sends replies itself and ticks before every send may take that over for its
/// handles (<see cref="IClockedAcknowledgements"/>), so the writes it received before its last send count as
/// concurrent.
/// </remarks>
public static class AcknowledgementClock
{
    private static long s_now;

    /// <summary>The current value.</summary>
    public static long Now => Volatile.Read(ref s_now);

    /// <summary>Advances the clock: call before an acknowledgement (a reply, a completion) can reach a client.</summary>
    public static void Tick() => Interlocked.Increment(ref s_now);
}

/// <summary>
/// A handle whose writes may have their acknowledgements made visible by the caller instead of on return. Implemented
/// by handles that order writes by <see cref="AcknowledgementClock"/> (a write-back cache's); wrappers pass it on.
/// </summary>
public interface IClockedAcknowledgements
{
    /// <summary>
    /// The caller promises that from now on every result of a write, write-zeroes or trim through this handle reaches
    /// its client only after an <see cref="AcknowledgementClock.Tick"/> made after the call returned (the NBD door
    /// ticks before every send of replies). False promises break the write-back cache's ordering guarantee.
    /// </summary>
    void AcknowledgeThroughClock();
}
