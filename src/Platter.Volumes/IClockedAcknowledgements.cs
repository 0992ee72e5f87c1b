namespace Platter.Volumes;

/// <summary>
/// A handle whose writes are ordered by a clock of acknowledgements (a write-back cache's, decision 0014), which a
/// front door may drive itself. The clock moves whenever acknowledgements may reach clients: a write that arrived
/// before the clock moved past the acknowledgement of another cannot depend on it (its client had not seen that
/// acknowledgement when it sent it), so the two may reach the backend in either order. By default the handle moves
/// the clock itself as each write returns, so every write depends on every write acknowledged before it arrived;
/// a door that sends the replies of several requests together can take that over and let those requests count as
/// concurrent. Wrappers pass both members on.
/// </summary>
public interface IClockedAcknowledgements
{
    /// <summary>
    /// The caller promises that from now on every result of a write, write-zeroes or trim through this handle reaches
    /// its client only after a call of <see cref="AcknowledgementsLeaving"/> made after that call returned (the NBD
    /// door calls it before every send of replies). A broken promise breaks the write-back cache's guarantee that a
    /// lost cache leaves the image crash-consistent.
    /// </summary>
    void AcknowledgeThroughClock();

    /// <summary>Moves the clock: acknowledgements made so far are about to reach clients.</summary>
    void AcknowledgementsLeaving();
}
