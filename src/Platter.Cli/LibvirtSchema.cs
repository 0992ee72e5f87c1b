using System.ComponentModel;
using System.Diagnostics;

namespace Platter.Cli;

/// <summary>
/// Asks the installed libvirt's own schema (through <c>virt-xml-validate</c>) what it accepts. libvirt added
/// <c>&lt;reconnect delay='N'/&gt;</c> for NBD disk sources after 9.0 (Debian 12's release); an XML element the
/// schema does not know makes <c>virsh define</c> refuse the whole domain, so it is printed only when accepted.
/// </summary>
internal static class LibvirtSchema
{
    // virt-xml-validate runs xmllint on a small document: well under a second; past this something is wrong.
    private static readonly TimeSpan ValidateTimeout = TimeSpan.FromSeconds(10);

    /// <summary>A domain around one NBD disk with a reconnect element: valid only where libvirt supports NBD reconnect.</summary>
    internal const string ProbeDomain = """
        <domain type='qemu'>
          <name>platter-schema-probe</name>
          <memory unit='MiB'>64</memory>
          <os><type arch='x86_64'>hvm</type></os>
          <devices>
            <disk type='network' device='disk'>
              <driver name='qemu' type='raw'/>
              <source protocol='nbd' name='probe'>
                <host name='127.0.0.1' port='10809'/>
                <reconnect delay='10'/>
              </source>
              <target dev='vdb' bus='virtio'/>
            </disk>
          </devices>
        </domain>
        """;

    /// <summary>True or false as the installed schema says; null when virt-xml-validate is not installed or did not answer.</summary>
    public static async Task<bool?> AcceptsNbdReconnectAsync(CancellationToken cancellationToken)
    {
        var file = Path.Combine(Path.GetTempPath(), $"platter-libvirt-probe-{Environment.ProcessId}-{Guid.NewGuid():N}.xml");
        try
        {
            await File.WriteAllTextAsync(file, ProbeDomain, cancellationToken);
            var psi = new ProcessStartInfo("virt-xml-validate") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            psi.ArgumentList.Add(file);
            psi.ArgumentList.Add("domain");
            using var process = Process.Start(psi);
            if (process is null) return null;
            var drainOut = process.StandardOutput.ReadToEndAsync(cancellationToken);
            var drainErr = process.StandardError.ReadToEndAsync(cancellationToken);
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            timeout.CancelAfter(ValidateTimeout);
            try
            {
                await process.WaitForExitAsync(timeout.Token);
            }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
            {
                process.Kill();
                return null;
            }
            await Task.WhenAll(drainOut, drainErr);
            // 0: valid. Anything else: the schema refused the reconnect element (or could not be read at all).
            return process.ExitCode == 0;
        }
        catch (Win32Exception)
        {
            return null;
        }
        finally
        {
            try { File.Delete(file); } catch (IOException) { }
        }
    }
}
