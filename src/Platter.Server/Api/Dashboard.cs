using System.Collections.Frozen;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;

namespace Platter.Server.Api;

/// <summary>
/// The web dashboard: one HTML page, a script and a style sheet embedded in this assembly (no build step, no files
/// to install), calling the same JSON API as the CLI. Served at <c>/dashboard/</c>; <c>/</c> redirects there.
/// </summary>
internal static class Dashboard
{
    /// <summary>Where the page lives.</summary>
    public const string Path = "/dashboard/";

    // Read once at startup: the three files are a few tens of KiB.
    private static readonly FrozenDictionary<string, (byte[] Content, string Type)> Files = Load();

    public static void Map(WebApplication app)
    {
        app.MapGet("/", (HttpContext http) =>
        {
            http.Response.Redirect(Path);
            return Task.CompletedTask;
        }).ExcludeFromDescription();
        // Also matches /dashboard without the slash (routing ignores a trailing slash); the page uses absolute paths.
        app.MapGet(Path + "{file?}", (HttpContext http) =>
        {
            var file = http.Request.RouteValues["file"] as string;
            if (string.IsNullOrEmpty(file)) file = "index.html";
            if (!Files.TryGetValue(file, out var entry))
            {
                http.Response.StatusCode = 404;
                return Task.CompletedTask;
            }
            http.Response.ContentType = entry.Type;
            // The page is small and changes with the server binary: always revalidate, never serve a stale script.
            http.Response.Headers.CacheControl = "no-cache";
            http.Response.Headers.XContentTypeOptions = "nosniff";
            http.Response.Headers["Content-Security-Policy"] = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'";
            return http.Response.Body.WriteAsync(entry.Content, http.RequestAborted).AsTask();
        }).ExcludeFromDescription();
    }

    private static FrozenDictionary<string, (byte[], string)> Load()
    {
        var assembly = typeof(Dashboard).Assembly;
        var files = new Dictionary<string, (byte[], string)>(StringComparer.Ordinal);
        foreach (var resource in assembly.GetManifestResourceNames())
        {
            if (!resource.StartsWith("dashboard/", StringComparison.Ordinal)) continue;
            using var stream = assembly.GetManifestResourceStream(resource)!;
            using var buffer = new MemoryStream();
            stream.CopyTo(buffer);
            var name = resource["dashboard/".Length..];
            var type = System.IO.Path.GetExtension(name) switch
            {
                ".html" => "text/html; charset=utf-8",
                ".js" => "text/javascript; charset=utf-8",
                ".css" => "text/css; charset=utf-8",
                ".svg" => "image/svg+xml",
                _ => "application/octet-stream",
            };
            files[name] = (buffer.ToArray(), type);
        }
        return files.ToFrozenDictionary(StringComparer.Ordinal);
    }
}
