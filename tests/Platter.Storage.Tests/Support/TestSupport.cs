using System.Globalization;
using Xunit;
using Xunit.Abstractions;

namespace Platter.Storage.Tests.Support;

/// <summary>
/// Seeds for randomized tests. PLATTER_TEST_SEED replays one seed; otherwise every run draws fresh ones,
/// so repeated CI runs keep exploring. The seed is always printed, and repeated in every failure message.
/// </summary>
internal static class Seeds
{
    public const string EnvironmentVariable = "PLATTER_TEST_SEED";

    public static int? Fixed =>
        Environment.GetEnvironmentVariable(EnvironmentVariable) is { Length: > 0 } s
        && int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) ? v : null;

    /// <summary>
    /// The seed for one slot of a theory (a <c>[SkippableTheory]</c>). When a replayed seed already runs in slot 0,
    /// every other slot has nothing to do and reports itself skipped: a slot that ran nothing must not count as passed.
    /// </summary>
    public static int ForSlot(int slot, ITestOutputHelper output, string testName)
    {
        if (Fixed is int f)
        {
            if (slot != 0)
                throw new SkipException($"{EnvironmentVariable}={f} replays a single seed, in slot 0; slot {slot} has nothing to run");
            output.WriteLine($"seed={f} (from {EnvironmentVariable}); replay: {EnvironmentVariable}={f} dotnet test --filter {testName}");
            return f;
        }
        int seed = Random.Shared.Next();
        output.WriteLine($"seed={seed}; replay: {EnvironmentVariable}={seed} dotnet test --filter {testName}");
        return seed;
    }
}

internal static class StorageAssert
{
    /// <summary>Asserts that <paramref name="action"/> fails with a <see cref="StorageException"/> carrying one of <paramref name="expected"/>.</summary>
    public static StorageException Throws(Action action, params StorageError[] expected) => Throws(action, "", expected);

    public static StorageException Throws(Action action, string context, params StorageError[] expected)
    {
        try
        {
            action();
        }
        catch (StorageException e)
        {
            if (Array.IndexOf(expected, e.Error) < 0)
                Assert.Fail($"{context} expected StorageException {string.Join(" or ", expected)}, got {e.Error}: {e.Message}");
            return e;
        }
        catch (Exception e)
        {
            Assert.Fail($"{context} expected StorageException {string.Join(" or ", expected)}, got {e.GetType().Name}: {e}");
        }
        Assert.Fail($"{context} expected StorageException {string.Join(" or ", expected)}, but the call succeeded");
        throw new InvalidOperationException("unreachable");
    }

    public static StorageException ThrowsFlush(Func<ValueTask> flush, params StorageError[] expected) =>
        Throws(() => flush().AsTask().GetAwaiter().GetResult(), expected);
}

internal static class Blocks
{
    public const int Size = 4096;

    public static bool IsZero(ReadOnlySpan<byte> span) => !span.ContainsAnyExcept((byte)0);

    /// <summary>
    /// A block whose every 8-byte word says who wrote it: (tag, block index, word index). Equal blocks are
    /// rare by construction, and a misplaced block can be traced back to its writer from any word.
    /// </summary>
    public static byte[] Pattern(long tag, long block)
    {
        var b = new byte[Size];
        FillPattern(b, tag, block);
        return b;
    }

    public static void FillPattern(Span<byte> b, long tag, long block)
    {
        for (int w = 0; w < b.Length / 8; w++)
        {
            ulong v = ((ulong)(tag & 0xFFFFFF) << 40) | ((ulong)(block & 0xFFFFFFF) << 12) | (uint)w;
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(b.Slice(w * 8, 8), v | 0x8000_0000_0000_0000UL);
        }
    }

    /// <summary>Describes a block for failure messages: zeros, or the writer named by its first word.</summary>
    public static string Describe(ReadOnlySpan<byte> b)
    {
        if (IsZero(b)) return "zeros";
        ulong v = System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(b);
        return $"first word 0x{v:x16} (tag {(v >> 40) & 0x7FFFFF}, block {(v >> 12) & 0xFFFFFFF}, word {v & 0xFFF})";
    }

    public static void Flush(this VolumeStore store) => store.FlushAsync().AsTask().GetAwaiter().GetResult();

    public static void Flush(this Volume volume) => volume.FlushAsync().AsTask().GetAwaiter().GetResult();

    public static byte[] ReadAll(this Volume volume, long offset, int length)
    {
        var b = new byte[length];
        volume.Read(offset, b);
        return b;
    }

    public static byte[] RandomBytes(Random rng, int length)
    {
        var b = new byte[length];
        rng.NextBytes(b);
        return b;
    }
}

internal static class Parallelism
{
    /// <summary>Runs each action on its own thread, waits for all, and rethrows the first failure (a thread's exception would otherwise kill the test host).</summary>
    public static void Run(IEnumerable<Action> actions)
    {
        var errors = new System.Collections.Concurrent.ConcurrentQueue<Exception>();
        var threads = actions.Select(a => new Thread(() =>
        {
            try { a(); }
            catch (Exception e) { errors.Enqueue(e); }
        })).ToList();
        foreach (var t in threads) t.Start();
        foreach (var t in threads) t.Join();
        if (!errors.IsEmpty) throw new AggregateException(errors);
    }
}
