using Platter.Storage.Tests.Support;
using Xunit;
using Xunit.Abstractions;

namespace Platter.Storage.Tests;

/// <summary>
/// Model-based randomized test of versions: writes, trims, snapshots, clones (of clones), rollbacks, snapshot and
/// volume deletion, diffs, changed-extent maps, space usage, reopens and simulated crashes, checked against an oracle
/// that keeps a copy per snapshot. At the end everything is deleted and used space must return to zero.
/// Each run prints its seed; PLATTER_TEST_SEED=N replays one.
/// </summary>
public sealed class SnapshotModelTests(ITestOutputHelper output)
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
    public void Random_version_operations_match_the_model(int slot)
    {
        int seed = Seeds.ForSlot(slot, output, nameof(Random_version_operations_match_the_model));
        new Run(seed, output).Execute(operations: 500);
    }

    // The same with a map cache of one byte (decision 0019): every leaf loaded at open is dropped at once and rebuilt
    // from the metadata store whenever something needs it.
    [SkippableTheory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    public void Random_version_operations_match_the_model_with_a_tiny_map_cache(int slot)
    {
        int seed = Seeds.ForSlot(slot, output, nameof(Random_version_operations_match_the_model_with_a_tiny_map_cache));
        new Run(seed, output, mapCacheBytes: 1).Execute(operations: 500);
    }

    private sealed class Snap(string volume, string name, VolumeModel content)
    {
        public readonly string Volume = volume;
        public readonly string Name = name;
        public readonly VolumeModel Content = content;
        public readonly HashSet<long> Touched = []; // blocks the volume changed since (a superset of what Diff may report)
        public readonly List<string> Clones = [];
        public string Full => $"{Volume}@{Name}";
    }

    private sealed class Run(int seed, ITestOutputHelper output, long mapCacheBytes = StoreOptions.MapCacheBytesDefault)
    {
        private readonly Random _rng = new(seed);
        private readonly FaultyStore _faults = new() { MapCacheBytes = mapCacheBytes };
        private readonly List<string> _volumes = [];
        private readonly Dictionary<string, VolumeModel> _models = [];
        private readonly Dictionary<string, List<Snap>> _snaps = [];
        private readonly Dictionary<string, Volume> _handles = [];
        private readonly Queue<string> _recent = new();
        private VolumeStore _store = null!;
        private int _op, _nextName;

        private string Where => $"seed={seed} op={_op}";

        private void Log(string what)
        {
            _recent.Enqueue($"#{_op} {what}");
            if (_recent.Count > 30) _recent.Dequeue();
        }

        public void Execute(int operations)
        {
            using var dir = new TempDirectory("platter-snapmodel");
            _store = Open(dir.Path);
            try
            {
                for (int i = 0; i < 2; i++) CreateVolume();
                for (_op = 0; _op < operations; _op++) Step(dir.Path);
                Reopen(dir.Path);
                VerifyAll("final");
                StoreChecks.AssertConsistent(_store, Where);
                DeleteEverything();
                Reopen(dir.Path);
                Assert.True(_store.GetUsage().UsedBytes == 0, $"{Where}: after deleting everything and reopening, {_store.GetUsage().UsedBytes} bytes are still used");
                StoreChecks.AssertConsistent(_store, $"{Where} after deleting everything");
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
                foreach (var h in _handles.Values) h.Dispose();
                _store.Dispose();
                output.WriteLine($"{Where}: done; {_nextName} names used");
            }
        }

        private string History => "\nlast operations:\n  " + string.Join("\n  ", _recent);

        private VolumeStore Open(string dir) => _faults.Open(dir, dataGrowthBytes: B * (long)_rng.Next(64, 512), commitIntervalMax: TimeSpan.FromMilliseconds(_rng.Next(2, 200)));

        private void CreateVolume()
        {
            string name = $"v{_nextName++}";
            long size = _rng.Next(1, 5) * MiB;
            Log($"create {name} {size}");
            _store.CreateVolume(name, size);
            Add(name, new VolumeModel(size));
        }

        private void Add(string name, VolumeModel model)
        {
            _volumes.Add(name);
            _models[name] = model;
            _snaps[name] = [];
            _handles[name] = _store.OpenVolume(name);
        }

        private void AllDurable()
        {
            foreach (var m in _models.Values) m.MarkDurable();
        }

        private void Touch(string volume, long offset, long length)
        {
            foreach (var s in _snaps[volume])
                for (long b = offset / B; b * B < offset + length; b++) s.Touched.Add(b);
        }

        private IEnumerable<Snap> AllSnaps => _snaps.Values.SelectMany(l => l);

        private void Step(string dir)
        {
            string name = _volumes[_rng.Next(_volumes.Count)];
            var vol = _handles[name];
            var model = _models[name];
            long size = model.SizeBytes;
            int dice = _rng.Next(1000);
            switch (dice)
            {
                case < 300: // write, aligned or not
                {
                    int len = (int)Math.Min(_rng.Next(2) == 0 ? _rng.Next(1, 9) * B : _rng.Next(1, 3 * B), size);
                    long off = _rng.Next(2) == 0 ? _rng.NextInt64(0, (size - len) / B + 1) * B : _rng.NextInt64(0, size - len + 1);
                    var data = new byte[len];
                    _rng.NextBytes(data);
                    Log($"{name} write {off}+{len}");
                    vol.Write(off, data);
                    model.Write(off, data);
                    Touch(name, off, len);
                    break;
                }
                case < 380: // trim
                {
                    long blocks = size / B;
                    long off = _rng.NextInt64(0, blocks) * B;
                    long len = Math.Min(_rng.Next(1, 64) * (long)B, size - off);
                    Log($"{name} trim {off}+{len}");
                    vol.Trim(off, len);
                    model.Zero(off, len);
                    Touch(name, off, len);
                    break;
                }
                case < 470: // read a volume or a snapshot and compare
                {
                    var snaps = _snaps[name];
                    if (snaps.Count > 0 && _rng.Next(2) == 0)
                    {
                        var s = snaps[_rng.Next(snaps.Count)];
                        Log($"read {s.Full}");
                        using var h = _store.OpenSnapshot(s.Volume, s.Name);
                        Compare(h, s.Content, s.Full);
                    }
                    else
                    {
                        Log($"read {name}");
                        Compare(vol, model, name);
                    }
                    break;
                }
                case < 560: // snapshot
                {
                    string snap = $"s{_nextName++}";
                    Log($"snapshot {name}@{snap}");
                    var info = _store.CreateSnapshot(name, snap);
                    Assert.Equal($"{name}@{snap}", info.FullName);
                    AllDurable();
                    _snaps[name].Add(new Snap(name, snap, model.CopyDurable()));
                    break;
                }
                case < 610: // clone a snapshot (of any volume, so clones of clones happen)
                {
                    var all = AllSnaps.ToList();
                    if (all.Count == 0 || _volumes.Count > 8) break;
                    var s = all[_rng.Next(all.Count)];
                    string clone = $"c{_nextName++}";
                    Log($"clone {s.Full} -> {clone}");
                    var info = _store.CloneSnapshot(s.Volume, s.Name, clone);
                    Assert.Equal(s.Full, info.Origin);
                    AllDurable();
                    s.Clones.Add(clone);
                    Add(clone, s.Content.CopyDurable());
                    break;
                }
                case < 660: // rollback
                {
                    var snaps = _snaps[name];
                    if (snaps.Count == 0) break;
                    int i = _rng.Next(snaps.Count);
                    var s = snaps[i];
                    var newer = snaps.Skip(i + 1).ToList();
                    bool recursive = _rng.Next(3) != 0;
                    Log($"rollback {s.Full} recursive={recursive} (newer: {newer.Count})");
                    if ((newer.Count > 0 && !recursive) || newer.Any(n => n.Clones.Count > 0))
                    {
                        StorageAssert.Throws(() => _store.RollbackVolume(name, s.Name, recursive), Where, StorageError.HasDependents);
                        break;
                    }
                    _store.RollbackVolume(name, s.Name, recursive);
                    AllDurable();
                    snaps.RemoveRange(i + 1, newer.Count);
                    _models[name] = s.Content.CopyDurable();
                    s.Touched.Clear();
                    Assert.True(vol.SizeBytes == s.Content.SizeBytes, $"{Where}: size after rollback {vol.SizeBytes}, snapshot {s.Content.SizeBytes}");
                    break;
                }
                case < 710: // delete a snapshot
                {
                    var snaps = _snaps[name];
                    if (snaps.Count == 0) break;
                    var s = snaps[_rng.Next(snaps.Count)];
                    Log($"delete {s.Full} (clones {s.Clones.Count})");
                    if (s.Clones.Count > 0)
                    {
                        var e = StorageAssert.Throws(() => _store.DeleteSnapshot(s.Volume, s.Name), Where, StorageError.HasDependents);
                        Assert.Contains(s.Clones[0], e.Message);
                        break;
                    }
                    _store.DeleteSnapshot(s.Volume, s.Name);
                    AllDurable();
                    snaps.Remove(s);
                    break;
                }
                case < 740: // delete a volume
                {
                    if (_volumes.Count < 2) break;
                    bool recursive = _rng.Next(2) == 0;
                    var snaps = _snaps[name];
                    Log($"delete {name} recursive={recursive} (snapshots {snaps.Count})");
                    if ((snaps.Count > 0 && !recursive) || snaps.Any(s => s.Clones.Count > 0))
                    {
                        StorageAssert.Throws(() => _store.DeleteVolume(name, recursive), Where, StorageError.HasDependents);
                        break;
                    }
                    _store.DeleteVolume(name, recursive);
                    AllDurable();
                    _handles[name].Dispose();
                    _handles.Remove(name);
                    _volumes.Remove(name);
                    _models.Remove(name);
                    _snaps.Remove(name);
                    foreach (var s in AllSnaps) s.Clones.Remove(name);
                    break;
                }
                case < 800: // diff and changed extents against the oracle
                {
                    var snaps = _snaps[name];
                    if (snaps.Count == 0) break;
                    var s = snaps[_rng.Next(snaps.Count)];
                    Log($"diff {s.Full} {name}");
                    CheckDiff(s, name, vol, model);
                    break;
                }
                case < 830:
                    Log("space usage");
                    CheckSpaceUsage();
                    break;
                case < 880:
                    Log("flush");
                    _store.Flush();
                    AllDurable();
                    break;
                case < 900:
                    CreateVolume();
                    break;
                case < 920:
                {
                    long newSize = _rng.Next(1, 5) * MiB;
                    Log($"{name} resize {size} -> {newSize}");
                    _store.ResizeVolume(name, newSize, allowShrink: true);
                    model.Resize(newSize);
                    if (newSize < size) Touch(name, newSize, size - newSize);
                    AllDurable();
                    break;
                }
                case < 940:
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
                    Crash(dir);
                    break;
            }
        }

        private void Compare(Volume handle, VolumeModel model, string what)
        {
            Assert.True(handle.SizeBytes == model.SizeBytes, $"{Where}: {what} size {handle.SizeBytes}, model {model.SizeBytes}");
            var actual = new byte[handle.SizeBytes];
            var expected = new byte[handle.SizeBytes];
            handle.Read(0, actual);
            model.Read(0, expected);
            int same = actual.AsSpan().CommonPrefixLength(expected);
            if (same < actual.Length) Assert.Fail($"{Where}: {what} differs from the model at offset {same} (block {same / B})");
        }

        private void VerifyAll(string when)
        {
            foreach (var name in _volumes)
            {
                Compare(_handles[name], _models[name], $"{name} {when}");
                foreach (var s in _snaps[name])
                {
                    using var h = _store.OpenSnapshot(s.Volume, s.Name);
                    Compare(h, s.Content, $"{s.Full} {when}");
                }
            }
            Assert.Equal(_volumes.OrderBy(n => n, StringComparer.Ordinal), _store.ListVolumes().Select(v => v.Name));
            Assert.Equal(AllSnaps.Select(s => s.Full).Order(StringComparer.Ordinal), _store.ListSnapshots().Select(s => s.FullName).Order(StringComparer.Ordinal));
        }

        private void CheckDiff(Snap s, string name, Volume vol, VolumeModel model)
        {
            var diff = _store.Diff(name, s.Name, null);
            var reported = new HashSet<long>();
            long pos = -1;
            foreach (var c in diff)
            {
                Assert.True(c.Offset > pos && c.Length > 0 && c.Offset % B == 0 && c.Length % B == 0, $"{Where}: diff run {c} out of order or unaligned");
                pos = c.Offset + c.Length - 1;
                for (long b = c.Offset / B; b * B < c.Offset + c.Length; b++) reported.Add(b);
                if (!c.Allocated && c.Offset < model.SizeBytes)
                    Assert.True(model.IsZeroRange(c.Offset, Math.Min(c.Length, model.SizeBytes - c.Offset)), $"{Where}: diff says {c} is unallocated but the model holds data there");
            }
            long blocks = Math.Max(model.SizeBytes, s.Content.SizeBytes) / B;
            var a = new byte[B];
            var b2 = new byte[B];
            for (long blk = 0; blk < blocks; blk++)
            {
                a.AsSpan().Clear();
                b2.AsSpan().Clear();
                if (blk * B < s.Content.SizeBytes) s.Content.Read(blk * B, a);
                if (blk * B < model.SizeBytes) model.Read(blk * B, b2);
                bool differs = !a.AsSpan().SequenceEqual(b2);
                if (differs) Assert.True(reported.Contains(blk), $"{Where}: block {blk} changed since {s.Full} but the diff does not list it");
                if (reported.Contains(blk))
                    Assert.True(s.Touched.Contains(blk), $"{Where}: the diff lists block {blk} of {s.Full}, which was not touched since");
            }
            // The NBD dirty-bitmap view must agree with the diff over the whole volume.
            var runs = new VolumeExtent[64];
            long at = 0;
            while (at < vol.SizeBytes)
            {
                int n = vol.GetChangedExtents(s.Name, at, vol.SizeBytes - at, runs);
                Assert.True(n > 0, $"{Where}: GetChangedExtents returned nothing at {at}");
                foreach (var r in runs.AsSpan(0, n))
                {
                    Assert.True(r.Offset == at, $"{Where}: changed-extent run {r} does not continue at {at}");
                    for (long blk = r.Offset / B; blk * B < r.Offset + r.Length; blk++)
                        Assert.True(reported.Contains(blk) == r.Allocated, $"{Where}: block {blk}: dirty={r.Allocated} but diff says {reported.Contains(blk)}");
                    at += r.Length;
                }
            }
        }

        private void CheckSpaceUsage()
        {
            var usage = _store.GetSpaceUsage();
            var names = _volumes.Concat(AllSnaps.Select(s => s.Full)).Order(StringComparer.Ordinal).ToList();
            Assert.Equal(names, usage.Select(u => u.Name).Order(StringComparer.Ordinal));
            foreach (var u in usage)
                Assert.True(u.UniqueBytes >= 0 && u.SharedBytes >= 0 && u.UniqueBytes + u.SharedBytes == u.AllocatedBytes, $"{Where}: {u}");
            _store.Flush();
            AllDurable();
            long used = _store.GetUsage().UsedBytes;
            Assert.True(usage.Sum(u => u.UniqueBytes) <= used, $"{Where}: unique bytes {usage.Sum(u => u.UniqueBytes)} exceed used {used}");
        }

        private void DeleteEverything()
        {
            // Clones were created after their origins, so newest first never deletes an origin before its clones.
            foreach (var name in _volumes.AsEnumerable().Reverse().ToList())
            {
                _handles[name].Dispose();
                _handles.Remove(name);
                _store.DeleteVolume(name, recursive: true);
            }
            _volumes.Clear();
            _models.Clear();
            _snaps.Clear();
            _store.Flush();
            StoreChecks.AssertConsistent(_store, $"{Where} after deleting everything");
            Assert.True(_store.GetUsage().UsedBytes == 0, $"{Where}: after deleting everything {_store.GetUsage().UsedBytes} bytes are still used");
        }

        private void Reopen(string dir)
        {
            foreach (var h in _handles.Values) h.Dispose();
            _handles.Clear();
            _store.Dispose();
            AllDurable();
            _store = Open(dir);
            foreach (var n in _volumes) _handles[n] = _store.OpenVolume(n);
        }

        private void Crash(string dir)
        {
            _faults.Crash(_store, [.. _handles.Values]);
            _handles.Clear();
            _store = Open(dir);
            foreach (var name in _volumes)
            {
                var vol = _handles[name] = _store.OpenVolume(name);
                var model = _models[name];
                Assert.True(vol.SizeBytes == model.SizeBytes, $"{Where} after crash: {name} size {vol.SizeBytes}, model {model.SizeBytes}");
                var buf = new byte[B];
                for (long blk = 0; blk < vol.SizeBytes / B; blk++)
                {
                    vol.Read(blk * B, buf);
                    if (!model.IsAllowedAfterCrash(blk, buf, out string why)) Assert.Fail($"{Where} after crash: {name} block {blk}: {why}");
                    model.AcceptRecovered(blk, buf);
                }
                foreach (var s in _snaps[name])
                {
                    using var h = _store.OpenSnapshot(s.Volume, s.Name);
                    Compare(h, s.Content, $"{s.Full} after crash");
                }
            }
            StoreChecks.AssertConsistent(_store, $"{Where} after crash");
        }
    }
}
