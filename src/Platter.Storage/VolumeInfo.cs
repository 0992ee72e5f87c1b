namespace Platter.Storage;

/// <summary>What the catalog knows about a volume.</summary>
/// <param name="Id">Internal id, never reused.</param>
/// <param name="Name">Current name (the NBD export name).</param>
/// <param name="SizeBytes">Virtual size.</param>
/// <param name="AllocatedBytes">Bytes of data blocks mapped by this volume (thin: at most SizeBytes).</param>
/// <param name="CreatedUtc">Creation time.</param>
public sealed record VolumeInfo(long Id, string Name, long SizeBytes, long AllocatedBytes, DateTimeOffset CreatedUtc);

/// <summary>Space accounting for the whole store.</summary>
/// <param name="DataFileBytes">Bytes the data files occupy (allocated with fallocate).</param>
/// <param name="UsedBytes">Bytes of data blocks referenced by volumes.</param>
/// <param name="FreeBytes">Bytes inside the data files available for new writes (excluding space awaiting commit).</param>
/// <param name="VolumeCount">Number of volumes.</param>
/// <param name="ProvisionedBytes">Sum of volume virtual sizes.</param>
public sealed record StoreUsage(long DataFileBytes, long UsedBytes, long FreeBytes, int VolumeCount, long ProvisionedBytes);

/// <summary>A run of a volume with the same allocation state.</summary>
public readonly record struct VolumeExtent(long Offset, long Length, bool Allocated);
