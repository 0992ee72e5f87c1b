using System.Text;
using Platter.Storage.Tests.Support;
using Xunit;
using Xunit.Abstractions;

namespace Platter.Storage.Tests;

/// <summary>
/// Model-based randomized test: random sequences of writes (aligned and unaligned), reads, trims,
/// write-zeroes, flushes, resizes, clean reopens and simulated crashes, on a few small volumes, checked
/// against <see cref="VolumeModel"/>. Each run prints its seed; PLATTER_TEST_SEED=N replays one.
/// </summary>
public sealed class ModelTests(ITestOutputHelper output)
{
    private const int B = Blocks.Size;
    private const long MiB = 1 << 20;

    [SkippableTheory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    [InlineData(5)]
    public void Random_operations_match_the_model(int slot)
    {
        int seed = Seeds.ForSlot(slot, output, nameof(Random_operations_match_the_model));
        new Run(seed, output).Execute(operations: 600);
    }

    // The same with a map cache of one byte (decision 0019): every leaf loaded at open is dropped at once and rebuilt
    // from the metadata store whenever something needs it.
    [SkippableTheory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    public void Random_operations_match_the_model_with_a_tiny_map_cache(int slot)
    {
        int seed = Seeds.ForSlot(slot, output, nameof(Random_operations_match_the_model_with_a_tiny_map_cache));
        new Run(seed, output, mapCacheBytes: 1).Execute(operations: 600);
    }

    private sealed class Run(int seed, ITestOutputHelper output, long mapCacheBytes = StoreOptions.MapCacheBytesDefault)
    {
        private readonly Random _rng = new(seed);
        private readonly FaultyStore _faults = new() { MapCacheBytes = mapCacheBytes };
        private readonly List<string> _names = [];
        private readonly Dictionary<string, VolumeModel> _models = [];
        private readonly Dictionary<string, Volume> _handles = [];
        private readonly Queue<string> _recent = new();
        private VolumeStore _store = null!;
        private TimeSpan _commitInterval;
        private int _op;

        private string Where => $"seed={seed} op={_op}";

        private void Log(string what)
        {
            _recent.Enqueue($"#{_op} {what}");
            if (_recent.Count > 25) _recent.Dequeue();
        }

        private string History => "\nlast operations:\n  " + string.Join("\n  ", _recent);

        public void Execute(int operations)
        {
            using var dir = new TempDirectory("platter-model");
            // Background commits every few ms interleave with the workload in some seeds, rarely in others.
            _commitInterval = _rng.Next(2) == 0 ? TimeSpan.FromMilliseconds(_rng.Next(1, 30)) : TimeSpan.FromSeconds(1);
            _store = _faults.Open(dir.Path, dataGrowthBytes: B * (long)_rng.Next(16, 512), commitIntervalMax: _commitInterval);
            int volumes = _rng.Next(1, 4);
            for (int i = 0; i < volumes; i++)
            {
                string name = $"vol{i}";
                long size = _rng.Next(1, 9) * MiB - _rng.Next(0, 64) * B;
                _store.CreateVolume(name, size);
                _names.Add(name);
                _models[name] = new VolumeModel(size);
            }
            OpenHandles();
            try
            {
                for (_op = 0; _op < operations; _op++) Step(dir.Path);
                _op = operations;
                Reopen(dir.Path);
                VerifyAll("final");
                StoreChecks.AssertConsistent(_store, Where);
            }
            catch (Exception e) when (e is not Xunit.Sdk.XunitException)
            {
                throw new Xunit.Sdk.XunitException($"{Where}: unexpected {e.GetType().Name}: {e.Message}{History}\n{e}");
            }
            catch (Xunit.Sdk.XunitException e)
            {
                throw new Xunit.Sdk.XunitException($"{e.Message}{History}");
            }
            finally
            {
                CloseAll();
                output.WriteLine($"{Where}: done; commit interval {_commitInterval.TotalMilliseconds} ms");
            }
        }

        private void OpenHandles()
        {
            foreach (var n in _names) _handles[n] = _store.OpenVolume(n);
        }

        private void CloseAll()
        {
            foreach (var h in _handles.Values) h.Dispose();
            _handles.Clear();
            _store?.Dispose();
        }

        private void Step(string dir)
        {
            string name = _names[_rng.Next(_names.Count)];
            var vol = _handles[name];
            var model = _models[name];
            long size = model.SizeBytes;
            int dice = _rng.Next(1000);
            switch (dice)
            {
                case < 250: // aligned write of whole blocks
                {
                    long blocks = size / B;
                    int count = (int)Math.Min(_rng.Next(1, 17), blocks);
                    long off = _rng.NextInt64(0, blocks - count + 1) * B;
                    var data = Content(count * B);
                    Log($"{name} write aligned {off}+{data.Length}");
                    vol.Write(off, data);
                    model.Write(off, data);
                    break;
                }
                case < 450: // unaligned write
                {
                    int len = _rng.Next(4) == 0 ? _rng.Next(1, 600) : _rng.Next(1, 3 * B + 1000);
                    len = (int)Math.Min(len, size);
                    long off = _rng.NextInt64(0, size - len + 1);
                    var data = Content(len);
                    Log($"{name} write {off}+{len}");
                    vol.Write(off, data);
                    model.Write(off, data);
                    break;
                }
                case < 470: // out of range: refused, nothing changes
                {
                    int len = _rng.Next(1, 2 * B);
                    long off = size - _rng.Next(0, len); // always reaches past the end
                    Log($"{name} write past end {off}+{len} (size {size})");
                    StorageAssert.Throws(() => vol.Write(off, new byte[len]), Where, StorageError.OutOfRange);
                    Log($"{name} read past end {off}+{len}");
                    StorageAssert.Throws(() => vol.Read(off, new byte[len]), Where, StorageError.OutOfRange);
                    break;
                }
                case < 650: // read and compare
                {
                    int len = (int)Math.Min(_rng.Next(4) == 0 ? _rng.Next(1, 100) : _rng.Next(1, 16 * B), size);
                    long off = _rng.Next(3) == 0 ? _rng.NextInt64(0, (size - len) / B + 1) * B : _rng.NextInt64(0, size - len + 1);
                    Log($"{name} read {off}+{len}");
                    CompareRange(name, off, len);
                    break;
                }
                case < 720: // trim
                case < 790: // write zeroes
                {
                    bool trim = dice < 720;
                    var (off, len) = Range(size);
                    Log($"{name} {(trim ? "trim" : "write-zeroes")} {off}+{len}");
                    if (trim) vol.Trim(off, len); else vol.WriteZeroes(off, len);
                    model.Zero(off, len);
                    break;
                }
                case < 850: // flush, through the store or any volume: either covers every volume
                {
                    bool viaStore = _rng.Next(2) == 0;
                    Log($"flush via {(viaStore ? "store" : name)}");
                    if (viaStore) _store.Flush(); else vol.Flush();
                    foreach (var m in _models.Values) m.MarkDurable();
                    break;
                }
                case < 880: // extents
                {
                    var (off, len) = Range(size);
                    Log($"{name} extents {off}+{len}");
                    CheckExtents(name, off, len);
                    break;
                }
                case < 910: // resize
                {
                    long newSize = _rng.Next(1, 9) * MiB - _rng.Next(0, 64) * B;
                    Log($"{name} resize {size} -> {newSize}");
                    _store.ResizeVolume(name, newSize, allowShrink: true);
                    model.Resize(newSize);
                    Assert.True(newSize == vol.SizeBytes, $"{Where}: handle of {name} says {vol.SizeBytes} after resize to {newSize}");
                    Assert.Equal(newSize, _store.GetVolumeInfo(name).SizeBytes);
                    break;
                }
                case < 930: // usage numbers after a flush
                {
                    Log("flush + usage");
                    _store.Flush();
                    foreach (var m in _models.Values) m.MarkDurable();
                    CheckUsage();
                    break;
                }
                case < 945:
                    Log("check");
                    StoreChecks.AssertConsistent(_store, Where);
                    break;
                case < 970:
                    Log("reopen");
                    Reopen(dir);
                    VerifyAll("after reopen");
                    break;
                default:
                    Log("crash");
                    CrashAndRecover(dir);
                    break;
            }
        }

        /// <summary>Random bytes, or now and then a block of zeros or a short repeating pattern (compressible, zero-detecting engines).</summary>
        private byte[] Content(int length)
        {
            var data = new byte[length];
            int kind = _rng.Next(10);
            if (kind == 0) return data;
            if (kind == 1) { data.AsSpan().Fill((byte)_rng.Next(1, 256)); return data; }
            _rng.NextBytes(data);
            return data;
        }

        private (long Offset, long Length) Range(long size)
        {
            long off, len;
            if (_rng.Next(2) == 0)
            {
                long blocks = size / B;
                off = _rng.NextInt64(0, blocks) * B;
                len = Math.Min(_rng.Next(1, 64) * (long)B, blocks * B - off);
            }
            else
            {
                len = Math.Min(_rng.Next(1, 5 * B), size);
                off = _rng.NextInt64(0, size - len + 1);
            }
            return (off, len);
        }

        private void CompareRange(string name, long off, int len)
        {
            var actual = new byte[len];
            _handles[name].Read(off, actual);
            var expected = new byte[len];
            _models[name].Read(off, expected);
            int diff = actual.AsSpan().CommonPrefixLength(expected);
            if (diff < len)
                Assert.Fail($"{Where}: {name} at {off + diff} (block {(off + diff) / B}) reads {actual[diff]}, model says {expected[diff]}; read was {off}+{len}");
        }

        private void VerifyAll(string when)
        {
            foreach (var name in _names)
            {
                var vol = _handles[name];
                Assert.True(_models[name].SizeBytes == vol.SizeBytes, $"{Where} {when}: {name} size {vol.SizeBytes}, model {_models[name].SizeBytes}");
                for (long off = 0; off < vol.SizeBytes; off += MiB)
                    CompareRange(name, off, (int)Math.Min(MiB, vol.SizeBytes - off));
            }
        }

        private void CheckExtents(string name, long off, long len)
        {
            var vol = _handles[name];
            var model = _models[name];
            var runs = new VolumeExtent[_rng.Next(1, 8)];
            long pos = off, end = off + len;
            while (pos < end)
            {
                int n = vol.GetExtents(pos, end - pos, runs);
                Assert.True(n >= 1 && n <= runs.Length, $"{Where}: GetExtents returned {n}");
                foreach (var r in runs.AsSpan(0, n))
                {
                    Assert.True(r.Offset == pos && r.Length > 0 && r.Offset + r.Length <= end,
                        $"{Where}: {name} extents from {off}+{len}: run {r} does not continue at {pos}");
                    // Allocated runs may hold zeros; unallocated runs must read as zeros.
                    if (!r.Allocated)
                        Assert.True(model.IsZeroRange(r.Offset, r.Length), $"{Where}: {name} run {r} is reported unallocated but holds data");
                    pos += r.Length;
                }
            }
        }

        private void CheckUsage()
        {
            long sum = 0;
            var ext = new VolumeExtent[256];
            foreach (var name in _names)
            {
                var info = _store.GetVolumeInfo(name);
                long nonZero = _models[name].NonZeroBlocks.Count() * (long)B;
                Assert.True(info.AllocatedBytes >= nonZero && info.AllocatedBytes <= info.SizeBytes + B,
                    $"{Where}: {name} AllocatedBytes {info.AllocatedBytes}, but {nonZero} bytes of blocks hold data (size {info.SizeBytes})");
                long mapped = 0, pos = 0;
                while (pos < info.SizeBytes)
                {
                    int n = _handles[name].GetExtents(pos, info.SizeBytes - pos, ext);
                    foreach (var r in ext.AsSpan(0, n)) { if (r.Allocated) mapped += r.Length; pos = r.Offset + r.Length; }
                }
                Assert.True(mapped == info.AllocatedBytes, $"{Where}: {name} AllocatedBytes {info.AllocatedBytes} but its extents map {mapped}");
                sum += info.AllocatedBytes!.Value; // the engine always counts it
            }
            var u = _store.GetUsage();
            Assert.True(u.UsedBytes == sum, $"{Where}: UsedBytes {u.UsedBytes}, volumes allocate {sum}");
            Assert.True(u.UsedBytes + u.FreeBytes <= u.DataFileBytes, $"{Where}: {u}");
            Assert.Equal(_names.Count, u.VolumeCount);
            Assert.Equal(_models.Values.Sum(m => m.SizeBytes), u.ProvisionedBytes);
        }

        private void Reopen(string dir)
        {
            CloseAll(); // Dispose flushes: everything acknowledged is durable
            foreach (var m in _models.Values) m.MarkDurable();
            _store = _faults.Open(dir, dataGrowthBytes: B * (long)_rng.Next(16, 512), commitIntervalMax: _commitInterval);
            Assert.Equal(_names.OrderBy(n => n, StringComparer.Ordinal), _store.ListVolumes().Select(v => v.Name).OrderBy(n => n, StringComparer.Ordinal));
            OpenHandles();
        }

        private void CrashAndRecover(string dir)
        {
            _faults.Crash(_store, _handles.Values.ToArray());
            _handles.Clear();
            _store = _faults.Open(dir, dataGrowthBytes: B * (long)_rng.Next(16, 512), commitIntervalMax: _commitInterval);
            OpenHandles();
            var sb = new StringBuilder();
            foreach (var name in _names)
            {
                var vol = _handles[name];
                var model = _models[name];
                Assert.True(model.SizeBytes == vol.SizeBytes, $"{Where} after crash: {name} size {vol.SizeBytes}, model {model.SizeBytes} (resize is durable on return)");
                var buf = new byte[MiB];
                int uncertain = model.UncertainBlocks.Count();
                for (long off = 0; off < vol.SizeBytes; off += MiB)
                {
                    int len = (int)Math.Min(MiB, vol.SizeBytes - off);
                    vol.Read(off, buf.AsSpan(0, len));
                    for (int i = 0; i < len; i += B)
                    {
                        long blk = (off + i) / B;
                        var full = buf.AsSpan(i, B); // sizes are whole blocks
                        if (!model.IsAllowedAfterCrash(blk, full, out string why))
                            Assert.Fail($"{Where} after crash: {name} block {blk}: {why}");
                        model.AcceptRecovered(blk, full);
                    }
                }
                sb.Append($"{name}: {uncertain} uncertain blocks; ");
            }
            output.WriteLine($"{Where}: crash recovered ({sb})");
            StoreChecks.AssertConsistent(_store, $"{Where} after crash");
        }
    }
}
