using Platter.Nbd;

namespace Platter.Server;

// Compiled only while Platter.Nbd has no NbdServer yet (see Platter.Server.csproj); removed once it lands.
public sealed partial class PlatterHost
{
    private Task StartNbdAsync(INbdExportProvider exports, CancellationToken cancellationToken)
    {
        if (_options.NbdTcpEndPoint is null && _options.NbdSocketPath is null) return Task.CompletedTask;
        throw new NotSupportedException("this build has no NBD server yet (Platter.Nbd.NbdServer has not landed); use --listen none --socket none");
    }

    private Task StopNbdAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
