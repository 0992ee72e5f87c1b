using Platter.Storage;

namespace Platter.Server.Tests;

/// <summary>Tests that set up data behind the server's back use the embedded engine's synchronous handles directly.</summary>
internal static class EmbeddedStoreAccess
{
    /// <summary>The host's store as the embedded engine (these tests always serve a directory store).</summary>
    public static VolumeStore EmbeddedStore(this PlatterHost host) => (VolumeStore)host.Store;
}
