using System.Diagnostics;
using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace Platter.Interop.Tests.Infrastructure;

/// <summary>Process and socket helpers that .NET does not offer directly.</summary>
public static class Signals
{
    private const int SIGTERM = 15;

    [DllImport("libc", SetLastError = true, EntryPoint = "kill")]
    private static extern int SysKill(int pid, int signal);

    /// <summary>
    /// Sends SIGTERM: the graceful stop a service manager uses. <see cref="Process.Kill()"/> sends SIGKILL,
    /// which would skip exactly the shutdown path the tests check.
    /// </summary>
    public static void Terminate(Process process)
    {
        if (SysKill(process.Id, SIGTERM) != 0 && !process.HasExited)
            throw new InvalidOperationException($"kill({process.Id}, SIGTERM) failed: errno {Marshal.GetLastPInvokeError()}");
    }

    /// <summary>True when something accepts connections on the unix socket at <paramref name="path"/>.</summary>
    public static bool CanConnect(string path)
    {
        if (!File.Exists(path)) return false;
        try
        {
            using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            socket.Connect(new UnixDomainSocketEndPoint(path));
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }
}
