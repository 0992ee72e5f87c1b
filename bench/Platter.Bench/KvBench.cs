using System.Buffers.Binary;
using System.Diagnostics;
using Platter.Lmdb;

// Measures the metadata store the way the engine uses it: 16-byte keys, 24-byte values, random order,
// 1,000 keys per transaction. The numbers behind docs/decisions/0001-metadata-store-lmdb.md.
internal static class KvBench
{
    public static void Run(string directory, int keys)
    {
        if (Directory.Exists(directory)) Directory.Delete(directory, recursive: true);
        Directory.CreateDirectory(directory);
        var rnd = new Random(42);
        var ids = Enumerable.Range(0, keys).Select(_ => rnd.NextInt64()).ToArray();
        Span<byte> key = stackalloc byte[16];
        Span<byte> value = stackalloc byte[24];

        foreach (bool durable in new[] { false, true })
        {
            string dir = Path.Combine(directory, durable ? "durable" : "nosync");
            Directory.CreateDirectory(dir);
            using var env = LmdbEnvironment.Open(dir, 8L << 30, 4, noSync: !durable);
            LmdbDatabase db;
            using (var t = env.BeginTransaction(false)) { db = t.OpenDatabase("kv", true); t.Commit(); }
            int count = durable ? Math.Min(keys, 200_000) : keys;
            var sw = Stopwatch.StartNew();
            for (int i = 0; i < count; i += 1000)
            {
                using var txn = env.BeginTransaction(false);
                for (int j = i; j < Math.Min(count, i + 1000); j++)
                {
                    BinaryPrimitives.WriteInt64BigEndian(key, ids[j]);
                    BinaryPrimitives.WriteInt64BigEndian(key[8..], j);
                    BinaryPrimitives.WriteInt64LittleEndian(value, j);
                    txn.Put(db, key, value);
                }
                txn.Commit();
            }
            Console.WriteLine($"lmdb insert ({(durable ? "durable commit" : "no sync")}, 1000/txn) {count / sw.Elapsed.TotalSeconds,12:N0} keys/s");
            if (durable) continue;

            sw.Restart();
            long found = 0;
            using (var txn = env.BeginTransaction(true))
            {
                for (int j = 0; j < count; j++)
                {
                    int k = rnd.Next(count);
                    BinaryPrimitives.WriteInt64BigEndian(key, ids[k]);
                    BinaryPrimitives.WriteInt64BigEndian(key[8..], k);
                    if (txn.TryGet(db, key, out _)) found++;
                }
            }
            Console.WriteLine($"lmdb point lookup                      {count / sw.Elapsed.TotalSeconds,12:N0} keys/s ({found} found)");

            sw.Restart();
            long scanned = 0;
            using (var txn = env.BeginTransaction(true))
            using (var cursor = txn.OpenCursor(db))
            {
                for (bool ok = cursor.First(); ok; ok = cursor.Next()) scanned++;
            }
            Console.WriteLine($"lmdb ordered scan                      {scanned / sw.Elapsed.TotalSeconds,12:N0} keys/s");
        }
        Directory.Delete(directory, recursive: true);
    }
}
