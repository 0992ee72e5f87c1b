using System.Net;
using System.Net.Sockets;

namespace Platter.Server;

/// <summary>A listening socket handed to the process by its service manager (systemd socket activation).</summary>
/// <param name="Socket">The listening socket, already bound and listening; the service manager keeps its own copy.</param>
/// <param name="Name">Its name from LISTEN_FDNAMES (FileDescriptorName= in the .socket unit), or "unknown".</param>
public sealed record ActivatedSocket(Socket Socket, string Name)
{
    /// <summary>The unix socket path, or null for a TCP socket.</summary>
    public string? UnixPath => Socket.LocalEndPoint is UnixDomainSocketEndPoint unix ? unix.ToString() : null;

    /// <summary>The TCP address, or null for a unix socket.</summary>
    public IPEndPoint? TcpEndPoint => Socket.LocalEndPoint as IPEndPoint;
}

/// <summary>
/// systemd's socket activation protocol (sd_listen_fds(3)), written out because it is three environment variables:
/// LISTEN_PID is this process, LISTEN_FDS sockets start at file descriptor 3, LISTEN_FDNAMES names them. The service
/// manager keeps the listening sockets open while the service restarts, so clients connecting in that window wait in
/// the kernel's accept queue instead of being refused.
/// </summary>
public static class SystemdActivation
{
    /// <summary>The first passed file descriptor (SD_LISTEN_FDS_START).</summary>
    public const int FirstDescriptor = 3;

    // More than any unit of ours declares (NBD TCP, NBD unix, API); a larger count is a misconfiguration.
    private const int DescriptorsMax = 16;

    /// <summary>
    /// Takes the sockets passed to this process, if any, and removes the variables from the environment (as
    /// sd_listen_fds(1) does) so that child processes do not think the sockets are theirs. Returns an empty list
    /// when the variables are absent or meant for another process.
    /// </summary>
    public static IReadOnlyList<ActivatedSocket> TakeListenSockets()
    {
        var pid = Environment.GetEnvironmentVariable("LISTEN_PID");
        var fds = Environment.GetEnvironmentVariable("LISTEN_FDS");
        var names = Environment.GetEnvironmentVariable("LISTEN_FDNAMES");
        Environment.SetEnvironmentVariable("LISTEN_PID", null);
        Environment.SetEnvironmentVariable("LISTEN_FDS", null);
        Environment.SetEnvironmentVariable("LISTEN_FDNAMES", null);
        if (pid is null || fds is null) return [];
        if (!int.TryParse(pid, out var listenPid) || listenPid != Environment.ProcessId) return [];
        if (!int.TryParse(fds, out var count) || count is < 0 or > DescriptorsMax)
            throw new InvalidOperationException($"LISTEN_FDS={fds} is not a number of sockets between 0 and {DescriptorsMax}");
        var nameList = names?.Split(':') ?? [];
        var sockets = new List<ActivatedSocket>(count);
        for (int i = 0; i < count; i++)
        {
            int fd = FirstDescriptor + i;
            Socket socket;
            try
            {
                socket = new Socket(new SafeSocketHandle(fd, ownsHandle: true));
            }
            catch (SocketException e)
            {
                throw new InvalidOperationException($"file descriptor {fd} passed by the service manager is not a socket: {e.Message}", e);
            }
            if (socket.SocketType != SocketType.Stream)
                throw new InvalidOperationException($"file descriptor {fd} passed by the service manager is not a stream socket (ListenStream= in the .socket unit)");
            sockets.Add(new ActivatedSocket(socket, i < nameList.Length && nameList[i].Length > 0 ? nameList[i] : "unknown"));
        }
        return sockets;
    }
}

/// <summary>
/// sd_notify(3) written out: one datagram to the unix socket in NOTIFY_SOCKET ('@' starts an abstract name). With
/// Type=notify systemd counts the service started at READY=1 (after the store is open and every listener accepts),
/// not when the process starts, so units ordered after it and clients see a server that answers.
/// </summary>
public static class SystemdNotify
{
    /// <summary>Sends <paramref name="state"/> (e.g. "READY=1") when NOTIFY_SOCKET is set; returns whether it was sent.</summary>
    public static bool Send(string state)
    {
        var path = Environment.GetEnvironmentVariable("NOTIFY_SOCKET");
        if (string.IsNullOrEmpty(path)) return false;
        if (path[0] == '@') path = "\0" + path[1..];
        try
        {
            using var socket = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
            socket.Connect(new UnixDomainSocketEndPoint(path));
            socket.Send(System.Text.Encoding.UTF8.GetBytes(state));
            return true;
        }
        catch (SocketException)
        {
            // The manager went away or the socket is not ours to use: readiness is advisory, serving goes on.
            return false;
        }
    }
}
