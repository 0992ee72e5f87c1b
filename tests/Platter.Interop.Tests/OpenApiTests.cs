using System.Text.Json;
using System.Text.RegularExpressions;

namespace Platter.Interop.Tests;

/// <summary>
/// The OpenAPI description as the real binary serves it. The schemas are built at run time from the source-generated
/// JSON metadata, which is what trimming or Native AOT would break first (an empty schema, a missing property), so
/// this test also runs against the AOT binary (scripts/test.sh sets PLATTER_TEST_BINARY).
/// </summary>
public sealed partial class OpenApiTests(ObservabilityServer fixture) : IClassFixture<ObservabilityServer>
{
    [Fact]
    public async Task The_served_description_lists_exactly_the_readme_endpoints_with_their_schemas()
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(30) };
        // On TCP, reading needs no token: tools fetch the description without one.
        using var response = await http.GetAsync(new Uri(fixture.ApiUri, "openapi/v1.json"));
        Assert.True(response.IsSuccessStatusCode, $"GET /openapi/v1.json: {(int)response.StatusCode}\n{fixture.Server.Log}");
        Assert.Equal("application/json", response.Content.Headers.ContentType?.MediaType);
        using var document = JsonDocument.Parse(await response.Content.ReadAsStringAsync());
        var root = document.RootElement;
        Assert.StartsWith("3.", root.GetProperty("openapi").GetString());
        Assert.Equal("Platter management API", root.GetProperty("info").GetProperty("title").GetString());

        // Exactly the README's endpoint table, no more and no less.
        var served = new SortedSet<string>(StringComparer.Ordinal);
        foreach (var path in root.GetProperty("paths").EnumerateObject())
            foreach (var method in path.Value.EnumerateObject())
                if (method.Name is "get" or "post" or "put" or "delete" or "patch") served.Add(method.Name.ToUpperInvariant() + " " + path.Name);
        var readme = await File.ReadAllTextAsync(Repository.PathOf("README.md"));
        var listed = new SortedSet<string>(ReadmeEndpoint().Matches(readme).Select(m => m.Groups[1].Value), StringComparer.Ordinal);
        Assert.Equal(listed, served);

        // Bodies and answers carry real schemas: the properties of the records the handlers read and write.
        var create = root.GetProperty("paths").GetProperty("/v1/volumes").GetProperty("post");
        var body = Resolve(root, create.GetProperty("requestBody").GetProperty("content").GetProperty("application/json").GetProperty("schema"));
        Assert.Equal(["cache", "name", "sizeBytes"], PropertyNames(body));
        var created = Resolve(root, create.GetProperty("responses").GetProperty("201").GetProperty("content").GetProperty("application/json").GetProperty("schema"));
        Assert.Contains("sizeBytes", PropertyNames(created));
        Assert.Contains("allocatedBytes", PropertyNames(created));
        var error = Resolve(root, create.GetProperty("responses").GetProperty("409").GetProperty("content").GetProperty("application/json").GetProperty("schema"));
        Assert.Equal(["error", "message"], PropertyNames(error));
        var list = Resolve(root, root.GetProperty("paths").GetProperty("/v1/volumes").GetProperty("get").GetProperty("responses").GetProperty("200")
            .GetProperty("content").GetProperty("application/json").GetProperty("schema"));
        Assert.Equal(["volumes"], PropertyNames(list));
    }

    // A row of the README's API table: | `GET /v1/volumes/{name}` | what |
    [GeneratedRegex(@"^\| `((?:GET|POST|PUT|DELETE|PATCH) /v1/[^`]*)` \|", RegexOptions.Multiline)]
    private static partial Regex ReadmeEndpoint();

    private static JsonElement Resolve(JsonElement root, JsonElement schema)
    {
        if (!schema.TryGetProperty("$ref", out var reference)) return schema;
        // "#/components/schemas/NAME"
        var name = reference.GetString()!.Split('/')[^1];
        return root.GetProperty("components").GetProperty("schemas").GetProperty(name);
    }

    private static string[] PropertyNames(JsonElement schema) =>
        [.. schema.GetProperty("properties").EnumerateObject().Select(p => p.Name).Order(StringComparer.Ordinal)];
}
