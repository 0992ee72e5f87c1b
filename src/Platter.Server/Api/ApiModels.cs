using System.Text.Json;
using System.Text.Json.Serialization;
using Platter.Storage;

namespace Platter.Server.Api;

/// <summary>A volume as the management API shows it.</summary>
public sealed record VolumeDto(string Name, long Id, long SizeBytes, long AllocatedBytes, DateTimeOffset CreatedUtc)
{
    /// <summary>Converts the catalog's record.</summary>
    public static VolumeDto From(VolumeInfo info) => new(info.Name, info.Id, info.SizeBytes, info.AllocatedBytes, info.CreatedUtc);
}

/// <summary>GET /v1/volumes.</summary>
public sealed record VolumeListDto(IReadOnlyList<VolumeDto> Volumes);

/// <summary>POST /v1/volumes.</summary>
public sealed record CreateVolumeRequest(string? Name, long? SizeBytes);

/// <summary>POST /v1/volumes/{name}/resize.</summary>
public sealed record ResizeVolumeRequest(long? SizeBytes);

/// <summary>POST /v1/volumes/{name}/rename.</summary>
public sealed record RenameVolumeRequest(string? NewName);

/// <summary>GET /v1/usage.</summary>
public sealed record UsageDto(long DataFileBytes, long UsedBytes, long FreeBytes, int VolumeCount, long ProvisionedBytes)
{
    /// <summary>Converts the store's record.</summary>
    public static UsageDto From(StoreUsage usage) =>
        new(usage.DataFileBytes, usage.UsedBytes, usage.FreeBytes, usage.VolumeCount, usage.ProvisionedBytes);
}

/// <summary>GET /v1/health: the server is up, and where its NBD endpoints are (for `platter attach`).</summary>
/// <param name="Status">"ok".</param>
/// <param name="Version">Server version.</param>
/// <param name="StoreDirectory">The store it serves.</param>
/// <param name="NbdSocket">NBD unix socket, or null when disabled.</param>
/// <param name="NbdTcp">NBD TCP address as HOST:PORT, or null when disabled.</param>
/// <param name="Tls">NBD offers TLS.</param>
/// <param name="TlsRequired">NBD refuses everything but STARTTLS before TLS.</param>
/// <param name="NbdReadOnly">Every NBD export is read-only (<c>platter serve --read-only</c>); false from servers that predate it.</param>
public sealed record HealthDto(string Status, string Version, string StoreDirectory, string? NbdSocket, string? NbdTcp, bool Tls, bool TlsRequired,
    bool NbdReadOnly = false);

/// <summary>Every error answer: a stable machine code and a sentence for people.</summary>
public sealed record ErrorDto(string Error, string Message);

/// <summary>Source-generated serializers for the API (camelCase on the wire).</summary>
[JsonSourceGenerationOptions(JsonSerializerDefaults.Web, WriteIndented = false, DefaultIgnoreCondition = JsonIgnoreCondition.Never)]
[JsonSerializable(typeof(VolumeDto))]
[JsonSerializable(typeof(VolumeListDto))]
[JsonSerializable(typeof(CreateVolumeRequest))]
[JsonSerializable(typeof(ResizeVolumeRequest))]
[JsonSerializable(typeof(RenameVolumeRequest))]
[JsonSerializable(typeof(UsageDto))]
[JsonSerializable(typeof(HealthDto))]
[JsonSerializable(typeof(ErrorDto))]
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
        _ => "storage_error",
    };

    /// <summary>The HTTP status for a storage error.</summary>
    public static int HttpStatus(StorageError error) => error switch
    {
        StorageError.NotFound => 404,
        StorageError.AlreadyExists => 409,
        StorageError.ReadOnly => 409,
        StorageError.InUse => 409,
        StorageError.InvalidName or StorageError.InvalidArgument or StorageError.OutOfRange => 400,
        StorageError.NoSpace => 507,
        StorageError.Closed => 503,
        _ => 500,
    };
}
