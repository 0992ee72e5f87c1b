namespace Platter.Interop.Tests.Infrastructure;

/// <summary>One export a test can point real NBD clients at.</summary>
public sealed record NbdExport(string Name, string SocketPath, long SizeBytes)
{
    /// <summary>The NBD URI (nbd+unix:///NAME?socket=PATH) every libnbd and QEMU tool accepts.</summary>
    public string Uri => NbdUri(Name, SocketPath);

    public static string NbdUri(string name, string socketPath) =>
        $"nbd+unix:///{System.Uri.EscapeDataString(name)}?socket={socketPath}";
}
