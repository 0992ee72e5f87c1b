using System.Net;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Platter.Storage;

namespace Platter.Server.Api;

/// <summary>Where the management API listens.</summary>
public sealed class ManagementApiOptions
{
    /// <summary>Unix socket path (the default transport, guarded by file permissions), or null.</summary>
    public string? SocketPath { get; init; }

    /// <summary>Optional TCP endpoint; every request on it must carry <c>Authorization: Bearer TOKEN</c>.</summary>
    public IPEndPoint? TcpEndPoint { get; init; }

    /// <summary>The bearer token for the TCP listener. Required when <see cref="TcpEndPoint"/> is set.</summary>
    public string? Token { get; init; }
}

/// <summary>
/// The HTTP+JSON management API on Kestrel. Handlers call the store directly; the store is thread-safe and its
/// catalog operations are short, so they run on the request thread.
/// </summary>
internal static class ManagementApi
{
    // A create/resize/rename request is a few dozen bytes; anything much larger is not a client of this API.
    private const long RequestBodyBytesMax = 64 * 1024;

    public static WebApplication Build(VolumeStore store, ManagementApiOptions options, ILoggerFactory loggerFactory, Func<HealthDto> health)
    {
        if (options.SocketPath is null && options.TcpEndPoint is null)
            throw new ArgumentException("the management API needs a socket path or a TCP endpoint");
        if (options.TcpEndPoint is not null && string.IsNullOrEmpty(options.Token))
            throw new ArgumentException("the management API on TCP needs a token");

        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions
        {
            Args = [],
            ApplicationName = "Platter.Server",
            ContentRootPath = AppContext.BaseDirectory,
        });
        builder.Services.Replace(ServiceDescriptor.Singleton(loggerFactory));
        // PlatterHost owns signals and shutdown order; the default console lifetime would stop the API on its own.
        builder.Services.Replace(ServiceDescriptor.Singleton<IHostLifetime, PassiveLifetime>());
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.AddServerHeader = false;
            kestrel.Limits.MaxRequestBodySize = RequestBodyBytesMax;
            if (options.SocketPath is not null) kestrel.ListenUnixSocket(options.SocketPath);
            if (options.TcpEndPoint is not null) kestrel.Listen(options.TcpEndPoint);
        });

        var app = builder.Build();
        var log = loggerFactory.CreateLogger("Platter.Api");
        var tokenBytes = options.Token is null ? null : Encoding.UTF8.GetBytes("Bearer " + options.Token);

        app.Use(async (http, next) =>
        {
            // Requests from the unix socket have no IP address; file permissions guard that socket.
            if (http.Connection.LocalIpAddress is not null && !HasToken(http, tokenBytes))
            {
                await WriteError(http, 401, ApiErrorCodes.Unauthorized, "missing or wrong bearer token");
                return;
            }
            try
            {
                await next(http);
            }
            catch (StorageException e)
            {
                var status = ApiErrorCodes.HttpStatus(e.Error);
                if (status >= 500) log.LogError(e, "{Method} {Path} failed: {Message}", http.Request.Method, http.Request.Path, e.Message);
                await WriteError(http, status, ApiErrorCodes.From(e.Error), e.Message);
            }
            catch (BadRequestException e)
            {
                await WriteError(http, 400, ApiErrorCodes.BadRequest, e.Message);
            }
            catch (Microsoft.AspNetCore.Http.BadHttpRequestException e)
            {
                await WriteError(http, e.StatusCode, ApiErrorCodes.BadRequest, e.Message);
            }
            catch (Exception e) when (!http.RequestAborted.IsCancellationRequested)
            {
                log.LogError(e, "{Method} {Path} failed", http.Request.Method, http.Request.Path);
                await WriteError(http, 500, ApiErrorCodes.Internal, "internal error: " + e.Message);
            }
        });

        var json = PlatterJsonContext.Default;

        app.MapGet("/v1/health", (HttpContext http) => Write(http, 200, health(), json.HealthDto));

        app.MapGet("/v1/usage", (HttpContext http) => Write(http, 200, UsageDto.From(store.GetUsage()), json.UsageDto));

        app.MapGet("/v1/volumes", (HttpContext http) =>
        {
            var volumes = store.ListVolumes();
            var list = new VolumeDto[volumes.Count];
            for (int i = 0; i < list.Length; i++) list[i] = VolumeDto.From(volumes[i]);
            return Write(http, 200, new VolumeListDto(list), json.VolumeListDto);
        });

        app.MapPost("/v1/volumes", async (HttpContext http) =>
        {
            var request = await ReadBody(http, json.CreateVolumeRequest);
            var name = request.Name ?? throw new BadRequestException("missing 'name'");
            VolumeNames.ThrowIfInvalid(name);
            var size = ValidSize(request.SizeBytes);
            var info = store.CreateVolume(name, size);
            log.LogInformation("created volume '{Name}' ({Size})", info.Name, SizeText.Format(info.SizeBytes));
            http.Response.Headers.Location = "/v1/volumes/" + Uri.EscapeDataString(info.Name);
            await Write(http, 201, VolumeDto.From(info), json.VolumeDto);
        });

        app.MapGet("/v1/volumes/{name}", (HttpContext http) =>
            Write(http, 200, VolumeDto.From(store.GetVolumeInfo(RouteName(http))), json.VolumeDto));

        app.MapPost("/v1/volumes/{name}/resize", async (HttpContext http) =>
        {
            var name = RouteName(http);
            var request = await ReadBody(http, json.ResizeVolumeRequest);
            var size = ValidSize(request.SizeBytes);
            var before = store.GetVolumeInfo(name).SizeBytes;
            store.ResizeVolume(name, size);
            log.LogInformation("resized volume '{Name}' from {Before} to {After}", name, SizeText.Format(before), SizeText.Format(size));
            await Write(http, 200, VolumeDto.From(store.GetVolumeInfo(name)), json.VolumeDto);
        });

        app.MapPost("/v1/volumes/{name}/rename", async (HttpContext http) =>
        {
            var name = RouteName(http);
            var request = await ReadBody(http, json.RenameVolumeRequest);
            var newName = request.NewName ?? throw new BadRequestException("missing 'newName'");
            VolumeNames.ThrowIfInvalid(newName);
            store.RenameVolume(name, newName);
            log.LogInformation("renamed volume '{Name}' to '{NewName}'", name, newName);
            await Write(http, 200, VolumeDto.From(store.GetVolumeInfo(newName)), json.VolumeDto);
        });

        app.MapDelete("/v1/volumes/{name}", (HttpContext http) =>
        {
            var name = RouteName(http);
            store.DeleteVolume(name);
            log.LogInformation("deleted volume '{Name}'", name);
            http.Response.StatusCode = 204;
            return Task.CompletedTask;
        });

        app.MapFallback((HttpContext http) =>
            WriteError(http, 404, ApiErrorCodes.NoSuchEndpoint, $"no endpoint {http.Request.Method} {http.Request.Path}"));

        return app;
    }

    private static string RouteName(HttpContext http) =>
        http.Request.RouteValues["name"] as string ?? throw new BadRequestException("missing volume name");

    private static long ValidSize(long? sizeBytes)
    {
        if (sizeBytes is not { } size) throw new BadRequestException("missing 'sizeBytes'");
        // QEMU and guests address disks in 512-byte sectors; a size that is not a whole number of them
        // loses its tail in every client.
        if (size <= 0 || size % 512 != 0)
            throw new StorageException(StorageError.InvalidArgument, $"size must be a positive multiple of 512 bytes, not {size}");
        return size;
    }

    private static bool HasToken(HttpContext http, byte[]? expected)
    {
        if (expected is null) return false;
        var header = http.Request.Headers.Authorization.ToString();
        var actual = Encoding.UTF8.GetBytes(header);
        return CryptographicOperations.FixedTimeEquals(actual, expected);
    }

    private static async Task<T> ReadBody<T>(HttpContext http, JsonTypeInfo<T> type) where T : class
    {
        if (!http.Request.HasJsonContentType())
            throw new BadRequestException("the request body must be JSON (Content-Type: application/json)");
        try
        {
            return await http.Request.ReadFromJsonAsync(type, http.RequestAborted) ?? throw new BadRequestException("empty request body");
        }
        catch (JsonException e)
        {
            throw new BadRequestException("malformed JSON: " + e.Message);
        }
    }

    private static Task Write<T>(HttpContext http, int status, T value, JsonTypeInfo<T> type)
    {
        http.Response.StatusCode = status;
        return http.Response.WriteAsJsonAsync(value, type, contentType: null, http.RequestAborted);
    }

    private static Task WriteError(HttpContext http, int status, string code, string message)
    {
        if (http.Response.HasStarted) return Task.CompletedTask;
        http.Response.Clear();
        return Write(http, status, new ErrorDto(code, message), PlatterJsonContext.Default.ErrorDto);
    }

    private sealed class BadRequestException(string message) : Exception(message);

    private sealed class PassiveLifetime : IHostLifetime
    {
        public Task WaitForStartAsync(CancellationToken cancellationToken) => Task.CompletedTask;
        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}
