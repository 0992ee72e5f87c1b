using System.Diagnostics;

namespace Platter.Testing;

/// <summary>
/// A pool on a real one-host Ceph cluster (scripts/ceph-cluster.sh: one monitor, three bluestore OSDs, pools of size 3 /
/// min_size 2): a test fixture for every test that needs RBD (the RBD backend's tests derive their fixture from it; the
/// guest test on an RBD volume uses it as it is). Needs no Ceph binding: everything goes through the script and the
/// <c>ceph</c>/<c>rbd</c> CLIs.
/// </summary>
/// <remarks>
/// <para>Which cluster: when <see cref="SharedDirectoryVariable"/> names a running cluster (scripts/test.sh starts one
/// for the whole run and stops it at the end), every fixture of every test project attaches to it, creates a pool of
/// its own (so a list, a usage report or a store check sees only its own tests' images) and deletes that pool again
/// when disposed; starting a cluster costs seconds and every idle one takes CPU from the tests on a 2-core machine.
/// Otherwise (one test project run by hand) the fixture starts a cluster of its own and stops it when disposed.</para>
/// <para>Tests that kill OSDs (<see cref="KillOsd"/>) would stall every other test on a shared cluster: they use a
/// fixture made with <c>isolated: true</c>, which always starts a cluster of its own.</para>
/// <para>Tests make images with unique names (<see cref="UniqueName"/>), so tests sharing a fixture never see each
/// other's.</para>
/// </remarks>
public class CephTestCluster : IDisposable
{
    /// <summary>
    /// The environment variable naming the directory of a running cluster (from <c>scripts/ceph-cluster.sh start
    /// DIR</c>) that fixtures attach to instead of starting their own.
    /// </summary>
    public const string SharedDirectoryVariable = "PLATTER_TEST_CEPH_DIR";

    // Pool creation waits until the pool takes a write: its placement groups must be created and peered first.
    private static readonly TimeSpan PoolReadyTimeout = TimeSpan.FromSeconds(120);

    /// <summary>A pool on the run's shared cluster when there is one, else on a cluster of this fixture's own.</summary>
    public CephTestCluster() : this(isolated: false)
    {
    }

    /// <param name="isolated">Always start a cluster of this fixture's own (tests that kill OSDs).</param>
    protected CephTestCluster(bool isolated)
    {
        Script = Repository.PathOf(Path.Combine("scripts", "ceph-cluster.sh"));
        string? shared = isolated ? null : Environment.GetEnvironmentVariable(SharedDirectoryVariable);
        if (!string.IsNullOrEmpty(shared))
        {
            Directory = Path.GetFullPath(shared);
            ConfFile = Path.Combine(Directory, "ceph.conf");
            if (!File.Exists(ConfFile))
                throw new InvalidOperationException($"{SharedDirectoryVariable}={shared} holds no ceph.conf: start the cluster with scripts/ceph-cluster.sh start DIR");
            OwnsCluster = false;
            Pool = UniqueName("t");
            CreatePool(Pool);
            return;
        }

        // Two tries, each in a directory (and so a block of ports) of its own: the script picks ports no socket listens
        // on, but a test server's ephemeral port can take one of them before the monitor binds it (a CI run saw the
        // monitor fail to start once while every other project ran).
        for (int attempt = 1; ; attempt++)
        {
            Directory = System.IO.Directory.CreateTempSubdirectory("platter-ceph-").FullName;
            var (code, output) = Run(Script, "start", Directory);
            if (code == 0) break;
            string logs = LogTails(Directory);
            Run(Script, "stop", Directory);
            try { System.IO.Directory.Delete(Directory, recursive: true); } catch (IOException) { }
            if (attempt == 2) throw new InvalidOperationException($"ceph-cluster.sh start failed ({code}) twice: {output}\n{logs}");
        }
        ConfFile = Path.Combine(Directory, "ceph.conf");
        OwnsCluster = true;
        Pool = "rbd"; // the pool the script creates
        StartReaper();
    }

    // The ends of the daemons' logs, for a start that failed.
    private static string LogTails(string directory)
    {
        var lines = new System.Text.StringBuilder();
        string logDir = Path.Combine(directory, "log");
        if (!System.IO.Directory.Exists(logDir)) return "";
        foreach (var file in System.IO.Directory.EnumerateFiles(logDir).Order(StringComparer.Ordinal))
        {
            var tail = File.ReadLines(file).TakeLast(5).ToList();
            if (tail.Count == 0) continue;
            lines.AppendLine($"--- {Path.GetFileName(file)} (last lines)");
            foreach (var line in tail) lines.AppendLine(line);
        }
        return lines.ToString();
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

    /// <summary>The cluster's directory: ceph.conf, keyring, daemon data and logs.</summary>
    public string Directory { get; }

    /// <summary>scripts/ceph-cluster.sh.</summary>
    public string Script { get; }

    /// <summary>The cluster's ceph.conf (its keyring is named in it).</summary>
    public string ConfFile { get; }

    /// <summary>The replicated pool (size 3, min_size 2) this fixture's tests keep their images in.</summary>
    public string Pool { get; }

    /// <summary>True when this fixture started the cluster (and stops it); false when it attached to the run's shared one.</summary>
    public bool OwnsCluster { get; }

    /// <summary>SIGKILLs OSD <paramref name="id"/> (0-2) and waits until it is gone: only on a cluster of this fixture's own.</summary>
    public void KillOsd(int id)
    {
        if (!OwnsCluster)
            throw new InvalidOperationException("killing an OSD of the run's shared cluster would stall every other test on it: use an isolated fixture");
        ExecOk(Script, "kill-osd", Directory, id.ToString(System.Globalization.CultureInfo.InvariantCulture));
    }

    /// <summary>Starts OSD <paramref name="id"/> again after <see cref="KillOsd"/> (it is up once the monitor says so).</summary>
    public void StartOsd(int id) =>
        ExecOk(Script, "start-osd", Directory, id.ToString(System.Globalization.CultureInfo.InvariantCulture));

    /// <summary>Runs a command with CEPH_CONF pointing at this cluster; returns exit code and stdout+stderr.</summary>
    public (int Code, string Output) Exec(string file, params string[] args) =>
        Run(file, args, new Dictionary<string, string> { ["CEPH_CONF"] = ConfFile });

    /// <summary><see cref="Exec"/>, failing on a non-zero exit with the command's output.</summary>
    public string ExecOk(string file, params string[] args)
    {
        var (code, output) = Exec(file, args);
        if (code != 0) throw new InvalidOperationException($"{file} {string.Join(' ', args)} failed ({code}): {output}");
        return output;
    }

    /// <summary>A name no other test uses: the prefix and 12 random hex digits.</summary>
    public static string UniqueName(string prefix) => $"{prefix}-{Guid.NewGuid():N}"[..(prefix.Length + 13)];

    /// <summary>
    /// <c>platter serve --store rbd:POOL</c> on this fixture's pool (not started yet): NBD and the management API on
    /// private unix sockets, no TCP. <paramref name="opTimeoutSeconds"/> is <c>--ceph-op-timeout</c>: how long a
    /// request waits for the OSDs before it fails (a fenced or cut-off server fails within the test's patience instead
    /// of librbd's default of never). With <paramref name="cacheSize"/> (e.g. "64M") the server runs with a node cache
    /// in <see cref="PlatterServer.CacheDirectory"/>, kept across restarts of this server like a node's SSD.
    /// </summary>
    public PlatterServer CreateServer(int opTimeoutSeconds = 60, string? cacheSize = null, string? workDirectory = null)
    {
        var server = new PlatterServer(workDirectory)
        {
            StoreDirectory = "rbd:" + Pool,
            ExtraArguments = ["--ceph-conf", ConfFile, "--ceph-op-timeout", opTimeoutSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture)],
            CacheSize = cacheSize,
        };
        server.Environment["CEPH_ARGS"] = null; // a developer's own Ceph options must not reach the server
        return server;
    }

    private void CreatePool(string pool)
    {
        ExecOk("ceph", "--connect-timeout", "20", "osd", "pool", "create", pool, "8", "8", "replicated");
        try
        {
            ExecOk("ceph", "--connect-timeout", "20", "osd", "pool", "application", "enable", pool, "rbd");
            // Usable once a write to it completes (the script's own test for its pool).
            var deadline = Stopwatch.StartNew();
            while (true)
            {
                var (code, output) = Exec("timeout", "20", "rados", "-p", pool, "--rados-osd-op-timeout", "10", "put", "platter-pool-ready", "/etc/hostname");
                if (code == 0) break;
                if (deadline.Elapsed > PoolReadyTimeout)
                    throw new InvalidOperationException($"pool {pool} took no write within {PoolReadyTimeout.TotalSeconds:0} s: {output}");
                Thread.Sleep(300);
            }
            Exec("rados", "-p", pool, "rm", "platter-pool-ready");
        }
        catch
        {
            DeletePool(pool);
            throw;
        }
    }

    private void DeletePool(string pool) =>
        Exec("ceph", "--connect-timeout", "20", "osd", "pool", "delete", pool, pool, "--yes-i-really-really-mean-it");

    public void Dispose()
    {
        if (!OwnsCluster)
        {
            DeletePool(Pool);
        }
        else
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
        GC.SuppressFinalize(this);
    }

    private static (int Code, string Output) Run(string file, string[] args, IDictionary<string, string>? env = null)
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
}
