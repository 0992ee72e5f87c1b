using System.Text.Json;
using System.Text.Json.Serialization;

namespace Platter.Cli;

/// <summary>Serializers for the CLI's own --json output (the API's records use PlatterJsonContext).</summary>
[JsonSourceGenerationOptions(JsonSerializerDefaults.Web)]
[JsonSerializable(typeof(AttachInfo))]
[JsonSerializable(typeof(Platter.Storage.CheckReport))]
internal sealed partial class CliJsonContext : JsonSerializerContext;
