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
    private const int O_RDWR = 0x2;
    private const int O_CREAT = 0x40;
    private const int O_CLOEXEC = 0x80000;

    private readonly SafeFileHandle _file;

    private StoreLock(SafeFileHandle file, string path)
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
        // open(2) directly: FileStream takes its own flock (LOCK_SH) to emulate FileShare, which would turn a
        // held lock into a generic sharing-violation IOException before ours is even tried.
        var file = new SafeFileHandle((nint)Open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0x1A4 /* 0644 */), ownsHandle: true);
        if (file.IsInvalid)
        {
            var errno = Marshal.GetLastPInvokeError();
            file.Dispose();
            throw new IOException($"cannot open {path}: {Marshal.GetPInvokeErrorMessage(errno)}");
        }
        try
        {
            if (Flock(file, LOCK_EX | LOCK_NB) != 0)
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
            var pid = Encoding.ASCII.GetBytes($"{Environment.ProcessId}\n");
            RandomAccess.SetLength(file, 0);
            RandomAccess.Write(file, pid, 0);
            return new StoreLock(file, path);
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    private static string? ReadHolder(SafeFileHandle file)
    {
        try
        {
            Span<byte> buffer = stackalloc byte[32];
            int n = RandomAccess.Read(file, buffer, 0);
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

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Open(string path, int flags, int mode);

    [LibraryImport("libc", EntryPoint = "flock", SetLastError = true)]
    private static partial int Flock(SafeFileHandle fd, int operation);
}

/// <summary>Another process holds the store.</summary>
public sealed class StoreLockedException(string storeDirectory, string message) : Exception(message)
{
    /// <summary>The store directory that is locked.</summary>
    public string StoreDirectory { get; } = storeDirectory;
}
