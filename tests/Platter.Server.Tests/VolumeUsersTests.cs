using System.Net.Sockets;
using Platter.Server.Api;
using Platter.Storage;
using Xunit;
using C = Platter.Testing.NbdTestClient;

namespace Platter.Server.Tests;

/// <summary>
/// The one registry of who uses a volume (<see cref="VolumeUsers"/>): NBD connections and vhost-user front-ends alike are
/// listed by volume status, hold off delete and rollback unless forced, and keep one writing front door per volume.
/// </summary>
public sealed class VolumeUsersTests : IDisposable
{
    private readonly TempDirectory _dir = new("platter-users");
    private readonly VolumeStore _store;

    public VolumeUsersTests()
    {
        _store = VolumeStore.Open(_dir.Combine("store"));
        _store.CreateVolume("v", 1 << 20);
        _store.CreateVolume("w", 1 << 20);
        _store.CreateSnapshot("v", "s");
    }

    public void Dispose()
    {
        _store.Dispose();
        _dir.Dispose();
    }

    private IVolumeHandle Open(string name) =>
        VolumeNames.TrySplitSnapshotName(name, out var volume, out var snapshot)
            ? ((IVolumeBackend)_store).OpenSnapshotHandle(volume, snapshot)
            : ((IVolumeBackend)_store).OpenVolumeHandle(name);

    [Fact]
    public void Nbd_writers_share_a_volume_and_a_vhost_user_writer_is_refused_while_they_write()
    {
        var users = new VolumeUsers();
        using var h1 = Open("v");
        using var h2 = Open("v");
        using var h3 = Open("v");
        using var a = users.Add(h1, VolumeUsers.Nbd, readOnly: false);
        using var b = users.Add(h2, VolumeUsers.Nbd, readOnly: false);
        var refused = Assert.Throws<StorageException>(() => users.Add(h3, VolumeUsers.VhostUser, readOnly: false));
        Assert.Equal(StorageError.InUse, refused.Error);
        Assert.Contains("being written over NBD (2 connection(s))", refused.Message);
        Assert.Equal(VolumeUsers.Nbd, users.WriterOf("v"));

        // Once both NBD users are gone, vhost-user may write; disposing twice changes nothing.
        a.Dispose();
        a.Dispose();
        Assert.Throws<StorageException>(() => users.Add(h3, VolumeUsers.VhostUser, readOnly: false));
        b.Dispose();
        Assert.Null(users.WriterOf("v"));
        using var vu = users.Add(h3, VolumeUsers.VhostUser, readOnly: false, peer: "vhost-user pid 1 uid 0");
        Assert.Equal(VolumeUsers.VhostUser, users.WriterOf("v"));
    }

    [Fact]
    public void A_vhost_user_writer_holds_the_volume_alone_but_readers_and_other_volumes_are_never_refused()
    {
        var users = new VolumeUsers();
        using var h1 = Open("v");
        using var h2 = Open("v");
        using var h3 = Open("v");
        using var w = Open("w");
        using var s = Open("v@s");
        using var vu = users.Add(h1, VolumeUsers.VhostUser, readOnly: false);
        Assert.Contains("being written over vhost-user", Assert.Throws<StorageException>(() => users.Add(h2, VolumeUsers.VhostUser, readOnly: false)).Message);
        Assert.Contains("being written over vhost-user", Assert.Throws<StorageException>(() => users.Add(h2, VolumeUsers.Nbd, readOnly: false)).Message);
        // A read-only NBD user of the volume (a --read-only server), a snapshot's reader, another volume's writer: fine.
        using var reader = users.Add(h3, VolumeUsers.Nbd, readOnly: true, peer: "unix pid 2 uid 0");
        using var snapshotReader = users.Add(s, VolumeUsers.VhostUser, readOnly: true);
        using var other = users.Add(w, VolumeUsers.Nbd, readOnly: false);
        Assert.Equal(3, users.UsersOf("v", snapshotsToo: true).Count);
        Assert.Equal(2, users.UsersOf("v", snapshotsToo: false).Count);
        Assert.Equal(["w"], users.UsersOf("w", snapshotsToo: true).Select(u => u.Name));
        Assert.Equal(4, users.All().Count);
    }

    [Fact]
    public void Users_are_found_under_the_volume_s_new_name_after_a_rename()
    {
        var users = new VolumeUsers();
        using var h = Open("v");
        using var reg = users.Add(h, VolumeUsers.VhostUser, readOnly: false);
        _store.RenameVolume("v", "v2");
        Assert.Empty(users.UsersOf("v", snapshotsToo: true));
        var u = Assert.Single(users.UsersOf("v2", snapshotsToo: true));
        Assert.Equal(("v2", VolumeUsers.VhostUser, false), (u.Name, u.Door, u.ReadOnly));
        // The writer check follows the name too: an NBD writer of the renamed volume is refused.
        using var h2 = Open("v2");
        Assert.Throws<StorageException>(() => users.Add(h2, VolumeUsers.Nbd, readOnly: false));
    }

    [Fact]
    public void A_registration_names_its_user_once_the_front_door_knows_who_it_is()
    {
        var users = new VolumeUsers();
        using var h = Open("v");
        using var reg = users.Add(h, VolumeUsers.Nbd, readOnly: false);
        Assert.Equal("", Assert.Single(users.All()).Peer);
        reg.Describe("127.0.0.1:4000", tls: true);
        var u = Assert.Single(users.All());
        Assert.Equal(("127.0.0.1:4000", true), (u.Peer, u.Tls));
    }

    [Fact]
    public async Task A_vm_on_the_vhost_user_socket_is_listed_by_status_and_holds_off_delete_and_rollback_unless_forced()
    {
        await using var server = await RunningHost.StartAsync(dir => new PlatterHostOptions
        {
            StoreDirectory = dir.Combine("store"),
            ApiSocketPath = dir.Combine("api.sock"),
            NbdSocketPath = dir.Combine("nbd.sock"),
            VhostUserDirectory = dir.Combine("vu"),
        });
        using var api = server.Client();
        await api.CreateVolumeAsync("vm1", 1 << 20);
        await api.CreateSnapshotAsync("vm1", "s1");
        server.Host.VhostUser!.Refresh();

        // The server registers a front-end as soon as it accepts it, before any vhost-user message.
        using var qemu = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await qemu.ConnectAsync(new UnixDomainSocketEndPoint(server.Host.VhostUser.SocketPath("vm1")));
        var status = await WaitForStatusAsync(api, "vm1", clients: 1);
        var client = Assert.Single(status.Clients);
        Assert.Equal(("vhost-user", "vm1", false), (client.Door, client.Export, client.ReadOnly));
        Assert.StartsWith($"vhost-user pid {Environment.ProcessId} uid ", client.Peer);

        var delete = await Assert.ThrowsAsync<PlatterApiException>(() => api.DeleteVolumeAsync("vm1", recursive: true));
        Assert.Equal((409, "clients_connected"), (delete.StatusCode, delete.Code));
        Assert.Contains("1 connected vhost-user client", delete.Message);
        var rollback = await Assert.ThrowsAsync<PlatterApiException>(() => api.RollbackAsync("vm1", "s1"));
        Assert.Equal((409, "clients_connected"), (rollback.StatusCode, rollback.Code));

        // NBD may not open it for writing meanwhile, and says why.
        await using (var nbd = await C.ConnectUnixAsync(server.Directory.Combine("nbd.sock")))
        {
            Assert.NotEqual(C.RepAck, await nbd.InfoOrGoAsync(C.OptGo, "vm1"));
        }

        // Forced, the rollback goes ahead with the VM still connected.
        await api.RollbackAsync("vm1", "s1", recursive: false, force: true);
        qemu.Close();
        await WaitForStatusAsync(api, "vm1", clients: 0);
        await api.DeleteVolumeAsync("vm1", recursive: true);
    }

    // The accept loop and the connection's end run on their own threads: wait (bounded) for the registry to show it.
    private static async Task<VolumeStatusDto> WaitForStatusAsync(PlatterApiClient api, string volume, int clients)
    {
        var waited = System.Diagnostics.Stopwatch.StartNew();
        while (true)
        {
            var status = await api.GetVolumeStatusAsync(volume);
            if (status.Clients.Count == clients) return status;
            Assert.True(waited.Elapsed < TimeSpan.FromSeconds(30), $"volume status still lists {status.Clients.Count} clients, expected {clients}");
            await Task.Delay(20);
        }
    }
}
