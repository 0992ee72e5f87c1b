namespace Platter.Nbd;

/// <summary>One extent of a metadata context: a length and the context's status flags for it.</summary>
public readonly record struct NbdStatusExtent(long Length, uint Flags);

/// <summary>
/// A metadata context selected on one connection (NBD_OPT_SET_META_CONTEXT), answering NBD_CMD_BLOCK_STATUS.
/// Created per connection for the export the client entered transmission with.
/// </summary>
public interface INbdMetaContext
{
    /// <summary>Full context name, e.g. <c>base:allocation</c>.</summary>
    string Name { get; }

    /// <summary>
    /// Fills <paramref name="destination"/> with consecutive extents starting exactly at <paramref name="offset"/>,
    /// covering at most <paramref name="length"/> bytes; returns how many (at least one when length &gt; 0).
    /// The range is validated by the caller.
    /// </summary>
    int GetStatus(long offset, long length, Span<NbdStatusExtent> destination);
}

/// <summary>
/// Supplies the metadata contexts of one namespace (<c>base</c>, <c>qemu</c>, ...). Register providers in
/// <see cref="NbdServerOptions.MetaContextProviders"/>; the server routes each query to the provider whose
/// namespace it starts with and ignores queries for unknown namespaces, as the spec requires.
/// </summary>
public interface INbdMetaContextProvider
{
    /// <summary>Namespace without the colon, e.g. <c>qemu</c>.</summary>
    string Namespace { get; }

    /// <summary>
    /// Context names to return for NBD_OPT_LIST_META_CONTEXT. <paramref name="query"/> is null when the client
    /// sent no queries (list everything), otherwise the full query starting with <c>namespace:</c>; the
    /// provider decides what wildcards mean in its namespace (the spec makes <c>namespace:</c> list all).
    /// </summary>
    IEnumerable<string> List(INbdExport export, string? query);

    /// <summary>
    /// The context selected by <paramref name="name"/> for NBD_OPT_SET_META_CONTEXT / transmission, or null when
    /// the name selects nothing (wildcards and unknown leaf names select nothing).
    /// </summary>
    INbdMetaContext? Open(INbdExport export, string name);
}

/// <summary>The spec's <c>base:allocation</c> context, answered from <see cref="INbdExport.GetAllocation"/>.</summary>
public sealed class BaseAllocationContextProvider : INbdMetaContextProvider
{
    public const string ContextName = "base:allocation";

    public static BaseAllocationContextProvider Instance { get; } = new();

    public string Namespace => "base";

    public IEnumerable<string> List(INbdExport export, string? query)
    {
        if (query is null || query == "base:" || query == ContextName)
            yield return ContextName;
    }

    public INbdMetaContext? Open(INbdExport export, string name) =>
        name == ContextName ? new Context(export) : null;

    private sealed class Context(INbdExport export) : INbdMetaContext
    {
        public string Name => ContextName;

        public int GetStatus(long offset, long length, Span<NbdStatusExtent> destination)
        {
            // Same layout (long, uint-sized enum): convert in place through a small stack batch.
            Span<AllocationExtent> batch = stackalloc AllocationExtent[Math.Min(destination.Length, 256)];
            int n = export.GetAllocation(offset, length, batch);
            for (int i = 0; i < n; i++)
                destination[i] = new NbdStatusExtent(batch[i].Length, (uint)batch[i].Flags);
            return n;
        }
    }
}
