using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.Logging;
using Platter.Server.Transfer;

namespace Platter.Server.Api;

/// <summary>
/// The streaming endpoints of the management API: send (the server writes a send stream as the response body) and
/// receive (the server applies the request body). The CLI only pipes bytes to and from them, so send and receive work
/// for whatever backend the server runs.
/// </summary>
internal static class TransferApi
{
    // A refused stream is drained (read to its end and dropped) so the client reads the refusal instead of a broken
    // pipe: a one-line reason is worth reading the rest of a stream that is going nowhere. The API is the owner's
    // channel (unix socket or token), so a client that sends forever only wastes its own time.

    public static void Map(WebApplication app, IVolumeBackend store, SnapshotIdentities identities, VolumeReceiver receiver, ILogger log)
    {
        var sender = new VolumeSender(store, identities);

        // GET /v1/volumes/VOL/snapshots/SNAP/send[?from=OLDER]: a full stream, or the changes since OLDER.
        app.MapGet("/v1/volumes/{name}/snapshots/{snapshot}/send", async (HttpContext http) =>
        {
            var volume = (string)http.Request.RouteValues["name"]!;
            var snapshot = (string)http.Request.RouteValues["snapshot"]!;
            var from = http.Request.Query["from"].ToString() is { Length: > 0 } f ? f : null;
            // Errors up to here are JSON answers; once the body has started, an error can only cut the stream, which
            // the receiver detects (no end record) and refuses.
            var header = sender.Prepare(volume, snapshot, from);
            http.Response.StatusCode = 200;
            http.Response.ContentType = SendStream.ContentType;
            try
            {
                var summary = await sender.SendAsync(volume, header, http.Response.Body, http.RequestAborted);
                log.LogInformation("sent '{Volume}@{Snapshot}'{From}: {Bytes} bytes", volume, snapshot, from is null ? "" : $" (changes since '{from}')", summary.StreamBytes);
            }
            catch (Exception e) when (http.Response.HasStarted && !http.RequestAborted.IsCancellationRequested)
            {
                log.LogError(e, "sending '{Volume}@{Snapshot}' failed after the stream started; cutting it", volume, snapshot);
                http.Abort();
            }
        });

        // POST /v1/volumes/VOL/receive with the stream as the body: creates VOL (full) or adds a snapshot to it.
        app.MapPost("/v1/volumes/{name}/receive", async (HttpContext http) =>
        {
            var target = (string)http.Request.RouteValues["name"]!;
            // A stream is as large as the volume: the API's small-body limit does not apply here.
            if (http.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } limit) limit.MaxRequestBodySize = null;
            ReceiveSummary summary;
            try
            {
                summary = await receiver.ReceiveAsync(target, http.Request.Body, http.RequestAborted);
            }
            catch (Exception e) when (e is StorageException or SendStreamException && !http.RequestAborted.IsCancellationRequested)
            {
                await DrainAsync(http);
                log.LogWarning("receive into '{Target}' refused: {Message}", target, e.Message);
                if (e is SendStreamException)
                    throw new StorageException(StorageError.InvalidArgument, $"{e.Message}; '{target}' is unchanged");
                throw;
            }
            http.Response.StatusCode = 201;
            await http.Response.WriteAsJsonAsync(summary, TransferJsonContext.Default.ReceiveSummary, contentType: null, http.RequestAborted);
        });
    }

    private static async Task DrainAsync(HttpContext http)
    {
        var buffer = new byte[64 * 1024];
        try
        {
            while (await http.Request.Body.ReadAsync(buffer, http.RequestAborted) > 0)
            {
            }
        }
        catch (Exception e) when (e is IOException or OperationCanceledException or BadHttpRequestException)
        {
            // The client went away or sent garbage framing: nothing more to read.
        }
    }
}
