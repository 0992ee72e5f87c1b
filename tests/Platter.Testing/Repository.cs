using System.Net;
using System.Net.Sockets;

namespace Platter.Testing;

/// <summary>Where the tests run: the repository they were built from, and a loopback port nobody uses.</summary>
public static class Repository
{
    /// <summary>The repository root: the nearest ancestor of the test binaries that holds Platter.slnx.</summary>
    public static string Root
    {
        get
        {
            for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            {
                if (File.Exists(Path.Combine(dir.FullName, "Platter.slnx"))) return dir.FullName;
            }
            throw new InvalidOperationException($"no Platter.slnx above {AppContext.BaseDirectory}");
        }
    }

    /// <summary>The path of <paramref name="relativePath"/> (such as "README.md") in the repository.</summary>
    public static string PathOf(string relativePath) => Path.Combine(Root, relativePath);

    /// <summary>
    /// A TCP port on 127.0.0.1 that was free a moment ago (the kernel picked it for a socket bound to port 0). Only
    /// for programs that must be told a port up front; anything that can listen on port 0 itself should.
    /// </summary>
    public static int FreeLoopbackPort()
    {
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        socket.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return ((IPEndPoint)socket.LocalEndPoint!).Port;
    }
}
