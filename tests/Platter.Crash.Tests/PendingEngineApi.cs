// TEMPORARY: VolumeStore.Check lands with the engine; deleted on the merge.
using Platter.Storage;

namespace Platter.Crash.Tests;

internal static class PendingEngineApi
{
    public static PendingCheckReport Check(this VolumeStore store, bool verifyChecksums) =>
        throw new NotImplementedException("VolumeStore.Check lands with the engine");
}

internal sealed record PendingCheckReport(bool Ok, IReadOnlyList<string> Problems);
