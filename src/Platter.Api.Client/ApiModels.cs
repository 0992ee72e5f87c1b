using System.Text.Json;
using System.Text.Json.Serialization;
using Platter.Volumes;

namespace Platter.Server.Api;

/// <summary>A volume as the management API shows it.</summary>
/// <param name="Name">Name (and NBD export name).</param>
/// <param name="Id">Internal id, never reused.</param>
/// <param name="SizeBytes">Virtual size.</param>
/// <param name="AllocatedBytes">Bytes of data the volume maps; null when not counted: an RBD store counts them only when
/// asked (GET /v1/volumes/{name}?usage=true) and in the space report (GET /v1/space), since counting walks the image's
/// object map, so listing volumes stays O(1) per volume whatever its size.</param>
/// <param name="CreatedUtc">Creation time.</param>
/// <param name="Origin">For a clone, the snapshot it was cloned from as <c>volume@snapshot</c>; null otherwise.</param>
/// <param name="SnapshotCount">Number of snapshots of the volume.</param>
/// <param name="Backend">Which backend holds it: <c>embedded</c> or <c>rbd</c>.</param>
/// <param name="Store">Where: the store directory, or <c>rbd:POOL</c> (set with Backend).</param>
/// <param name="Cache">The volume's node cache (cluster stores; null on the embedded store and in lists).</param>
public sealed record VolumeDto(string Name, long Id, long SizeBytes, long? AllocatedBytes, DateTimeOffset CreatedUtc,
    string? Origin = null, int SnapshotCount = 0, string? Backend = null, string? Store = null, VolumeCacheDto? Cache = null)
{
    /// <summary>Converts the catalog's record; with <paramref name="store"/>, says which backend holds it
    /// (<c>embedded</c> or <c>rbd</c>) and where (<c>Store</c>: the directory, or <c>rbd:POOL</c>).</summary>
    public static VolumeDto From(VolumeInfo info, IVolumeBackend? store = null) =>
        new(info.Name, info.Id, info.SizeBytes, info.AllocatedBytes, info.CreatedUtc, info.Origin, info.SnapshotCount, store?.Kind, store?.Location);
}

/// <summary>A volume's node cache as the management API shows it (see docs/ARCHITECTURE.md, "Node cache").</summary>
/// <param name="Mode">The mode stored with the volume: <c>none</c>, <c>writethrough</c> or <c>writeback</c>.</param>
/// <param name="Active">The mode this server serves it with now, or null when it is not open here.</param>
/// <param name="Hits">Reads served from the local read cache.</param>
/// <param name="Misses">Reads of clean blocks that went to the backend.</param>
/// <param name="DirtyBytes">Bytes the local write-back log holds that the image lacks.</param>
/// <param name="LogUsedBytes">Bytes of the write-back log in use.</param>
/// <param name="LogCapacityBytes">Size of the write-back log: the bound on dirty data (writes wait beyond it).</param>
/// <param name="LagRecords">Write-back lag: records logged and not yet written back.</param>
/// <param name="Failure">Why write-back stopped, or null while it runs.</param>
/// <param name="DirtyMarker">Which server's write-back log may hold writes the image lacks (stored with the volume), or null.</param>
public sealed record VolumeCacheDto(string Mode, string? Active, long Hits, long Misses, long DirtyBytes, long LogUsedBytes,
    long LogCapacityBytes, long LagRecords, string? Failure, string? DirtyMarker)
{
    /// <summary>Hits over all reads of clean blocks, 0 without reads.</summary>
    public double HitRatio => Hits + Misses == 0 ? 0 : (double)Hits / (Hits + Misses);
}

/// <summary>POST /v1/volumes/{name}/cache.</summary>
public sealed record SetCacheRequest(string? Mode);

/// <summary>The answer to a release: the volume and how many dirty bytes were written back first.</summary>
public sealed record ReleaseDto(string Name, long WrittenBackBytes);
/// <summary>POST /v1/volumes/{name}/flatten: what the flatten did.</summary>
/// <param name="Name">The volume, now independent.</param>
/// <param name="Origin">The snapshot it no longer depends on (<c>volume@snapshot</c>): it can be deleted now.</param>
/// <param name="CopiedBytes">Data copied from the origin into the volume; null when the backend does not report it (RBD).</param>
/// <param name="Seconds">How long the flatten took on the server.</param>
/// <param name="Volume">The volume after the flatten.</param>
public sealed record FlattenDto(string Name, string Origin, long? CopiedBytes, double Seconds, VolumeDto Volume);

/// <summary>The answer to a takeover: the volume and who held it before (null when nobody did).</summary>
public sealed record TakeoverDto(string Name, string? PreviousHolder);

/// <summary>A snapshot as the management API shows it.</summary>
/// <param name="FullName"><c>volume@snapshot</c>: its NBD export name (read-only) and how the CLI names it.</param>
/// <param name="Volume">The volume it was taken of.</param>
/// <param name="Name">The snapshot's own name.</param>
/// <param name="Id">Internal id, never reused.</param>
/// <param name="SizeBytes">The volume's size when the snapshot was taken.</param>
/// <param name="AllocatedBytes">Bytes of data the snapshot maps (shared with the volume or not); null when not computed:
/// an RBD store counts them only for one snapshot (GET /v1/volumes/{name}/snapshots/{snapshot}) and in the space report
/// (GET /v1/space), since counting walks the snapshot's object map, so taking and listing snapshots stays O(1) in the
/// volume's size.</param>
/// <param name="CreatedUtc">When it was taken.</param>
/// <param name="Clones">Volumes cloned from it; while there are any it cannot be deleted.</param>
public sealed record SnapshotDto(string FullName, string Volume, string Name, long Id, long SizeBytes, long? AllocatedBytes,
    DateTimeOffset CreatedUtc, IReadOnlyList<string> Clones)
{
    /// <summary>Converts the catalog's record.</summary>
    public static SnapshotDto From(SnapshotInfo info) =>
        new(info.FullName, info.Volume, info.Name, info.Id, info.SizeBytes, info.AllocatedBytes, info.CreatedUtc, info.Clones);
}

/// <summary>GET /v1/snapshots and GET /v1/volumes/{name}/snapshots.</summary>
public sealed record SnapshotListDto(IReadOnlyList<SnapshotDto> Snapshots);

/// <summary>POST /v1/volumes/{name}/snapshots.</summary>
public sealed record CreateSnapshotRequest(string? Name);

/// <summary>POST /v1/volumes/{name}/snapshots/{snapshot}/clone.</summary>
public sealed record CloneSnapshotRequest(string? NewName);

/// <summary>A range whose content differs between the two points of a diff.</summary>
/// <param name="Offset">Byte offset.</param>
/// <param name="Length">Byte length.</param>
/// <param name="Allocated">True when the newer point has data there; false when it reads as zeros (trimmed).</param>
public sealed record ChangedExtentDto(long Offset, long Length, bool Allocated);

/// <summary>GET /v1/volumes/{name}/diff?from=SNAP[&amp;to=SNAP].</summary>
/// <param name="Volume">The volume.</param>
/// <param name="From">The older snapshot.</param>
/// <param name="To">The newer snapshot, or null for the volume's current content.</param>
/// <param name="ChangedBytes">Sum of the extents' lengths.</param>
/// <param name="Extents">Changed ranges in offset order, coalesced.</param>
public sealed record DiffDto(string Volume, string From, string? To, long ChangedBytes, IReadOnlyList<ChangedExtentDto> Extents);

/// <summary>Space one volume or snapshot holds.</summary>
/// <param name="Name"><c>volume</c> or <c>volume@snapshot</c>.</param>
/// <param name="IsSnapshot">True for a snapshot.</param>
/// <param name="AllocatedBytes">Bytes of data it maps.</param>
/// <param name="UniqueBytes">Bytes only it maps: what deleting it alone would free.</param>
/// <param name="SharedBytes">Bytes it maps that another volume or snapshot maps too.</param>
public sealed record SpaceUsageDto(string Name, bool IsSnapshot, long AllocatedBytes, long UniqueBytes, long SharedBytes)
{
    /// <summary>Converts the store's record.</summary>
    public static SpaceUsageDto From(SpaceUsage usage) =>
        new(usage.Name, usage.IsSnapshot, usage.AllocatedBytes, usage.UniqueBytes, usage.SharedBytes);
}

/// <summary>GET /v1/space: one entry per volume and per snapshot.</summary>
public sealed record SpaceUsageListDto(IReadOnlyList<SpaceUsageDto> Entries);

/// <summary>GET /v1/volumes.</summary>
public sealed record VolumeListDto(IReadOnlyList<VolumeDto> Volumes);

/// <summary>POST /v1/volumes.</summary>
public sealed record CreateVolumeRequest(string? Name, long? SizeBytes, string? Cache = null);

/// <summary>POST /v1/volumes/{name}/resize.</summary>
/// <param name="SizeBytes">The new size.</param>
/// <param name="AllowShrink">Must be true for a size below the current one (the data past it is discarded); else 409 shrink_refused.</param>
public sealed record ResizeVolumeRequest(long? SizeBytes, bool? AllowShrink = null);

/// <summary>A client using a volume or one of its snapshots: an NBD connection or a vhost-user front-end (a VM's QEMU).</summary>
/// <param name="Peer">Who: <c>ADDR:PORT</c> on TCP, <c>unix pid PID uid UID</c> on the NBD unix socket, <c>vhost-user pid PID uid UID</c> for QEMU on a vhost-user socket.</param>
/// <param name="Export">The export it uses: the volume's name, or <c>volume@snapshot</c> (current names).</param>
/// <param name="ConnectedUtc">Since when.</param>
/// <param name="ReadOnly">It cannot write (a snapshot, or a read-only server).</param>
/// <param name="Tls">The connection runs over TLS.</param>
/// <param name="Door">How it reaches the volume: <c>NBD</c> or <c>vhost-user</c>.</param>
public sealed record NbdClientDto(string Peer, string Export, DateTimeOffset ConnectedUtc, bool ReadOnly, bool Tls, string Door = "NBD");

/// <summary>GET /v1/volumes/{name}/status: who uses the volume now (like <c>rbd status</c>).</summary>
/// <param name="Name">The volume.</param>
/// <param name="Clients">NBD clients of the volume and of its snapshots, oldest connection first.</param>
public sealed record VolumeStatusDto(string Name, IReadOnlyList<NbdClientDto> Clients);

/// <summary>POST /v1/volumes/{name}/rename.</summary>
public sealed record RenameVolumeRequest(string? NewName);

/// <summary>GET /v1/usage (the fields of <see cref="StoreUsage"/>, with its capacity, overcommit and warnings).</summary>
public sealed record UsageDto(long DataFileBytes, long UsedBytes, long FreeBytes, int VolumeCount, long ProvisionedBytes,
    long FileSystemBytes = 0, long FileSystemAvailableBytes = 0, long MetadataReserveBytes = 0, long CapacityBytes = 0, double Overcommit = 0,
    IReadOnlyList<string>? Warnings = null)
{
    /// <summary>Converts the store's record.</summary>
    public static UsageDto From(StoreUsage usage) =>
        new(usage.DataFileBytes, usage.UsedBytes, usage.FreeBytes, usage.VolumeCount, usage.ProvisionedBytes,
            usage.FileSystemBytes, usage.FileSystemAvailableBytes, usage.MetadataReserveBytes, usage.CapacityBytes, usage.Overcommit, usage.Warnings);
}

/// <summary>GET /v1/health: the server is up, and where its NBD endpoints are (for `platter attach`).</summary>
/// <param name="Status">"ok", or "failed" when the store has failed (see <paramref name="StoreFailure"/>).</param>
/// <param name="Version">Server version.</param>
/// <param name="StoreDirectory">The store it serves.</param>
/// <param name="NbdSocket">NBD unix socket, or null when disabled.</param>
/// <param name="NbdTcp">NBD TCP address as HOST:PORT, or null when disabled.</param>
/// <param name="Tls">NBD offers TLS.</param>
/// <param name="TlsRequired">NBD refuses everything but STARTTLS before TLS.</param>
/// <param name="NbdReadOnly">Every NBD export is read-only (<c>platter serve --read-only</c>); false from servers that predate it.</param>
/// <param name="StoreFailure">
/// Why the store failed, or null while it works. A failed store (a failed sync or metadata commit, or a broken engine
/// invariant: fail-stop) answers every write, flush and catalog change with an error until the server is restarted;
/// reads of what was durable still work.
/// </param>
/// <param name="VhostUserDirectory">
/// Where the vhost-user-blk sockets are (<c>platter serve --vhost-user-dir</c>: <c>DIR/NAME.sock</c> per volume), or null
/// when vhost-user is off (and from servers that predate it).
/// </param>
public sealed record HealthDto(string Status, string Version, string StoreDirectory, string? NbdSocket, string? NbdTcp, bool Tls, bool TlsRequired,
    bool NbdReadOnly = false, string? StoreFailure = null, string? VhostUserDirectory = null);

/// <summary>GET /v1/stats: live totals since the server started; rates come from two readings.</summary>
/// <param name="MetricsEnabled">False under <c>platter serve --no-metrics</c>: then no export counts its requests.</param>
/// <param name="TimeUtc">When these totals were read.</param>
/// <param name="NbdConnectionsTotal">NBD connections served since start.</param>
/// <param name="NbdHandshakesRefused">NBD clients turned away in the handshake (unknown export, TLS).</param>
/// <param name="Connections">NBD connections open now.</param>
/// <param name="Volumes">Totals per export that served a request since start.</param>
public sealed record StatsDto(bool MetricsEnabled, DateTimeOffset TimeUtc, long NbdConnectionsTotal, long NbdHandshakesRefused,
    IReadOnlyList<ConnectionDto> Connections, IReadOnlyList<VolumeStatsDto> Volumes);

/// <summary>An open NBD connection.</summary>
/// <param name="Peer">Client address, or <c>unix</c>.</param>
/// <param name="Export">The export it uses; null while still in the handshake.</param>
/// <param name="ConnectedUtc">When it connected.</param>
public sealed record ConnectionDto(string Peer, string? Export, DateTimeOffset ConnectedUtc);

/// <summary>I/O totals of one export (volume or <c>volume@snapshot</c>) since the server started.</summary>
public sealed record VolumeStatsDto(string Name, long Reads, long Writes, long Flushes, long ReadBytes, long WrittenBytes,
    double ReadSeconds, double WriteSeconds, long Errors, long ChecksumFailures);

/// <summary>Every error answer: a stable machine code and a sentence for people.</summary>
public sealed record ErrorDto(string Error, string Message);

/// <summary>POST /v1/scrub/start.</summary>
/// <param name="Targets">Volumes and <c>volume@snapshot</c> names to scrub; empty or null: the whole store.</param>
/// <param name="RateBytesPerSecond">I/O budget in bytes per second; null: the server's default (64 MB/s); 0: no limit.</param>
/// <param name="Restart">Start from the beginning even when a paused scrub of the same targets could resume.</param>
public sealed record ScrubStartRequest(IReadOnlyList<string>? Targets, long? RateBytesPerSecond = null, bool Restart = false);

/// <summary>GET /v1/scrub (and the answer to start and stop): progress and the bad blocks listed now.</summary>
/// <param name="State"><c>none</c>, <c>running</c>, <c>paused</c> or <c>finished</c>.</param>
/// <param name="Targets">What it reads; empty for the whole store.</param>
/// <param name="RateBytesPerSecond">The I/O budget; 0 = unlimited.</param>
/// <param name="BlocksTotal">4 KiB blocks to check (for named targets an upper bound).</param>
/// <param name="BlocksChecked">Blocks read and verified so far (each physical block once).</param>
/// <param name="BytesChecked">BlocksChecked in bytes.</param>
/// <param name="Percent">Done, 0 to 100.</param>
/// <param name="BadBlocksFound">Bad blocks this scrub found.</param>
/// <param name="CurrentBytesPerSecond">Measured rate while running.</param>
/// <param name="EtaSeconds">Estimated seconds left while running, else null.</param>
/// <param name="StartedUtc">When this scrub started (a resume keeps it).</param>
/// <param name="FinishedUtc">When it finished.</param>
/// <param name="BadBlocks">Bad blocks still referenced, each with every volume/snapshot and offset that references it.</param>
public sealed record ScrubStatusDto(string State, IReadOnlyList<string> Targets, long RateBytesPerSecond, long BlocksTotal, long BlocksChecked,
    long BytesChecked, double Percent, long BadBlocksFound, double CurrentBytesPerSecond, double? EtaSeconds, DateTimeOffset? StartedUtc,
    DateTimeOffset? FinishedUtc, IReadOnlyList<BadBlockDto> BadBlocks)
{
    /// <summary>Converts the backend's record.</summary>
    public static ScrubStatusDto From(ScrubStatus s) =>
        new(s.State.ToString().ToLowerInvariant(), s.Targets, s.RateBytesPerSecond, s.BlocksTotal, s.BlocksChecked, s.BytesChecked, Math.Round(s.Percent, 2),
            s.BadBlocksFound, Math.Round(s.CurrentBytesPerSecond), s.EtaSeconds is { } eta ? Math.Round(eta, 1) : null, s.StartedUtc, s.FinishedUtc,
            [.. s.BadBlocks.Select(b => new BadBlockDto(b.PhysicalBlock, b.Reason, b.FoundUtc, [.. b.References.Select(r => new BlockReferenceDto(r.Version, r.Offset))]))]);
}

/// <summary>A block whose content does not match its checksum (<c>checksum_mismatch</c>) or that the disk cannot read (<c>io_error</c>).</summary>
public sealed record BadBlockDto(long PhysicalBlock, string Reason, DateTimeOffset FoundUtc, IReadOnlyList<BlockReferenceDto> References);

/// <summary>A volume or <c>volume@snapshot</c> that references a bad block, and the byte offset of the 4 KiB block in it.</summary>
public sealed record BlockReferenceDto(string Version, long Offset);

/// <summary>Source-generated serializers for the API (camelCase on the wire).</summary>
[JsonSourceGenerationOptions(JsonSerializerDefaults.Web, WriteIndented = false, DefaultIgnoreCondition = JsonIgnoreCondition.Never)]
[JsonSerializable(typeof(VolumeDto))]
[JsonSerializable(typeof(TakeoverDto))]
[JsonSerializable(typeof(VolumeCacheDto))]
[JsonSerializable(typeof(SetCacheRequest))]
[JsonSerializable(typeof(ReleaseDto))]
[JsonSerializable(typeof(FlattenDto))]
[JsonSerializable(typeof(VolumeListDto))]
[JsonSerializable(typeof(CreateVolumeRequest))]
[JsonSerializable(typeof(ResizeVolumeRequest))]
[JsonSerializable(typeof(RenameVolumeRequest))]
[JsonSerializable(typeof(UsageDto))]
[JsonSerializable(typeof(SnapshotDto))]
[JsonSerializable(typeof(SnapshotListDto))]
[JsonSerializable(typeof(CreateSnapshotRequest))]
[JsonSerializable(typeof(CloneSnapshotRequest))]
[JsonSerializable(typeof(DiffDto))]
[JsonSerializable(typeof(SpaceUsageListDto))]
[JsonSerializable(typeof(HealthDto))]
[JsonSerializable(typeof(ErrorDto))]
[JsonSerializable(typeof(VolumeStatusDto))]
[JsonSerializable(typeof(StatsDto))]
[JsonSerializable(typeof(ScrubStartRequest))]
[JsonSerializable(typeof(ScrubStatusDto))]
public sealed partial class PlatterJsonContext : JsonSerializerContext;

/// <summary>The stable error codes of the API.</summary>
public static class ApiErrorCodes
{
    /// <summary>The request body or a parameter is malformed.</summary>
    public const string BadRequest = "bad_request";
    /// <summary>Missing or wrong bearer token on the TCP listener.</summary>
    public const string Unauthorized = "unauthorized";
    /// <summary>No such endpoint.</summary>
    public const string NoSuchEndpoint = "no_such_endpoint";
    /// <summary>A bug or an unexpected failure; the server log has details.</summary>
    public const string Internal = "internal";
    /// <summary>Delete or rollback refused because NBD clients use the volume (409); <c>?force=true</c> overrides.</summary>
    public const string ClientsConnected = "clients_connected";
    /// <summary>A resize to a smaller size without <c>allowShrink</c> (409).</summary>
    public const string ShrinkRefused = "shrink_refused";

    /// <summary>snake_case of the storage error, e.g. not_found, already_exists, no_space.</summary>
    public static string From(StorageError error) => error switch
    {
        StorageError.NotFound => "not_found",
        StorageError.AlreadyExists => "already_exists",
        StorageError.InvalidName => "invalid_name",
        StorageError.InvalidArgument => "invalid_argument",
        StorageError.OutOfRange => "out_of_range",
        StorageError.NoSpace => "no_space",
        StorageError.IoError => "io_error",
        StorageError.ChecksumMismatch => "checksum_mismatch",
        StorageError.StoreFailed => "store_failed",
        StorageError.ReadOnly => "read_only",
        StorageError.BadStore => "bad_store",
        StorageError.Closed => "closed",
        StorageError.InUse => "in_use",
        StorageError.HasDependents => "has_dependents",
        _ => "storage_error",
    };

    /// <summary>The HTTP status for a storage error.</summary>
    public static int HttpStatus(StorageError error) => error switch
    {
        StorageError.NotFound => 404,
        StorageError.AlreadyExists => 409,
        StorageError.ReadOnly => 409,
        StorageError.InUse => 409,
        // The request is well formed; the store's state (snapshots, clones) stands in the way: Conflict.
        StorageError.HasDependents => 409,
        StorageError.InvalidName or StorageError.InvalidArgument or StorageError.OutOfRange => 400,
        StorageError.NoSpace => 507,
        StorageError.Closed => 503,
        _ => 500,
    };
}
