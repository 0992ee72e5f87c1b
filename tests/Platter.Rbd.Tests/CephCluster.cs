using System.Diagnostics;
using Platter.Ceph;
using Xunit;

namespace Platter.Rbd.Tests;

/// <summary>
/// A real one-host Ceph cluster (scripts/ceph-cluster.sh: one monitor, three bluestore OSDs, pool "rbd" of size 3 /
/// min_size 2) started once for every test class of the collection and stopped after the last. Tests make images
/// with unique names, so they never see each other's.
/// </summary>
public sealed class CephCluster : IDisposable
{
    public CephCluster()
    {
        Directory = System.IO.Directory.CreateTempSubdirectory("platter-ceph-").FullName;
        Script = Path.Combine(RepoRoot, "scripts", "ceph-cluster.sh");
        var (code, output) = Run(Script, "start", Directory);
        if (code != 0)
        {
            Run(Script, "stop", Directory);
            throw new InvalidOperationException($"ceph-cluster.sh start failed ({code}): {output}");
        }
        ConfFile = Path.Combine(Directory, "ceph.conf");
        StartReaper();
    }

    /// <summary>
    /// A detached watcher that stops the cluster and removes its directory once this test process is gone, however it
    /// ends (a crashed test host never runs Dispose, and the daemons must not outlive the run).
    /// </summary>
    private void StartReaper()
    {
        string script = $"while kill -0 {Environment.ProcessId} 2>/dev/null; do sleep 1; done; " +
                        $"'{Script}' stop '{Directory}' >/dev/null 2>&1; rm -rf '{Directory}'";
        var info = new ProcessStartInfo("setsid", ["-f", "bash", "-c", script])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
        };
        using var reaper = Process.Start(info)!;
        reaper.StandardInput.Close();
    }

    public static string RepoRoot { get; } = FindRepoRoot();

    public string Directory { get; }

    public string Script { get; }

    public string ConfFile { get; }

    public string Pool => "rbd";

    /// <summary>Settings every test connection uses: fail rather than hang when something is wrong.</summary>
    public static readonly KeyValuePair<string, string>[] TestSettings =
    [
        new("client_mount_timeout", "20"),
        new("rados_osd_op_timeout", "60"),
        new("rados_mon_op_timeout", "20"),
        new("rbd_skip_partial_discard", "false"),
    ];

    public RadosCluster Connect() => RadosCluster.Connect(ConfFile, "admin", TestSettings);

    /// <summary>An RBD backend on the pool, with short timeouts so a broken cluster fails the test instead of hanging it.</summary>
    public RbdBackend OpenBackend() => RbdBackend.Open(new RbdBackendOptions
    {
        Pool = Pool,
        ConfFile = ConfFile,
        ConnectTimeout = TimeSpan.FromSeconds(20),
        OperationTimeout = TimeSpan.FromSeconds(60),
    });

    /// <summary>Runs a command with CEPH_CONF pointing at this cluster; returns exit code and stdout+stderr.</summary>
    public (int Code, string Output) Exec(string file, params string[] args) =>
        Run(file, args, new Dictionary<string, string> { ["CEPH_CONF"] = ConfFile });

    public string ExecOk(string file, params string[] args)
    {
        var (code, output) = Exec(file, args);
        if (code != 0) throw new InvalidOperationException($"{file} {string.Join(' ', args)} failed ({code}): {output}");
        return output;
    }

    public static string UniqueName(string prefix) => $"{prefix}-{Guid.NewGuid():N}"[..(prefix.Length + 13)];

    public void Dispose()
    {
        Run(Script, "stop", Directory);
        try
        {
            System.IO.Directory.Delete(Directory, recursive: true);
        }
        catch (IOException)
        {
            // a daemon still closing a file: the temp directory is cleaned by the system later
        }
    }

    internal static (int Code, string Output) Run(string file, string[] args, IDictionary<string, string>? env = null)
    {
        var info = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
        };
        foreach (var arg in args) info.ArgumentList.Add(arg);
        info.Environment.Remove("CEPH_ARGS");
        foreach (var (k, v) in env ?? new Dictionary<string, string>()) info.Environment[k] = v;
        using var process = Process.Start(info)!;
        process.StandardInput.Close();
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromMinutes(3)))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{file} {string.Join(' ', args)} did not finish in 3 minutes");
        }
        return (process.ExitCode, stdout.Result + stderr.Result);
    }

    private static (int Code, string Output) Run(string file, params string[] args) => Run(file, args, null);

    private static string FindRepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Platter.slnx"))) return dir.FullName;
        }
        throw new InvalidOperationException("repository root (Platter.slnx) not found above " + AppContext.BaseDirectory);
    }
}

[CollectionDefinition(Name)]
public sealed class CephCollection : ICollectionFixture<CephCluster>
{
    public const string Name = "ceph";
}
