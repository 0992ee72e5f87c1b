namespace Platter.Volumes;

/// <summary>
/// Small key/value notes stored with a volume, where every server of a shared store sees them (RBD: image metadata,
/// <c>rbd image-meta</c>). The node cache keeps a volume's cache mode and its dirty marker there, so any node that
/// serves the volume knows both. The embedded store does not implement it: one process owns it, and its volumes need
/// no node cache.
/// </summary>
public interface IVolumeMetadata
{
    /// <summary>The value of <paramref name="key"/> on volume <paramref name="name"/>, or null when it is not set. NotFound without the volume.</summary>
    string? GetVolumeMetadata(string name, string key);

    /// <summary>
    /// Sets <paramref name="key"/> on volume <paramref name="name"/> (removes it when <paramref name="value"/> is null),
    /// durably before returning. A volume another server holds is changed through that server (or refused: InUse).
    /// </summary>
    void SetVolumeMetadata(string name, string key, string? value);
}
