using Platter.Testing;
using Platter.Volumes;

namespace Platter.VhostUser.Tests;

/// <summary>A volume handle passing everything to the real one (which the test owns), with a hook run before each write reaches it.</summary>
internal sealed class HookedVolume(IVolumeHandle inner) : DelegatingVolumeHandle(inner, ownsInner: false)
{
    /// <summary>Run with each write's offset and source before the write is passed on; null: none.</summary>
    public Action<long, ReadOnlyMemory<byte>>? BeforeWrite { get; set; }

    public override ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, bool fua, CancellationToken cancellationToken = default)
    {
        BeforeWrite?.Invoke(offset, source);
        return base.WriteAsync(offset, source, fua, cancellationToken);
    }
}
