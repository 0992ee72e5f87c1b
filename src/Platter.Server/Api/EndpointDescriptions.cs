using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Metadata;
using Microsoft.AspNetCore.OpenApi;
using Microsoft.OpenApi;

namespace Platter.Server.Api;

/// <summary>
/// What the OpenAPI description says about each endpoint. The handlers read and write JSON themselves (with the
/// source-generated serializers), so the generator cannot infer bodies and answers: these declare them.
/// </summary>
internal static class EndpointDescriptions
{
    private static readonly string[] Json = ["application/json"];

    /// <summary>A JSON answer of <typeparamref name="T"/> with <paramref name="status"/>, an optional JSON body, and the error shape.</summary>
    public static TBuilder Describe<T, TBuilder>(this TBuilder builder, string summary, int status = 200, Type? body = null)
        where TBuilder : IEndpointConventionBuilder
    {
        builder.WithSummary(summary).WithMetadata(new ProducesResponseTypeMetadata(status, typeof(T), Json));
        // Not AcceptsMetadata: routing would then match only JSON requests, and a form post would fall through to
        // 404 instead of the handler's clear 400 "the request body must be JSON". The transformer below adds it.
        if (body is not null) builder.WithMetadata(new JsonBody(body));
        return builder.ProducesErrors();
    }

    /// <summary>Declares an optional query parameter (the handlers read the query themselves).</summary>
    public static TBuilder Query<TBuilder>(this TBuilder builder, string name, string description) where TBuilder : IEndpointConventionBuilder =>
        builder.WithMetadata(new QueryParameter(name, description));

    /// <summary>
    /// Adds the path parameters of the route ({name}, {snapshot}) and the declared query parameters to each
    /// operation: the handlers bind neither, so the generator does not see them.
    /// </summary>
    public static async Task AddParameters(OpenApiOperation operation, OpenApiOperationTransformerContext context, CancellationToken cancellationToken)
    {
        foreach (var body in context.Description.ActionDescriptor.EndpointMetadata.OfType<JsonBody>())
        {
            var schema = await context.GetOrCreateSchemaAsync(body.Type, null, cancellationToken);
            operation.RequestBody = new OpenApiRequestBody
            {
                Required = true,
                Content = new Dictionary<string, OpenApiMediaType> { ["application/json"] = new OpenApiMediaType { Schema = schema } },
            };
        }
        operation.Parameters ??= [];
        var route = context.Description.RelativePath ?? "";
        foreach (var (name, description) in (ReadOnlySpan<(string, string)>)[("name", "Volume name"), ("snapshot", "Snapshot name")])
        {
            if (!route.Contains("{" + name + "}", StringComparison.Ordinal)) continue;
            operation.Parameters.Add(new OpenApiParameter
            {
                Name = name, In = ParameterLocation.Path, Required = true, Description = description,
                Schema = new OpenApiSchema { Type = JsonSchemaType.String },
            });
        }
        foreach (var query in context.Description.ActionDescriptor.EndpointMetadata.OfType<QueryParameter>())
        {
            operation.Parameters.Add(new OpenApiParameter
            {
                Name = query.Name, In = ParameterLocation.Query, Required = false, Description = query.Description,
                Schema = new OpenApiSchema { Type = JsonSchemaType.String },
            });
        }
    }

    private sealed record QueryParameter(string Name, string Description);

    private sealed record JsonBody(Type Type);

    /// <summary>204 No Content on success, and the error shape.</summary>
    public static TBuilder DescribeNoContent<TBuilder>(this TBuilder builder, string summary) where TBuilder : IEndpointConventionBuilder =>
        builder.WithSummary(summary).WithMetadata(new ProducesResponseTypeMetadata(StatusCodes.Status204NoContent, typeof(void), [])).ProducesErrors();

    // Every failure is {"error": CODE, "message": TEXT}; these are the statuses a client meets in practice.
    private static TBuilder ProducesErrors<TBuilder>(this TBuilder builder) where TBuilder : IEndpointConventionBuilder => builder.WithMetadata(
        new ProducesResponseTypeMetadata(StatusCodes.Status400BadRequest, typeof(ErrorDto), Json),
        new ProducesResponseTypeMetadata(StatusCodes.Status401Unauthorized, typeof(ErrorDto), Json),
        new ProducesResponseTypeMetadata(StatusCodes.Status404NotFound, typeof(ErrorDto), Json),
        new ProducesResponseTypeMetadata(StatusCodes.Status409Conflict, typeof(ErrorDto), Json),
        new ProducesResponseTypeMetadata(StatusCodes.Status500InternalServerError, typeof(ErrorDto), Json));
}
