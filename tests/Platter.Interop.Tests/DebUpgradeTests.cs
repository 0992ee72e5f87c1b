namespace Platter.Interop.Tests;

/// <summary>
/// Upgrading in place. The .deb from scripts/build-deb.sh is installed with the real dpkg into a private root (its
/// own admin directory: nothing of the host's packages, binaries or services is touched), its binary serves a store in
/// that root, and a newer .deb is installed over it with <c>dpkg -i</c> while it serves. Then the server is restarted
/// as the new postinst asks systemd to (<c>systemctl try-restart platter.service</c>: SIGTERM, then the unit's
/// ExecStart again), and must run the newly installed file, with the volume and its data intact.
///
/// What is real and what is not. dpkg, the package, its maintainer scripts and the binary swap are real: dpkg replaces
/// /usr/bin/platter with a new file while the old server keeps running the old one. systemd is not: CI's machine may
/// not run it as PID 1 (the machine this was written on does not), and a test must not install into the host's root
/// or drive the host's services. So the test is the service manager, and the maintainer scripts' calls into systemd
/// are checked by running the installed scripts as a live system runs them — in a private mount namespace where
/// /run/systemd/system exists, with a stand-in <c>systemctl</c> that records its arguments. The socket-activated
/// restart itself (clients wait in the accept queue) is SocketActivationTests'; a guest across restarts is the guest
/// test's. The "newer build" is the same compiled binary packaged under a newer version (a second Native AOT publish
/// would cost CI minutes); that the restarted server runs the newly installed file is checked by its inode.
/// </summary>
public sealed class DebUpgradeTests(ITestOutputHelper output) : IDisposable
{
    private static readonly TimeSpan BuildTimeout = TimeSpan.FromMinutes(40);
    private readonly TempDirectory _dir = new("plt-upg");

    [Fact]
    public async Task A_newer_deb_installed_over_a_serving_one_restarts_on_the_new_binary_with_the_store_intact()
    {
        string binary = PlatterServer.AotBinary ?? await PublishAsync();
        string oldDeb = await BuildDebAsync(binary, "old", version: null);
        string oldVersion = (await ProcessRunner.RunAsync("dpkg-deb", ["-f", oldDeb, "Version"])).EnsureSuccess("dpkg-deb -f").Stdout.Trim();
        string newVersion = oldVersion + "+upgrade1";
        string newDeb = await BuildDebAsync(binary, "new", newVersion);
        (await ProcessRunner.RunAsync("dpkg", ["--compare-versions", newVersion, "gt", oldVersion])).EnsureSuccess($"dpkg sees {newVersion} as newer than {oldVersion}");

        string root = _dir.Combine("root");
        foreach (var d in new[] { "var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers" }) Directory.CreateDirectory(Path.Combine(root, d));
        foreach (var f in new[] { "var/lib/dpkg/status", "var/lib/dpkg/available" }) File.WriteAllText(Path.Combine(root, f), "");
        await DpkgAsync(root, "-i", oldDeb);
        Assert.Equal(oldVersion, await InstalledVersionAsync(root));
        foreach (var script in new[] { "postinst", "prerm", "postrm" }) Assert.True(File.Exists(Path.Combine(root, "var/lib/dpkg/info", $"platter.{script}")), $"the package has no {script}");

        // The service as the unit runs it: the installed binary, the packaged config file, the store in /var/lib/platter.
        string platter = Path.Combine(root, "usr/bin/platter");
        await using var server = new PlatterServer(_dir.Combine("run"))
        {
            Binary = platter,
            StoreDirectory = Path.Combine(root, "var/lib/platter"),
            ExtraArguments = ["--config", Path.Combine(root, "etc/platter/platter.conf")],
        };
        await server.StartAsync();
        var export = await server.CreateExportAsync("vm1", 64L << 20);
        (await ProcessRunner.RunAsync(Tools.QemuIo, ["-f", "raw", "-c", "write -P 0x5a 0 4M", "-c", "write -P 0xa5 60M 1M", "-c", "flush", export.Uri]))
            .EnsureSuccess("qemu-io write through the installed server");
        int oldPid = server.ProcessId;
        long oldInode = Inode(platter);

        // The upgrade, while the old version serves.
        await DpkgAsync(root, "-i", newDeb);
        Assert.Equal(newVersion, await InstalledVersionAsync(root));
        long newInode = Inode(platter);
        Assert.NotEqual(oldInode, newInode); // a new file, renamed over the old one: never rewritten under a running server
        Assert.Equal($"{platter} (deleted)", new FileInfo($"/proc/{oldPid}/exe").LinkTarget); // the old server runs on
        Assert.True(server.IsRunning, "the server stopped during dpkg -i:\n" + server.Log);

        // The maintainer scripts, as a system running systemd runs them for this upgrade: the old prerm leaves the
        // service alone, the new postinst makes systemd reread the units and restart a running service.
        Assert.Empty(await RunScriptAsync(root, "prerm", "upgrade", newVersion));
        Assert.Equal(new[] { "--system daemon-reload", "try-restart platter.service" }, await RunScriptAsync(root, "postinst", "configure", oldVersion));
        // A first install starts nothing; a removal stops the service and its sockets.
        Assert.Equal(new[] { "--system daemon-reload" }, await RunScriptAsync(root, "postinst", "configure", ""));
        Assert.Equal(new[] { "stop platter.service platter-nbd.socket platter-api.socket" }, await RunScriptAsync(root, "prerm", "remove"));

        // try-restart: SIGTERM (a clean stop), then ExecStart's /usr/bin/platter again.
        Assert.Equal(0, await server.StopAsync());
        await server.StartAsync();
        Assert.Equal(platter, new FileInfo($"/proc/{server.ProcessId}/exe").LinkTarget);
        Assert.Equal(newInode, Inode($"/proc/{server.ProcessId}/exe", followLink: true));
        Assert.Contains("\"vm1\"", (await server.CliAsync("volume", "list", "--json")).EnsureSuccess("volume list after the upgrade").Stdout);
        var read = (await ProcessRunner.RunAsync(Tools.QemuIo, ["-f", "raw", "-r", "-c", "read -P 0x5a 0 4M", "-c", "read -P 0xa5 60M 1M", "-c", "read -P 0 4M 56M", export.Uri]))
            .EnsureSuccess("qemu-io read after the upgrade");
        Assert.DoesNotContain("verification failed", read.Stdout + read.Stderr);
        Assert.Equal(0, await server.StopAsync());
        output.WriteLine(server.Log);

        // A purge removes the package, never the store: it holds the VMs' disks.
        await DpkgAsync(root, "--purge", "platter");
        Assert.False(File.Exists(platter), "the purge left /usr/bin/platter");
        Assert.True(VolumeStoreExists(Path.Combine(root, "var/lib/platter")), "the purge removed the store");
    }

    private static bool VolumeStoreExists(string directory) => Platter.Storage.VolumeStore.Exists(directory);

    private async Task<string> PublishAsync()
    {
        var result = (await ProcessRunner.RunAsync("bash", [Path.Combine(Repository.Root, "scripts", "build-deb.sh"), "--publish-only", _dir.Combine("aot")], BuildTimeout))
            .EnsureSuccess("build-deb.sh --publish-only");
        return result.Stdout.Trim().Split('\n')[^1];
    }

    private async Task<string> BuildDebAsync(string binary, string name, string? version)
    {
        // gzip: xz costs about 20 s of CPU per package, gzip 3.
        string[] args = [Path.Combine(Repository.Root, "scripts", "build-deb.sh"), "--out", _dir.Combine(name), "--binary", binary, "--compression", "gzip"];
        if (version is not null) args = [.. args, "--version", version];
        var build = (await ProcessRunner.RunAsync("bash", args, BuildTimeout)).EnsureSuccess("build-deb.sh");
        return build.Stdout.Trim().Split('\n')[^1];
    }

    // dpkg on the private root. Maintainer scripts run without a chroot (the root holds no shell), with DPKG_ROOT set,
    // so they leave the host's systemd alone; the root has no libc6 or liblmdb0 packages, hence --force-depends.
    private static async Task DpkgAsync(string root, params string[] args) =>
        (await ProcessRunner.RunAsync("dpkg", ["--root", root, "--force-script-chrootless", "--force-depends", "--log", Path.Combine(root, "dpkg.log"), .. args], TimeSpan.FromMinutes(5)))
            .EnsureSuccess($"dpkg {string.Join(' ', args)}");

    private static async Task<string> InstalledVersionAsync(string root) =>
        (await ProcessRunner.RunAsync("dpkg-query", ["--admindir", Path.Combine(root, "var/lib/dpkg"), "-W", "-f", "${Version}", "platter"])).EnsureSuccess("dpkg-query").Stdout.Trim();

    /// <summary>
    /// Runs an installed maintainer script as dpkg does on a live system (no DPKG_ROOT) in a private mount namespace
    /// whose /run holds systemd/system (what the scripts take as "systemd runs"), with a stand-in systemctl first on
    /// PATH; returns its calls. The host's /run is not touched (unshare's mounts are private).
    /// </summary>
    private async Task<string[]> RunScriptAsync(string root, string script, params string[] args)
    {
        string stubs = Directory.CreateDirectory(_dir.Combine("stubs")).FullName, calls = _dir.Combine("systemctl.calls");
        File.WriteAllText(Path.Combine(stubs, "systemctl"), $"#!/bin/sh\necho \"$*\" >> '{calls}'\n");
        (await ProcessRunner.RunAsync("chmod", ["0755", Path.Combine(stubs, "systemctl")])).EnsureSuccess("chmod");
        File.Delete(calls);
        string path = Path.Combine(root, "var/lib/dpkg/info", $"platter.{script}");
        var env = new Dictionary<string, string?>
        {
            ["PATH"] = stubs + ":" + Environment.GetEnvironmentVariable("PATH"),
            ["DPKG_ROOT"] = null,
        };
        (await ProcessRunner.RunAsync("unshare", ["--mount", "sh", "-c", "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/system && exec \"$0\" \"$@\"", path, .. args], environment: env))
            .EnsureSuccess($"{script} {string.Join(' ', args)}");
        return File.Exists(calls) ? File.ReadAllLines(calls) : [];
    }

    private static long Inode(string path, bool followLink = false)
    {
        var result = ProcessRunner.RunAsync("stat", [.. (followLink ? (string[])["-L"] : []), "-c", "%i", path]).GetAwaiter().GetResult().EnsureSuccess("stat");
        return long.Parse(result.Stdout.Trim(), System.Globalization.CultureInfo.InvariantCulture);
    }

    public void Dispose() => _dir.Dispose();
}
