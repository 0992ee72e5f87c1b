using System.Buffers.Binary;

namespace Platter.CrashWorker;

/// <summary>
/// The crash test's workload, shared by the worker (which runs it until it is killed) and the test
/// (which replays it to know what the store must hold). Everything is a pure function of the seed, so
/// the test needs nothing from the worker but its progress log.
/// </summary>
public static class CrashWorkload
{
    public const string VolumeName = "crash";
    public const long VolumeSizeBytes = 16L << 20;
    public const int BlockSize = 4096;

    public enum OpKind { Write, Trim, WriteZeroes, Flush }

    public readonly record struct Op(int Index, OpKind Kind, long Offset, int Length);

    /// <summary>
    /// How many writer threads a run uses. Each owns a disjoint slice of the volume, so its ops can be replayed on
    /// their own, while the engine still sees concurrent writes and flushes (group commit) as from an NBD client.
    /// </summary>
    public static int Threads(int seed) => 1 + (int)((uint)seed % 3);

    /// <summary>The slice of the volume thread <paramref name="thread"/> of <paramref name="threads"/> writes to, in blocks.</summary>
    public static (long FirstBlock, long Blocks) Slice(int thread, int threads)
    {
        long total = VolumeSizeBytes / BlockSize;
        long each = total / threads;
        return (thread * each, thread == threads - 1 ? total - thread * each : each);
    }

    /// <summary>The endless op sequence of one thread of one run.</summary>
    public static IEnumerable<Op> Ops(int seed, int thread = 0)
    {
        var rng = new Random(seed * 31 + thread);
        var (firstBlock, blocks) = Slice(thread, Threads(seed));
        long baseOffset = firstBlock * BlockSize;
        // A hot region gets most writes, so blocks are overwritten between flushes and old/new both occur.
        long hotBlocks = Math.Min(256, blocks);
        for (int i = 0; ; i++)
        {
            int dice = rng.Next(100);
            long regionBlocks = rng.Next(4) == 0 ? blocks : hotBlocks;
            if (dice < 14)
            {
                yield return new Op(i, OpKind.Flush, 0, 0);
            }
            else if (dice < 60)
            {
                int count = rng.Next(1, 33);
                long first = rng.NextInt64(0, regionBlocks - count + 1);
                yield return new Op(i, OpKind.Write, baseOffset + first * BlockSize, count * BlockSize);
            }
            else if (dice < 85)
            {
                int len = rng.Next(1, 3 * BlockSize + 200);
                long off = rng.NextInt64(0, regionBlocks * BlockSize - len + 1);
                yield return new Op(i, OpKind.Write, baseOffset + off, len);
            }
            else
            {
                bool aligned = rng.Next(2) == 0;
                int len = aligned ? rng.Next(1, 17) * BlockSize : rng.Next(1, 5 * BlockSize);
                long off = aligned ? rng.NextInt64(0, regionBlocks - len / BlockSize + 1) * BlockSize : rng.NextInt64(0, regionBlocks * BlockSize - len + 1);
                yield return new Op(i, dice < 93 ? OpKind.Trim : OpKind.WriteZeroes, baseOffset + off, len);
            }
        }
    }

    /// <summary>
    /// The bytes op <paramref name="opIndex"/> writes at volume offset <paramref name="offset"/>: each aligned
    /// 8-byte word names (seed, op, word position), so any block read back tells which write it came from.
    /// </summary>
    public static void Content(int seed, int thread, int opIndex, long offset, Span<byte> destination)
    {
        Span<byte> word = stackalloc byte[8];
        long p = offset;
        int i = 0;
        while (i < destination.Length)
        {
            long w = p >> 3;
            BinaryPrimitives.WriteUInt64LittleEndian(word, Word(seed + thread, opIndex, w));
            int inWord = (int)(p & 7);
            int n = Math.Min(8 - inWord, destination.Length - i);
            word.Slice(inWord, n).CopyTo(destination[i..]);
            i += n;
            p += n;
        }
    }

    private static ulong Word(int seed, int opIndex, long wordIndex) =>
        0x8000_0000_0000_0000UL | ((ulong)(seed & 0x7FFF) << 48) | ((ulong)(opIndex & 0xFFFFFF) << 24) | ((ulong)wordIndex & 0xFFFFFF);

    /// <summary>For failure messages: which (seed, op) wrote the first non-zero aligned word of a block.</summary>
    public static string Describe(ReadOnlySpan<byte> block)
    {
        for (int i = 0; i + 8 <= block.Length; i += 8)
        {
            ulong v = BinaryPrimitives.ReadUInt64LittleEndian(block[i..]);
            if (v == 0) continue;
            return $"word at +{i}: seed&0x7fff={(v >> 48) & 0x7FFF} op={(v >> 24) & 0xFFFFFF} word={v & 0xFFFFFF}";
        }
        return "zeros";
    }

    /// <summary>Per-run store options: commit intervals vary so kills land in different engine phases.</summary>
    public static TimeSpan CommitInterval(int seed) => (seed % 3) switch
    {
        0 => TimeSpan.FromMilliseconds(5),
        1 => TimeSpan.FromMilliseconds(100),
        _ => TimeSpan.FromSeconds(1),
    };

    /// <summary>
    /// Progress log lines: "I thread op" before an op starts, "A thread op" after a write, trim or write-zeroes
    /// returns (acknowledged), "F thread op" after a flush returns.
    /// </summary>
    public const string OpenedLine = "opened";

    /// <summary>Logged when a background reclaim starts ("reclaim" mode); a kill after it and before <see cref="ReclaimEndedLine"/> landed inside one.</summary>
    public const string ReclaimStartedLine = "reclaim started";

    /// <summary>Logged when a background reclaim has handed all its blocks over.</summary>
    public const string ReclaimEndedLine = "reclaim ended";
    public const string IntentPrefix = "I ";
    public const string FlushedPrefix = "F ";
    public const string AcknowledgedPrefix = "A ";
}
