using Platter.Storage.Tests.Support;
using Xunit;

namespace Platter.Storage.Tests;

/// <summary>
/// Reads through deep clone chains (issue 15, target 6): c1 = clone of base@s, c2 = clone of c1@s, ... Each level
/// writes, trims and partially overwrites blocks at its own places (some over what an older level wrote, some over
/// what the base wrote, some across leaf boundaries), and the origin keeps changing after it was cloned. Every volume
/// of the chain must read exactly its own model — whole, in runs that cross levels, and block by block — before and
/// after a reopen (which loads the maps packed, decision 0010).
/// </summary>
public sealed class CloneChainTests
{
    private const int B = Blocks.Size;
    private const int Depth = 16;
    private const long SizeBlocks = 1100; // more than four map leaves of 256 blocks, the last one partial
    private const long Size = SizeBlocks * B;

    private static VolumeStore Open(TempDirectory dir) => VolumeStore.Open(dir.Path, new StoreOptions { JournalRegionBytes = 4 << 20 });

    [Fact]
    public void Every_volume_of_a_16_deep_clone_chain_reads_its_own_content_before_and_after_reopen()
    {
        using var dir = new TempDirectory("platter-chain");
        var models = new Dictionary<string, byte[]>();
        var rng = new Random(15);
        using (var store = Open(dir))
        {
            store.CreateVolume("base", Size);
            var model = new byte[Size];
            using (var v = store.OpenVolume("base"))
            {
                // Written whole except a hole of 40 blocks, so the chain also inherits unmapped blocks.
                for (long b = 0; b < SizeBlocks; b++)
                {
                    if (b is >= 300 and < 340) continue;
                    Write(v, model, b * B, Blocks.Pattern(0, b));
                }
            }
            models["base"] = model;
            string prev = "base";
            for (int k = 1; k <= Depth; k++)
            {
                string name = $"c{k}";
                store.CreateSnapshot(prev, "s");
                store.CloneSnapshot(prev, "s", name);
                var mine = (byte[])models[prev].Clone();
                using (var c = store.OpenVolume(name))
                {
                    // Scattered single blocks anywhere: over the base's blocks, over older levels' writes, into the hole.
                    for (int i = 0; i < 24; i++)
                    {
                        long b = rng.NextInt64(SizeBlocks);
                        Write(c, mine, b * B, Blocks.Pattern(k, b));
                    }
                    // A run crossing a leaf boundary (blocks 250..261 at level 1, moving up 16 blocks a level).
                    long run = 250 + 16 * (k - 1);
                    Write(c, mine, run * B, Fill((byte)(0x40 + k), 12 * B));
                    // Every third level trims a range, which must read as zeros here and below, not as the origin's data.
                    if (k % 3 == 0)
                    {
                        long t = rng.NextInt64(SizeBlocks - 8);
                        c.Trim(t * B, 8 * B);
                        mine.AsSpan((int)(t * B), 8 * B).Clear();
                    }
                    // An unaligned write: read-modify-write of two blocks inherited from up the chain.
                    long at = rng.NextInt64(Size - 3 * B) + 1;
                    Write(c, mine, at, Fill((byte)(0x80 + k), B + 100));
                }
                models[name] = mine;
                // The origin changes after its snapshot: none of this may show through in the clone.
                using (var o = store.OpenVolume(prev))
                {
                    long b = rng.NextInt64(SizeBlocks);
                    Write(o, models[prev], b * B, Blocks.Pattern(100 + k, b));
                    o.Trim(((b + 500) % (SizeBlocks - 4)) * B, 4 * B);
                    models[prev].AsSpan((int)((b + 500) % (SizeBlocks - 4) * B), 4 * B).Clear();
                }
                prev = name;
            }
            VerifyAll(store, models);
        }
        using (var store = Open(dir))
            VerifyAll(store, models);
    }

    private static void VerifyAll(VolumeStore store, Dictionary<string, byte[]> models)
    {
        var whole = new byte[Size];
        var block = new byte[B];
        foreach (var (name, model) in models)
        {
            using var v = store.OpenVolume(name);
            v.Read(0, whole);
            AssertSame(name, model, whole, 0);
            // One block at a time: the path a 4 KiB random read takes.
            for (long b = 0; b < SizeBlocks; b++)
            {
                v.Read(b * B, block);
                AssertSame(name, model.AsSpan((int)(b * B), B), block, b * B);
            }
            // Runs that start and end inside blocks and span several levels' writes.
            var odd = new byte[37 * B + 1234];
            for (long at = 777; at + odd.Length <= Size; at += 29 * B + 511)
            {
                v.Read(at, odd);
                AssertSame(name, model.AsSpan((int)at, odd.Length), odd, at);
            }
        }
    }

    private static void AssertSame(string name, ReadOnlySpan<byte> expected, ReadOnlySpan<byte> actual, long offset)
    {
        int diff = expected.CommonPrefixLength(actual);
        if (diff < expected.Length)
            Assert.Fail($"'{name}' differs from its model at byte {offset + diff} (block {(offset + diff) / B})");
    }

    private static void Write(Volume v, byte[] model, long offset, byte[] data)
    {
        v.Write(offset, data);
        data.CopyTo(model, offset);
    }

    private static byte[] Fill(byte value, int length)
    {
        var data = new byte[length];
        data.AsSpan().Fill(value);
        return data;
    }
}
