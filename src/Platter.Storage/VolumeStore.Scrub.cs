using Microsoft.Extensions.Logging;
using Platter.Storage.Internal;

namespace Platter.Storage;

// The online scrub's part of the facade (the machinery is Internal/Scrubber.cs).
public sealed partial class VolumeStore : IVolumeScrub
{
    private Scrubber CreateScrubber(string directory, bool salvage, ILogger logger) =>
        new(_parts, _catalog.AllVolumes, ResolveScrubTarget, salvage ? null : Path.Combine(directory, Scrubber.FileName), logger);

    // "vol" or "vol@snap" to its version; NotFound otherwise.
    private MapOwner ResolveScrubTarget(string name)
    {
        int at = name.IndexOf('@');
        return at < 0 ? _catalog.Find(name) : _catalog.FindSnapshot(name[..at], name[(at + 1)..]);
    }

    /// <inheritdoc />
    public ScrubStatus StartScrub(IReadOnlyList<string> targets, long? rateBytesPerSecond, bool restart)
    {
        ThrowIfDisposed();
        return _scrubber.Start(targets, rateBytesPerSecond, restart);
    }

    /// <inheritdoc />
    public ScrubStatus StopScrub()
    {
        ThrowIfDisposed();
        return _scrubber.Stop();
    }

    /// <inheritdoc />
    public ScrubStatus GetScrubStatus()
    {
        ThrowIfDisposed();
        return _scrubber.Status();
    }

    /// <summary>The scrubber, for tests (hooks, waiting for its thread).</summary>
    internal Scrubber ScrubberForTests => _scrubber;
}
