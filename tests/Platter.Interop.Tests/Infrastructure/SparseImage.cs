using System.Security.Cryptography;

namespace Platter.Interop.Tests.Infrastructure;

/// <summary>
/// A raw image file with seeded random data in given ranges and holes elsewhere: the reference content
/// copied into volumes and compared by checksum with what comes back out.
/// </summary>
public static class SparseImage
{
    public static void Create(string path, long sizeBytes, int seed, IEnumerable<(long Offset, long Length)> dataRanges)
    {
        var random = new Random(seed);
        using var file = new FileStream(path, FileMode.Create, FileAccess.Write);
        file.SetLength(sizeBytes);
        var buffer = new byte[1024 * 1024];
        foreach (var (offset, length) in dataRanges)
        {
            file.Position = offset;
            for (long done = 0; done < length;)
            {
                int n = (int)Math.Min(buffer.Length, length - done);
                random.NextBytes(buffer.AsSpan(0, n));
                file.Write(buffer, 0, n);
                done += n;
            }
        }
    }

    public static string Sha256(string path)
    {
        using var file = File.OpenRead(path);
        return Convert.ToHexString(SHA256.HashData(file));
    }
}
