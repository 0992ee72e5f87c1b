using System.Runtime.InteropServices;
using static Platter.Ceph.Native;

namespace Platter.Ceph;

/// <summary>Cluster-wide space, from the monitors (what <c>ceph df</c> shows as raw).</summary>
public readonly record struct RadosClusterUsage(ulong TotalBytes, ulong UsedBytes, ulong AvailableBytes, ulong Objects);

/// <summary>A pool's usage as the OSDs report it (stored bytes, before replication).</summary>
public readonly record struct RadosPoolUsage(ulong StoredBytes, ulong Objects, ulong ObjectCopies, ulong DegradedObjects);

/// <summary>
/// One RADOS connection (<c>rados_t</c>): a client instance with its own address. Blocklisting that address fences
/// exactly the images opened through this connection. Thread-safe, as librados is.
/// </summary>
public sealed unsafe class RadosCluster : IDisposable
{
    private readonly RadosHandle _handle;

    private RadosCluster(RadosHandle handle) => _handle = handle;

    /// <summary>
    /// Creates a connection as <c>client.<paramref name="id"/></c>, reads <paramref name="confFile"/> (null: librados's
    /// own search, which honours $CEPH_CONF), applies <paramref name="settings"/> (ceph option name -> value) and
    /// connects. Fails with ETIMEDOUT after <c>client_mount_timeout</c> when no monitor answers.
    /// </summary>
    public static RadosCluster Connect(string? confFile, string id, IEnumerable<KeyValuePair<string, string>>? settings = null)
    {
        Check(rados_create2(out nint raw, "ceph", id.StartsWith("client.", StringComparison.Ordinal) ? id : "client." + id, 0),
            "rados_create2");
        var handle = new RadosHandle();
        handle.Set(raw);
        try
        {
            Check(rados_conf_read_file(handle, confFile), $"reading Ceph configuration {confFile ?? "(default search)"}");
            foreach (var (key, value) in settings ?? [])
            {
                Check(rados_conf_set(handle, key, value), $"setting Ceph option {key}={value}");
            }
            Check(rados_connect(handle), "connecting to the Ceph monitors");
            return new RadosCluster(handle);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    internal RadosHandle Handle => _handle;

    /// <summary>This connection's global id (the N in client.N).</summary>
    public ulong InstanceId => rados_get_instance_id(_handle);

    /// <summary>This connection's address as the OSD map and the blocklist name it (e.g. <c>127.0.0.1:0/1234567</c>).</summary>
    public string Address
    {
        get
        {
            Check(rados_getaddrs(_handle, out nint addrs), "rados_getaddrs");
            try
            {
                return Marshal.PtrToStringUTF8(addrs) ?? "";
            }
            finally
            {
                rados_buffer_free(addrs);
            }
        }
    }

    /// <summary>The cluster's fsid.</summary>
    public string Fsid
    {
        get
        {
            byte* buffer = stackalloc byte[64];
            int length = Check(rados_cluster_fsid(_handle, buffer, 64), "rados_cluster_fsid");
            return Marshal.PtrToStringUTF8((nint)buffer, length).TrimEnd('\0');
        }
    }

    /// <summary>A configuration value as librados resolved it.</summary>
    public string GetOption(string name)
    {
        byte* buffer = stackalloc byte[512];
        Check(rados_conf_get(_handle, name, buffer, 512), $"reading Ceph option {name}");
        return Utf8(buffer);
    }

    /// <summary>Adds a client address to the OSD map's blocklist (0 seconds: the monitors' default, one hour).</summary>
    public void BlocklistAdd(string clientAddress, uint expireSeconds) =>
        Check(rados_blocklist_add(_handle, clientAddress, expireSeconds), $"blocklisting {clientAddress}");

    /// <summary>Waits until this client has the newest OSD map (so a blocklist entry just added is in force).</summary>
    public void WaitForLatestOsdMap() => Check(rados_wait_for_latest_osdmap(_handle), "rados_wait_for_latest_osdmap");

    public RadosClusterUsage GetUsage()
    {
        RadosClusterStat stat;
        Check(rados_cluster_stat(_handle, &stat), "rados_cluster_stat");
        return new RadosClusterUsage(stat.kb * 1024, stat.kb_used * 1024, stat.kb_avail * 1024, stat.num_objects);
    }

    /// <summary>Opens a pool; ENOENT when it does not exist.</summary>
    public RadosIoContext OpenPool(string pool)
    {
        Check(rados_ioctx_create(_handle, pool, out nint raw), $"opening pool {pool}");
        var handle = new IoContextHandle();
        handle.Set(raw, _handle);
        return new RadosIoContext(handle, pool, this);
    }

    /// <summary>Shuts the connection down once every pool and image opened through it is closed.</summary>
    public void Dispose() => _handle.Dispose();
}

/// <summary>A pool opened on one connection (<c>rados_ioctx_t</c>).</summary>
public sealed unsafe class RadosIoContext : IDisposable
{
    internal RadosIoContext(IoContextHandle handle, string pool, RadosCluster cluster)
    {
        Handle = handle;
        Pool = pool;
        Cluster = cluster;
    }

    internal IoContextHandle Handle { get; }

    public string Pool { get; }

    public RadosCluster Cluster { get; }

    public RadosPoolUsage GetUsage()
    {
        RadosPoolStat stat;
        Check(rados_ioctx_pool_stat(Handle, &stat), $"stat of pool {Pool}");
        return new RadosPoolUsage(stat.num_bytes, stat.num_objects, stat.num_object_copies, stat.num_objects_degraded);
    }

    public void Dispose() => Handle.Dispose();
}
