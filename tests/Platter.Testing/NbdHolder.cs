using System.Diagnostics;
using System.Text;
using Xunit.Sdk;

namespace Platter.Testing;

/// <summary>
/// A real libnbd client (python3-libnbd) that holds one NBD connection open while a test does other things, like a
/// VM that keeps its disk open, and does small I/O on request: <c>w OFFSET BYTE</c> writes 4 KiB of BYTE at OFFSET and
/// flushes; <c>r OFFSET</c> reads 4 KiB and answers with its first byte. Each command answers one line:
/// <c>ok</c>, <c>ok BYTE</c> or <c>err MESSAGE</c>.
/// </summary>
/// <remarks>
/// Every wait is bounded: connecting, each answer, closing. A client that never answers fails the test with its
/// stderr (read as it comes, so reading it never waits for the client to exit) instead of hanging the run.
/// </remarks>
public sealed class NbdHolder : IDisposable
{
    /// <summary>How long connecting may take on a loaded 2-core machine before the test fails.</summary>
    public static readonly TimeSpan ConnectTimeout = TimeSpan.FromSeconds(60);

    private const string Script = """
        import nbd, sys
        h = nbd.NBD()
        h.connect_uri(sys.argv[1])
        print("connected", flush=True)
        for line in sys.stdin:
            part = line.split()
            try:
                if part[0] == "w":
                    h.pwrite(bytes([int(part[2])]) * 4096, int(part[1]))
                    h.flush()
                    print("ok", flush=True)
                elif part[0] == "r":
                    print("ok %d" % h.pread(4096, int(part[1]))[0], flush=True)
            except Exception as e:
                print("err " + str(e).replace("\n", " "), flush=True)
        h.shutdown()
        """;

    private readonly Process _process;
    private readonly StringBuilder _stderr = new();
    private bool _disposed;

    /// <summary>
    /// Connects to <paramref name="uri"/> (an NBD URI as libnbd takes it). Fails the test, with the client's stderr,
    /// when it is not connected within <see cref="ConnectTimeout"/>.
    /// </summary>
    public NbdHolder(string uri)
    {
        // Debian's python3 is the one python3-libnbd installs into; a python3 earlier on PATH (a venv) may lack it.
        var python = File.Exists("/usr/bin/python3") ? "/usr/bin/python3" : ProcessRunner.RequireTool("python3", "python3-libnbd");
        var psi = ProcessRunner.StartInfo(python, ["-c", Script, uri]);
        psi.RedirectStandardInput = true;
        _process = ProcessRunner.Start(psi);
        _process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (_stderr) _stderr.AppendLine(e.Data); };
        _process.BeginErrorReadLine();
        var first = ReadLine(ConnectTimeout);
        if (first == "connected") return;
        Dispose();
        throw new XunitException($"NBD client did not connect to {uri}: {first ?? $"no answer within {ConnectTimeout.TotalSeconds:0} s"}\n{Stderr}");
    }

    /// <summary>Process id of the client: the server reports it as the peer of a unix socket connection.</summary>
    public int Id => _process.Id;

    /// <summary>What the client wrote to stderr so far.</summary>
    public string Stderr
    {
        get { lock (_stderr) return _stderr.ToString(); }
    }

    /// <summary>Sends one command and returns its answer; fails the test when none comes within <paramref name="timeout"/>.</summary>
    public string Send(string command, TimeSpan timeout)
    {
        _process.StandardInput.WriteLine(command);
        _process.StandardInput.Flush();
        return ReadLine(timeout) ?? throw new XunitException(
            $"NBD client gave no answer to '{command}' within {timeout.TotalSeconds:0} s\n{Stderr}");
    }

    /// <summary>
    /// Closes the connection the polite way (NBD_CMD_DISC) and waits for the client to exit; one that does not exit
    /// within <paramref name="timeout"/> is killed.
    /// </summary>
    public async Task CloseAsync(TimeSpan timeout)
    {
        if (_disposed) return;
        try { _process.StandardInput.Close(); }
        catch (IOException) { } // already gone: the pipe is broken
        using var cts = new CancellationTokenSource(timeout);
        try { await _process.WaitForExitAsync(cts.Token); }
        catch (OperationCanceledException) { ProcessRunner.KillTree(_process); }
    }

    /// <summary>Kills the client if it still runs (the connection drops without a goodbye) and waits, bounded, until it is gone.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        ProcessRunner.KillTree(_process);
        _process.WaitForExit(TimeSpan.FromSeconds(30));
        _process.Dispose();
    }

    // The pending read ends with the process at the latest: a kill closes the pipe.
    private string? ReadLine(TimeSpan timeout)
    {
        var line = _process.StandardOutput.ReadLineAsync();
        return line.Wait(timeout) ? line.Result : null;
    }
}
