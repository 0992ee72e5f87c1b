using Platter.Storage.Internal;
using Platter.Storage.Tests.Support;
using Xunit;

namespace Platter.Storage.Tests;

/// <summary>
/// The engine with more written leaves than a volume keeps dense (decision 0010): writes, snapshots, clones, trims,
/// reopen and the consistency check stay correct while leaves go packed and back. That packing happened is asserted by
/// its counter, not inferred from timing or memory.
/// </summary>
// Not in parallel with the other class that counts packed leaves: MapTree.LeavesPacked is process-wide.
[Collection(MapTreeTests.PackingCounter)]
public sealed class PackedMapTests
{
    private const int B = Blocks.Size;
    private const long MiB = 1 << 20;

    [Fact]
    public async Task Volumes_snapshots_and_clones_read_back_with_more_leaves_than_stay_dense()
    {
        using var dir = new TempDirectory("platter-packed");
        int leaves = EngineLimits.DenseLeavesPerMapMax + 200;
        long size = leaves * MiB;
        var block = new byte[B];
        byte Tag(int leaf, int version) => (byte)(1 + (leaf * 7 + version * 31) % 250);
        long packedBefore = MapTree.LeavesPacked;
        using (var store = VolumeStore.Open(dir.Path, new StoreOptions { JournalRegionBytes = 8 << 20 }))
        {
            store.CreateVolume("vm", size);
            using (var vol = store.OpenVolume("vm"))
            {
                // One 4 KiB block (plus its neighbour, physically next: a run) in every MiB: one leaf each.
                for (int l = 0; l < leaves; l++)
                {
                    block.AsSpan().Fill(Tag(l, 0));
                    vol.Write(l * MiB, block);
                    vol.Write(l * MiB + B, block);
                }
                await vol.FlushAsync();
            }
            Assert.True(MapTree.LeavesPacked - packedBefore >= 200, $"only {MapTree.LeavesPacked - packedBefore} leaves were packed");
            store.CreateSnapshot("vm", "s1");
            store.CloneSnapshot("vm", "s1", "clone");
            using (var vol = store.OpenVolume("vm"))
            using (var clone = store.OpenVolume("clone"))
            {
                // Overwrite every third leaf's first block in the volume, trim every fifth's second in the clone:
                // packed leaves of a frozen version get copied, unpacked and packed again.
                for (int l = 0; l < leaves; l += 3)
                {
                    block.AsSpan().Fill(Tag(l, 1));
                    vol.Write(l * MiB, block);
                }
                for (int l = 0; l < leaves; l += 5) clone.Trim(l * MiB + B, B);
                await vol.FlushAsync();
                await clone.FlushAsync();
            }
            Verify(store, leaves, Tag, "before reopen");
            StoreChecks.AssertConsistent(store, "before reopen");
        }
        using (var store = VolumeStore.Open(dir.Path, new StoreOptions { JournalRegionBytes = 8 << 20 }))
        {
            Verify(store, leaves, Tag, "after reopen");
            StoreChecks.AssertConsistent(store, "after reopen");
        }
    }

    private static void Verify(VolumeStore store, int leaves, Func<int, int, byte> tag, string when)
    {
        using var vol = store.OpenVolume("vm");
        using var snap = store.OpenSnapshot("vm", "s1");
        using var clone = store.OpenVolume("clone");
        var buffer = new byte[2 * B];
        for (int l = 0; l < leaves; l++)
        {
            Check(snap, l, tag(l, 0), tag(l, 0), "vm@s1");
            Check(vol, l, l % 3 == 0 ? tag(l, 1) : tag(l, 0), tag(l, 0), "vm");
            Check(clone, l, tag(l, 0), l % 5 == 0 ? (byte)0 : tag(l, 0), "clone");
        }

        void Check(Volume v, int l, byte first, byte second, string name)
        {
            v.Read(l * MiB, buffer);
            Assert.True(buffer.AsSpan(0, B).IndexOfAnyExcept(first) < 0 && buffer.AsSpan(B).IndexOfAnyExcept(second) < 0,
                $"{when}: {name} at leaf {l} reads {buffer[0]}/{buffer[B]}, expected {first}/{second}");
        }
    }
}
