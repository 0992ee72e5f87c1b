using System.Diagnostics;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;
using Xunit.Sdk;

namespace Platter.Interop.Tests;

/// <summary>
/// `platter serve` under socket activation, with this test as the service manager: it binds the NBD and API unix
/// sockets itself, hands them to the server as systemd does (descriptors 3 and 4, LISTEN_PID, LISTEN_FDS,
/// LISTEN_FDNAMES) and listens on a NOTIFY_SOCKET for READY=1 and STOPPING=1. While the server is down (stopped with
/// SIGTERM, or killed with SIGKILL) qemu-io and the CLI connect anyway: they wait in the kernel's accept queue and
/// are served, with the data intact, by the next server.
/// </summary>
public sealed partial class SocketActivationTests(ITestOutputHelper output) : IDisposable
{
    private static readonly TimeSpan ReadyTimeout = TimeSpan.FromSeconds(60);
    private static readonly TimeSpan StopTimeout = TimeSpan.FromSeconds(60);
    // Clearing close-on-exec makes every child started meanwhile inherit the sockets: one activation at a time.
    private static readonly SemaphoreSlim InheritLock = new(1, 1);

    private readonly TempDirectory _dir = new("plt-act");
    private readonly StringBuilder _log = new();

    [Fact]
    public async Task Clients_connecting_while_the_server_restarts_wait_and_are_served()
    {
        string nbdPath = _dir.Combine("nbd.sock"), apiPath = _dir.Combine("api.sock"), notifyPath = _dir.Combine("notify.sock");
        using var nbd = Listen(nbdPath);
        using var api = Listen(apiPath);
        using var notify = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
        notify.Bind(new UnixDomainSocketEndPoint(notifyPath));
        long nbdInode = Inode(nbdPath);
        try
        {
            var server = await StartAsync(nbd, api, notifyPath, notify);
            (await CliAsync(apiPath, "volume", "create", "vm1", "--size", "64M")).EnsureSuccess("create");
            (await ProcessRunner.RunAsync(Tools.QemuIo, ["-f", "raw", "-c", "write -P 0x6b 0 1M", "-c", "flush", Uri(nbdPath)])).EnsureSuccess("write");

            foreach (bool graceful in new[] { true, false })
            {
                if (graceful)
                {
                    ProcessRunner.Terminate(server);
                    Assert.Equal("STOPPING=1", await ReceiveAsync(notify, ReadyTimeout));
                }
                else
                {
                    server.Kill();
                }
                using (var cts = new CancellationTokenSource(StopTimeout)) await server.WaitForExitAsync(cts.Token);
                if (graceful) Assert.True(server.ExitCode == 0, $"exit code {server.ExitCode} after SIGTERM\n{Log}");
                server.Dispose();
                AppendLog($"--- server stopped ({(graceful ? "SIGTERM" : "SIGKILL")})");
                // The socket files are the service manager's: the server must not have removed or replaced them.
                Assert.Equal(nbdInode, Inode(nbdPath));

                // Nobody serves now; these connect and wait in the accept queue.
                var read = ProcessRunner.RunAsync(Tools.QemuIo, ["-f", "raw", "-r", "-c", "read -P 0x6b 0 1M", Uri(nbdPath)]);
                var list = CliAsync(apiPath, "volume", "list", "--json");
                await Task.Delay(500);
                if (read.IsCompleted) Assert.Fail("qemu-io finished while no server was running:\n" + (await read).Describe());

                server = await StartAsync(nbd, api, notifyPath, notify);
                var readResult = (await read).EnsureSuccess($"qemu-io queued across the {(graceful ? "SIGTERM" : "SIGKILL")} restart");
                Assert.DoesNotContain("verification failed", readResult.Stdout);
                Assert.Contains("\"vm1\"", (await list).EnsureSuccess("volume list queued across the restart").Stdout);
            }

            ProcessRunner.Terminate(server);
            using (var cts = new CancellationTokenSource(StopTimeout)) await server.WaitForExitAsync(cts.Token);
            Assert.Equal(0, server.ExitCode);
            server.Dispose();
        }
        catch
        {
            output.WriteLine(Log);
            throw;
        }
    }

    private string Log
    {
        get { lock (_log) return _log.ToString(); }
    }

    private static string Uri(string socket) => $"nbd+unix:///vm1?socket={socket}";

    private static Task<ProcessResult> CliAsync(string apiSocket, params string[] args) =>
        ProcessRunner.RunAsync(PlatterServer.DotnetHost, [PlatterServer.PlatterDll, .. args, "--api-socket", apiSocket], TimeSpan.FromSeconds(90));

    private static Socket Listen(string path)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        socket.Bind(new UnixDomainSocketEndPoint(path));
        socket.Listen(64);
        return socket;
    }

    /// <summary>Starts `platter serve` with the two sockets as descriptors 3 (nbd) and 4 (api) and waits for READY=1.</summary>
    private async Task<Process> StartAsync(Socket nbd, Socket api, string notifyPath, Socket notify)
    {
        int nbdFd = (int)nbd.Handle, apiFd = (int)api.Handle;
        // bash, not sh: dash cannot redirect descriptors above 9. The detour through 100/101 keeps 3 and 4 from
        // overwriting each other when the test's own descriptors happen to be 3 or 4. LISTEN_PID=$$ is the server's
        // pid because exec keeps it.
        string script =
            $"exec 100<&{nbdFd} 101<&{apiFd}; exec 3<&100 4<&101 100<&- 101<&-; " +
            "export LISTEN_PID=$$ LISTEN_FDS=2 LISTEN_FDNAMES=nbd:api; " +
            $"exec '{PlatterServer.DotnetHost}' '{PlatterServer.PlatterDll}' serve --store '{_dir.Combine("store")}' " +
            $"--socket '{_dir.Combine("nbd.sock")}' --api-socket '{_dir.Combine("api.sock")}' --listen none";
        var psi = ProcessRunner.StartInfo("/bin/bash", ["-c", script], new Dictionary<string, string?>
        {
            ["NOTIFY_SOCKET"] = notifyPath,
            ["PLATTER_API_SOCKET"] = null,
        });
        var process = new Process { StartInfo = psi };
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) AppendLog(e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) AppendLog(e.Data); };
        await InheritLock.WaitAsync();
        try
        {
            SetInheritable(nbdFd, true);
            SetInheritable(apiFd, true);
            process.Start();
        }
        finally
        {
            SetInheritable(nbdFd, false);
            SetInheritable(apiFd, false);
            InheritLock.Release();
        }
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        AppendLog($"--- started pid {process.Id}");
        string message;
        try
        {
            message = await ReceiveAsync(notify, ReadyTimeout);
        }
        catch (OperationCanceledException)
        {
            ProcessRunner.KillTree(process);
            throw new XunitException($"no READY=1 within {ReadyTimeout.TotalSeconds} s\n{Log}");
        }
        Assert.StartsWith("READY=1\n", message);
        Assert.Contains($"MAINPID={process.Id}", message);
        return process;
    }

    private static async Task<string> ReceiveAsync(Socket notify, TimeSpan timeout)
    {
        var buffer = new byte[4096];
        using var cts = new CancellationTokenSource(timeout);
        int n = await notify.ReceiveAsync(buffer, SocketFlags.None, cts.Token);
        return Encoding.UTF8.GetString(buffer, 0, n);
    }

    private void AppendLog(string line)
    {
        lock (_log) _log.AppendLine(line);
    }

    private static long Inode(string path)
    {
        var result = ProcessRunner.RunAsync("stat", ["-c", "%i", path]).GetAwaiter().GetResult().EnsureSuccess("stat");
        return long.Parse(result.Stdout.Trim());
    }

    private const int F_GETFD = 1, F_SETFD = 2, FD_CLOEXEC = 1;

    [LibraryImport("libc", EntryPoint = "fcntl", SetLastError = true)]
    private static partial int Fcntl(int fd, int command, int argument);

    private static void SetInheritable(int fd, bool inheritable)
    {
        int flags = Fcntl(fd, F_GETFD, 0);
        if (flags < 0 || Fcntl(fd, F_SETFD, inheritable ? flags & ~FD_CLOEXEC : flags | FD_CLOEXEC) < 0)
            throw new InvalidOperationException($"fcntl({fd}) failed: errno {Marshal.GetLastPInvokeError()}");
    }

    public void Dispose() => _dir.Dispose();
}
