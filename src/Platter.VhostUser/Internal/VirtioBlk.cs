using System.Buffers.Binary;

namespace Platter.VhostUser.Internal;

/// <summary>virtio-blk wire constants (virtio 1.1 section 5.2) and the device's config space.</summary>
internal static class VirtioBlk
{
    // Feature bits.
    public const int FeatureSizeMax = 1;
    public const int FeatureSegMax = 2;
    public const int FeatureGeometry = 4;
    public const int FeatureReadOnly = 5;
    public const int FeatureBlockSize = 6;
    public const int FeatureFlush = 9;
    public const int FeatureTopology = 10;
    public const int FeatureConfigWce = 11;
    public const int FeatureMultiQueue = 12;
    public const int FeatureDiscard = 13;
    public const int FeatureWriteZeroes = 14;
    public const int FeatureVersion1 = 32;
    public const int FeatureIndirectDescriptors = 28;
    public const int FeatureEventIndex = 29;

    // Request types.
    public const uint TypeIn = 0;
    public const uint TypeOut = 1;
    public const uint TypeFlush = 4;
    public const uint TypeGetId = 8;
    public const uint TypeDiscard = 11;
    public const uint TypeWriteZeroes = 13;

    // Status.
    public const byte StatusOk = 0;
    public const byte StatusIoError = 1;
    public const byte StatusUnsupported = 2;

    public const int SectorBytes = 512;
    public const int IdBytes = 20;
    public const uint WriteZeroesUnmap = 1;

    /// <summary>
    /// The config space (struct virtio_blk_config): capacity in 512-byte sectors; 512-byte logical blocks with 4 KiB
    /// physical blocks and minimum I/O (the engine's block: smaller writes cost it a read-modify-write); seg_max; the
    /// discard and write-zeroes limits. num_queues is overridden by QEMU with its own num-queues.
    /// </summary>
    public static void WriteConfig(Span<byte> config, long sizeBytes)
    {
        config.Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(config[0..], (ulong)(sizeBytes / SectorBytes));
        BinaryPrimitives.WriteUInt32LittleEndian(config[12..], VhostUserLimits.DataSegmentsMax);
        BinaryPrimitives.WriteUInt32LittleEndian(config[20..], SectorBytes);
        config[24] = 3; // physical_block_exp: 2^3 logical blocks = 4 KiB
        BinaryPrimitives.WriteUInt16LittleEndian(config[26..], 8); // min_io_size in logical blocks
        BinaryPrimitives.WriteUInt16LittleEndian(config[34..], VhostUserLimits.QueuesMax);
        BinaryPrimitives.WriteUInt32LittleEndian(config[36..], VhostUserLimits.DiscardSectorsMax);
        BinaryPrimitives.WriteUInt32LittleEndian(config[40..], VhostUserLimits.DiscardRangesMax);
        BinaryPrimitives.WriteUInt32LittleEndian(config[44..], 8); // discard_sector_alignment: 4 KiB
        BinaryPrimitives.WriteUInt32LittleEndian(config[48..], VhostUserLimits.DiscardSectorsMax);
        BinaryPrimitives.WriteUInt32LittleEndian(config[52..], VhostUserLimits.DiscardRangesMax);
        config[56] = 1; // write_zeroes_may_unmap
    }

    /// <summary>The device features offered: what the volume seam can honour, and indirect descriptors (validated like direct ones).</summary>
    public static ulong Features(bool readOnly)
    {
        ulong f = (1UL << FeatureVersion1) | (1UL << FeatureSegMax) | (1UL << FeatureBlockSize) | (1UL << FeatureTopology)
                  | (1UL << FeatureFlush) | (1UL << FeatureMultiQueue) | (1UL << FeatureIndirectDescriptors);
        f |= readOnly ? 1UL << FeatureReadOnly : (1UL << FeatureDiscard) | (1UL << FeatureWriteZeroes);
        return f;
    }
}
