namespace Platter.Interop.Tests.Infrastructure;

/// <summary>
/// A private directory under /tmp, deleted on dispose. Kept short on purpose: unix socket paths inside it
/// must fit sun_path (108 bytes including the terminator).
/// </summary>
public sealed class TempDirectory : IDisposable
{
    public TempDirectory(string prefix = "plt")
    {
        Path = System.IO.Path.Combine("/tmp", $"{prefix}-{Guid.NewGuid():N}"[..(prefix.Length + 13)]);
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (DirectoryNotFoundException)
        {
        }
    }
}
