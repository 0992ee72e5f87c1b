// TEMPORARY: VolumeStore.Check lands with the engine. This shim lets the tests compile before then and
// is deleted on the merge; the instance method takes precedence over this extension once it exists.
namespace Platter.Storage.Tests.Support;

internal static class PendingEngineApi
{
    public static PendingCheckReport Check(this VolumeStore store, bool verifyChecksums) =>
        throw new NotImplementedException("VolumeStore.Check lands with the engine");
}

internal sealed record PendingCheckReport(bool Ok, IReadOnlyList<string> Problems);
