namespace Platter.Testing;

/// <summary>
/// A private scratch directory on the real file system (fallocate and fdatasync behave as in production), removed
/// on dispose. It lives under /tmp with a short name on purpose: unix socket paths inside it must fit sun_path
/// (108 bytes including the terminator), which a long TMPDIR would break.
/// </summary>
public sealed class TempDirectory : IDisposable
{
    /// <summary>Creates <c>/tmp/PREFIX-XXXXXXXXXXXX</c> (12 random hex digits).</summary>
    public TempDirectory(string prefix = "plt")
    {
        Path = System.IO.Path.Combine("/tmp", $"{prefix}-{Guid.NewGuid():N}"[..(prefix.Length + 13)]);
        Directory.CreateDirectory(Path);
    }

    /// <summary>The directory's absolute path.</summary>
    public string Path { get; }

    /// <summary>The path of <paramref name="name"/> (a file or a relative path) inside this directory.</summary>
    public string Combine(string name) => System.IO.Path.Combine(Path, name);

    /// <summary>Deletes the directory and everything in it; a directory that is already gone, or busy, is left be.</summary>
    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Already gone, or something still holds a file open: a leftover under /tmp must not fail the test.
        }
    }

    /// <inheritdoc/>
    public override string ToString() => Path;
}
