using System.Text.Json;
using System.Text.Json.Serialization;

namespace Platter.Server.Api;

/// <summary>Media types of the streaming endpoints.</summary>
public static class TransferMediaTypes
{
    /// <summary>A send stream (docs/SEND_STREAM.md): the send endpoint's answer, the receive endpoint's body.</summary>
    public const string SendStream = "application/vnd.platter.send-stream";
}

/// <summary>What a receive applied.</summary>
/// <param name="Volume">The target volume.</param>
/// <param name="Snapshot">The snapshot it created.</param>
/// <param name="BaseSnapshot">For an incremental stream, the base.</param>
/// <param name="SizeBytes">The volume's size afterwards.</param>
/// <param name="StreamBytes">Bytes of stream read.</param>
/// <param name="DataBytes">Bytes of data written.</param>
/// <param name="ZeroBytes">Bytes made to read as zeros.</param>
public sealed record ReceiveSummary(string Volume, string Snapshot, string? BaseSnapshot, long SizeBytes, long StreamBytes, long DataBytes, long ZeroBytes);

/// <summary>Source-generated serializer for the transfer answers (camelCase on the wire, like the rest of the API).</summary>
[JsonSourceGenerationOptions(JsonSerializerDefaults.Web)]
[JsonSerializable(typeof(ReceiveSummary))]
public sealed partial class TransferJsonContext : JsonSerializerContext;
