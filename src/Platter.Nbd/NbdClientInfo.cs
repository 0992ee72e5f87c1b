namespace Platter.Nbd;

/// <summary>
/// One client in the transmission phase, as <see cref="NbdServer.GetClients"/> reports it: what
/// <c>platter volume status</c> shows, like <c>rbd status</c> lists watchers.
/// </summary>
/// <param name="Peer">Who: <c>ADDR:PORT</c> on TCP, <c>unix pid PID uid UID</c> on a unix socket.</param>
/// <param name="ExportName">The export name the client asked for.</param>
/// <param name="Export">The open export (the host maps it back to its volume, which may have been renamed since).</param>
/// <param name="ConnectedUtc">When the connection was accepted.</param>
/// <param name="ReadOnly">The client may not write (a read-only export or server).</param>
/// <param name="Tls">The connection runs over TLS.</param>
public sealed record NbdClientInfo(string Peer, string ExportName, INbdExport Export, DateTimeOffset ConnectedUtc, bool ReadOnly, bool Tls);
