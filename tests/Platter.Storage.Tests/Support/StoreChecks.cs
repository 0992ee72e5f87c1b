using Xunit;

namespace Platter.Storage.Tests.Support;

internal static class StoreChecks
{
    /// <summary>Runs the store's consistency check (with the checksum scan) and fails with every problem it lists.</summary>
    public static void AssertConsistent(VolumeStore store, string context)
    {
        var report = store.Check(verifyChecksums: true);
        Assert.True(report.Ok, $"{context}: consistency check failed:\n  " + string.Join("\n  ", report.Problems));
    }
}
