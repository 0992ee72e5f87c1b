using System.Runtime.InteropServices;
using System.Text;
using Microsoft.Win32.SafeHandles;

namespace Platter.Server;

/// <summary>
/// An exclusive flock(2) on STORE/platter.lock, held for as long as a process uses the store. The kernel drops
/// it when the process dies, so a crashed server never leaves a stale lock behind. flock is called directly
/// rather than relying on FileShare.None, whose lock emulation can be switched off by an environment variable.
/// </summary>
public sealed partial class StoreLock : IDisposable
{
    private const int LOCK_EX = 2;
    private const int LOCK_NB = 4;
    private const int EWOULDBLOCK = 11;

    private readonly FileStream _file;

    private StoreLock(FileStream file, string path)
    {
        _file = file;
        Path = path;
    }

    /// <summary>The lock file.</summary>
    public string Path { get; }

    /// <summary>
    /// Takes the lock or throws <see cref="StoreLockedException"/> when another process holds it. Creates the
    /// directory when missing. Writes this process id into the file so the message can name the holder.
    /// </summary>
    public static StoreLock Acquire(string storeDirectory)
    {
        Directory.CreateDirectory(storeDirectory);
        var path = System.IO.Path.Combine(storeDirectory, StorePaths.LockFileName);
        var file = new FileStream(path, new FileStreamOptions
        {
            Mode = FileMode.OpenOrCreate,
            Access = FileAccess.ReadWrite,
            // Sharing is decided by flock below, not by .NET's own emulation.
            Share = FileShare.ReadWrite | FileShare.Delete,
            UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.OtherRead,
        });
        try
        {
            if (Flock(file.SafeFileHandle, LOCK_EX | LOCK_NB) != 0)
            {
                var errno = Marshal.GetLastPInvokeError();
                if (errno == EWOULDBLOCK)
                {
                    var holder = ReadHolder(file);
                    throw new StoreLockedException(storeDirectory,
                        $"the store at {storeDirectory} is in use by another Platter process{(holder is null ? "" : $" (pid {holder})")}; stop it first");
                }
                throw new IOException($"cannot lock {path}: {Marshal.GetPInvokeErrorMessage(errno)}");
            }
            file.SetLength(0);
            var pid = Encoding.ASCII.GetBytes($"{Environment.ProcessId}\n");
            file.Write(pid);
            file.Flush();
            return new StoreLock(file, path);
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    private static string? ReadHolder(FileStream file)
    {
        try
        {
            file.Position = 0;
            Span<byte> buffer = stackalloc byte[32];
            int n = file.Read(buffer);
            var text = Encoding.ASCII.GetString(buffer[..n]).Trim();
            return int.TryParse(text, out _) ? text : null;
        }
        catch (IOException)
        {
            return null;
        }
    }

    /// <summary>Releases the lock (closing the descriptor drops the flock). Safe to call twice.</summary>
    public void Dispose() => _file.Dispose();

    [LibraryImport("libc", EntryPoint = "flock", SetLastError = true)]
    private static partial int Flock(SafeFileHandle fd, int operation);
}

/// <summary>Another process holds the store.</summary>
public sealed class StoreLockedException(string storeDirectory, string message) : Exception(message)
{
    /// <summary>The store directory that is locked.</summary>
    public string StoreDirectory { get; } = storeDirectory;
}
