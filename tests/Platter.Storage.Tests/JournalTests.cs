using Platter.Storage.Tests.Support;
using Xunit;
using Xunit.Abstractions;

namespace Platter.Storage.Tests;

/// <summary>
/// The journal alternates between two halves while a background thread checkpoints the half just left. These tests
/// write enough flushed data to switch halves many times, crash at various points, and check that recovery replays
/// exactly the committed history from both halves.
/// </summary>
public sealed class JournalTests(ITestOutputHelper output) : IDisposable
{
    private const int B = Blocks.Size;
    private readonly TempDirectory _dir = new();

    [SkippableTheory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    public void Crashes_after_many_half_switches_keep_every_flushed_write(int slot)
    {
        int seed = Seeds.ForSlot(slot, output, nameof(Crashes_after_many_half_switches_keep_every_flushed_write));
        var rng = new Random(seed);
        var faults = new FaultyStore();
        const long blocks = 512; // 2 MiB volume
        var durable = new Dictionary<long, long>(); // block -> tag of its last flushed write
        long tag = 0;

        var store = faults.Open(_dir.Path);
        store.CreateVolume("v", blocks * B);
        for (int round = 0; round < 4; round++)
        {
            var volume = store.OpenVolume("v");
            // Each flush journals ~100 single-block extents (~3.5 KiB); 300 flushes cross a 512 KiB half twice or more.
            int flushes = 200 + rng.Next(200);
            for (int f = 0; f < flushes; f++)
            {
                var written = new Dictionary<long, long>();
                for (int i = 0; i < 100; i++)
                {
                    long block = rng.NextInt64(blocks);
                    tag++;
                    volume.Write(block * B, Blocks.Pattern(tag, block));
                    written[block] = tag;
                }
                volume.Flush();
                foreach (var (block, t) in written) durable[block] = t;
            }
            long checkpointsBefore = store.Counters.Checkpoints;
            // Unflushed writes after the last flush may or may not survive: overwrite with a tag we can recognise.
            long unflushedTag = ++tag;
            var unflushed = new HashSet<long>();
            for (int i = 0; i < 20; i++)
            {
                long block = rng.NextInt64(blocks);
                volume.Write(block * B, Blocks.Pattern(unflushedTag, block));
                unflushed.Add(block);
            }
            Assert.True(checkpointsBefore > 0, $"seed={seed}: the journal never switched halves");
            faults.Crash(store, volume);

            store = faults.Open(_dir.Path);
            using var reopened = store.OpenVolume("v");
            for (long block = 0; block < blocks; block++)
            {
                var actual = reopened.ReadAll(block * B, B);
                bool durableOk = durable.TryGetValue(block, out long t)
                    ? actual.AsSpan().SequenceEqual(Blocks.Pattern(t, block))
                    : Blocks.IsZero(actual);
                bool unflushedOk = unflushed.Contains(block) && actual.AsSpan().SequenceEqual(Blocks.Pattern(unflushedTag, block));
                Assert.True(durableOk || unflushedOk,
                    $"seed={seed} round={round}: block {block} holds {Blocks.Describe(actual)}, expected tag {(durable.TryGetValue(block, out t) ? t : 0)}");
                if (unflushedOk) durable[block] = unflushedTag;
            }
            StoreChecks.AssertConsistent(store, $"seed={seed} round={round}");
        }
        store.Dispose();
    }

    public void Dispose() => _dir.Dispose();
}
