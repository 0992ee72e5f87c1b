using System.Text.Json;
using System.Text.Json.Serialization;

namespace Platter.Cli;

/// <summary>Serializers for the CLI's own --json output (the API's records use PlatterJsonContext).</summary>
[JsonSourceGenerationOptions(JsonSerializerDefaults.Web)]
[JsonSerializable(typeof(AttachInfo))]
[JsonSerializable(typeof(VhostUserAttachInfo))]
[JsonSerializable(typeof(Platter.Volumes.CheckReport))]
[JsonSerializable(typeof(DiskUsageReport))]
[JsonSerializable(typeof(ImageTransferSummary))]
internal sealed partial class CliJsonContext : JsonSerializerContext;

/// <summary>
/// <c>platter du --json</c>: the store's totals (the same fields as the API's /v1/usage) and one entry per volume and
/// snapshot (as /v1/space).
/// </summary>
public sealed record DiskUsageReport(long DataFileBytes, long UsedBytes, long FreeBytes, int VolumeCount, long ProvisionedBytes,
    IReadOnlyList<Platter.Server.Api.SpaceUsageDto> Entries, long FileSystemBytes = 0, long FileSystemAvailableBytes = 0,
    long MetadataReserveBytes = 0, long CapacityBytes = 0, double Overcommit = 0, IReadOnlyList<string>? Warnings = null);
