namespace Platter.Volumes;

/// <summary>
/// A backend whose volumes other servers can hold (a shared cluster store): taking a volume over from a holder that
/// died or hangs. The embedded store does not implement it (one process owns the whole store).
/// </summary>
public interface IVolumeTakeover
{
    /// <summary>
    /// Breaks the holder's claim on <paramref name="name"/> and fences it, so that if it comes back its writes fail and
    /// never reach the volume. Returns who held it, or null when nobody did. Only on request: never automatic.
    /// </summary>
    string? TakeOverVolume(string name);
}
