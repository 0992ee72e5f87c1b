namespace Platter.Volumes;

/// <summary>What <see cref="IVolumeBackend.Check"/> found: one line per inconsistency in Problems (empty when consistent) and counts.</summary>
public sealed record CheckReport(
    IReadOnlyList<string> Problems, int Volumes, long ExtentRecords, long MappedBlocks, long FreeBlocks, long TotalBlocks, long BlocksVerified)
{
    public bool Ok => Problems.Count == 0;
}
