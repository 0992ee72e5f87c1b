using System.Diagnostics;
using Platter.Ceph;
using Platter.Rbd;

namespace Platter.Testing;

/// <summary>
/// A real one-host Ceph cluster (scripts/ceph-cluster.sh: one monitor, three bluestore OSDs, pool "rbd" of size 3 /
/// min_size 2) started once for every test class of a collection and stopped after the last. Tests make images
/// with unique names, so they never see each other's. Each test project that uses it declares its own xunit
/// collection with this class as the collection fixture (xunit looks for collection definitions only in the test
/// assembly itself); Platter.Rbd.Tests and Platter.Contract.Tests each start one cluster, on a port block of its own.
/// </summary>
public sealed class CephCluster : IDisposable
{
    /// <summary>Starts the cluster in a new temp directory; fails with the script's output when it cannot.</summary>
    public CephCluster()
    {
        Directory = System.IO.Directory.CreateTempSubdirectory("platter-ceph-").FullName;
        Script = Repository.PathOf(Path.Combine("scripts", "ceph-cluster.sh"));
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

    /// <summary>The cluster's directory: its configuration, keyring, daemon data and logs.</summary>
    public string Directory { get; }

    /// <summary>scripts/ceph-cluster.sh, for tests that stop and start daemons (kill-osd, start-osd).</summary>
    public string Script { get; }

    /// <summary>The cluster's ceph.conf (monitor address, keyring), for librados, the rbd CLI and qemu's rbd: driver.</summary>
    public string ConfFile { get; }

    /// <summary>The replicated pool the script creates.</summary>
    public string Pool => "rbd";

    /// <summary>Settings every test connection uses: fail rather than hang when something is wrong.</summary>
    public static readonly KeyValuePair<string, string>[] TestSettings =
    [
        new("client_mount_timeout", "20"),
        new("rados_osd_op_timeout", "60"),
        new("rados_mon_op_timeout", "20"),
        new("rbd_skip_partial_discard", "false"),
    ];

    /// <summary>A new librados connection as client.admin with <see cref="TestSettings"/>.</summary>
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
        Run(file, args, new Dictionary<string, string?> { ["CEPH_CONF"] = ConfFile });

    /// <summary>As <see cref="Exec"/>, and fails with the command and its output unless it exits 0.</summary>
    public string ExecOk(string file, params string[] args)
    {
        var (code, output) = Exec(file, args);
        if (code != 0) throw new InvalidOperationException($"{file} {string.Join(' ', args)} failed ({code}): {output}");
        return output;
    }

    /// <summary>A name no other test uses: the prefix, a dash and 12 random hex digits.</summary>
    public static string UniqueName(string prefix) => $"{prefix}-{Guid.NewGuid():N}"[..(prefix.Length + 13)];

    /// <summary>Stops the daemons and removes the directory.</summary>
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

    /// <summary>
    /// Runs a command to completion (3 minutes at most, then its process tree is killed) with the caller's
    /// CEPH_ARGS removed, so that a developer's own settings never reach this cluster's tools.
    /// </summary>
    private static (int Code, string Output) Run(string file, string[] args, IReadOnlyDictionary<string, string?>? env = null)
    {
        var environment = new Dictionary<string, string?>(env ?? new Dictionary<string, string?>()) { ["CEPH_ARGS"] = null };
        var info = ProcessRunner.StartInfo(file, args, environment);
        info.RedirectStandardInput = true;
        using var process = ProcessRunner.Start(info);
        process.StandardInput.Close();
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromMinutes(3)))
        {
            ProcessRunner.KillTree(process);
            throw new TimeoutException($"{ProcessRunner.FormatCommandLine(info)} did not finish in 3 minutes");
        }
        return (process.ExitCode, stdout.Result + stderr.Result);
    }

    private static (int Code, string Output) Run(string file, params string[] args) => Run(file, args, null);
}
