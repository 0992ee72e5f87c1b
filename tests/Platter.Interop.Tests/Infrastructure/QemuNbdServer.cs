using System.Diagnostics;
using System.Text;
using Xunit.Sdk;

namespace Platter.Interop.Tests.Infrastructure;

/// <summary>qemu-nbd over raw files, one process and socket per export: the reference peer.</summary>
public sealed class QemuNbdServer : ITestServer
{
    private readonly TempDirectory _root = new("qnbd");
    private readonly StringBuilder _log = new();
    private readonly List<NbdExport> _exports = [];
    private readonly Dictionary<string, Process> _processes = [];

    public string ScratchDirectory => _root.Path;

    public string Log
    {
        get { lock (_log) return _log.ToString(); }
    }

    public Task StartAsync() => Task.WhenAll(_exports.Select(StartOneAsync));

    public async Task<NbdExport> CreateExportAsync(string name, long sizeBytes)
    {
        using (var f = File.Create(_root.File(name + ".raw"))) f.SetLength(sizeBytes);
        var export = new NbdExport(name, _root.File(name + ".sock"), sizeBytes);
        _exports.Add(export);
        await StartOneAsync(export);
        return export;
    }

    public async Task<int> StopAsync()
    {
        int worst = 0;
        foreach (var (name, p) in _processes)
        {
            Signals.Terminate(p);
            await p.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30));
            if (p.ExitCode != 0) worst = p.ExitCode;
            p.Dispose();
        }
        _processes.Clear();
        return worst;
    }

    private async Task StartOneAsync(NbdExport export)
    {
        var psi = Proc.CreateStartInfo(Tools.Require("qemu-nbd", "qemu-utils"),
            ["-k", export.SocketPath, "-x", export.Name, "-f", "raw", "-t", "--shared=8", "--cache=writeback", "--discard=unmap", _root.File(export.Name + ".raw")], null);
        var p = new Process { StartInfo = psi };
        p.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (_log) _log.AppendLine(e.Data); };
        p.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (_log) _log.AppendLine(e.Data); };
        p.Start();
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        _processes[export.Name] = p;
        var sw = Stopwatch.StartNew();
        while (!Signals.CanConnect(export.SocketPath))
        {
            if (p.HasExited || sw.Elapsed > TimeSpan.FromSeconds(20)) throw new XunitException($"qemu-nbd did not start\n{Log}");
            await Task.Delay(20);
        }
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var p in _processes.Values)
        {
            Proc.KillTree(p);
            await p.WaitForExitAsync();
            p.Dispose();
        }
        _processes.Clear();
        _root.Dispose();
    }
}
