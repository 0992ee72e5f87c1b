using Microsoft.Extensions.Logging;
using Platter.VhostUser;

namespace Platter.Server;

public sealed partial class PlatterHost
{
    // Who uses each volume, through NBD or vhost-user (one writer per volume across both).
    private readonly VolumeUsers _users = new();
    private VhostUserBlkServer? _vhostUser;

    /// <summary>The vhost-user-blk server, or null when it is off.</summary>
    public VhostUserBlkServer? VhostUser => _vhostUser;

    private void StartVhostUser(bool readOnly)
    {
        if (_options.VhostUserDirectory is null) return;
        _vhostUser = new VhostUserBlkServer(Store, new VhostUserBlkOptions
        {
            Directory = _options.VhostUserDirectory,
            ReadOnly = readOnly,
            AddUser = frontEnd => _users.Add(frontEnd.Volume, VolumeUsers.VhostUser, frontEnd.ReadOnly, frontEnd.Peer),
        }, _loggerFactory.CreateLogger("Platter.VhostUser"));
        _vhostUser.Start();
        _log.LogInformation("vhost-user-blk sockets in {Directory}{ReadOnly}", _vhostUser.Directory, readOnly ? " (read-only)" : "");
    }

    private async Task StopVhostUserAsync()
    {
        if (_vhostUser is null) return;
        var server = _vhostUser;
        _vhostUser = null;
        await server.DisposeAsync().ConfigureAwait(false);
    }
}
