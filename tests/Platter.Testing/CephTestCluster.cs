using System.Diagnostics;

namespace Platter.Testing;

/// <summary>
/// A real one-host Ceph cluster (scripts/ceph-cluster.sh: one monitor, three bluestore OSDs, pool "rbd" of size 3 /
/// min_size 2) in a private temp directory, started by the constructor and stopped by <see cref="Dispose"/>: a test
/// fixture for every test that needs RBD (the RBD backend's tests derive their fixture from it; the guest test on an
/// RBD volume uses it as it is). Tests make images with unique names (<see cref="UniqueName"/>), so they never see
/// each other's. Needs no Ceph binding: everything goes through the script and the <c>ceph</c>/<c>rbd</c> CLIs.
/// </summary>
public class CephTestCluster : IDisposable
{
    public CephTestCluster()
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

    /// <summary>The cluster's directory: ceph.conf, keyring, daemon data and logs.</summary>
    public string Directory { get; }

    /// <summary>scripts/ceph-cluster.sh (also kill-osd / start-osd for node-loss tests).</summary>
    public string Script { get; }

    /// <summary>The cluster's ceph.conf (its keyring is named in it).</summary>
    public string ConfFile { get; }

    /// <summary>The replicated pool the script creates.</summary>
    public string Pool => "rbd";

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
