using Microsoft.Extensions.Logging;

namespace Platter.Rbd;

/// <summary>How an <see cref="RbdBackend"/> reaches its cluster and pool.</summary>
public sealed class RbdBackendOptions
{
    /// <summary>The RADOS pool holding the volumes' images.</summary>
    public required string Pool { get; init; }

    /// <summary>ceph.conf to read; null: $CEPH_CONF, else /etc/ceph/ceph.conf (librados's own search).</summary>
    public string? ConfFile { get; init; }

    /// <summary>The cephx user, without or with its <c>client.</c> prefix; its keyring is found through the conf.</summary>
    public string Id { get; init; } = "admin";

    /// <summary>
    /// How long connecting may take before it fails with a clear error (<c>client_mount_timeout</c>): a server
    /// started while the monitors are unreachable says so instead of hanging. Ceph's own default is 300 s.
    /// </summary>
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// How long one data request may wait for the OSDs before it fails with an I/O error (<c>rados_osd_op_timeout</c>).
    /// While fewer than min_size copies of a placement group are up, its I/O waits (Ceph refuses to acknowledge a
    /// write it could lose); this bounds the wait a VM sees. <see cref="TimeSpan.Zero"/> waits without limit, like a
    /// local disk that never times out.
    /// </summary>
    public TimeSpan OperationTimeout { get; init; } = TimeSpan.FromMinutes(5);

    /// <summary>
    /// Lets librbd write from the caller's buffers instead of copying each one first (<c>rbd_disable_zero_copy_writes
    /// = false</c>): the copy was about 9% of the server's CPU on 1 MiB writes. Only for callers that never change a
    /// buffer while its write is in flight. NBD's request buffers qualify (each is the request's own until its reply);
    /// vhost-user's do not (they are guest memory, which a guest may rewrite during the write, and Ceph's messenger
    /// then sees data that no longer matches its checksum). librbd fires the completion only once it holds no
    /// reference to the buffer, so a buffer is free again when its write completes either way. Off by default, and
    /// `platter serve` leaves it off: with it on, the writes of a server that was fenced (blocklisted) while it hung
    /// never complete, where with the copy they fail at once (Rbd ServerTests, the zombie test), so a zombie would
    /// hold its clients forever instead of answering them with an error.
    /// </summary>
    public bool ZeroCopyWrites { get; init; }

    /// <summary>Extra Ceph options (name -> value) applied to every connection after the defaults (tests, tuning).</summary>
    public IReadOnlyDictionary<string, string>? CephOptions { get; init; }

    public ILoggerFactory? LoggerFactory { get; init; }
}
