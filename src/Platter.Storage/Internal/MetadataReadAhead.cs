using System.Buffers;
using Microsoft.Win32.SafeHandles;

namespace Platter.Storage.Internal;

/// <summary>
/// Reads the metadata file into the page cache ahead of open's walk over every extent record (issue 15 target 5). The
/// LMDB environment is opened with NORDAHEAD, right for lookups but not for a walk: on a cold page cache (a node's
/// reboot) the walk faulted in one 4 KiB page at a time, in key order, scattered over the file — 12 s for a 515 MB
/// file of 10 M records, which the disk reads front to back in 1.2 s. A thread reads the file sequentially while the
/// walk runs (plain buffered reads into one reused buffer: posix_fadvise WILLNEED queued only the first 128 MiB of it
/// here), so the walk's faults find the pages already read. Stopped and joined when the walk ends. Skipped for small
/// files, and when the file is more than half the machine's memory (read ahead, the pages the walk needs last would
/// push out those it needs next).
/// </summary>
internal sealed class MetadataReadAhead : IDisposable
{
    private const int ChunkBytes = 4 << 20;
    private const long SmallFileBytes = 32L << 20; // the walk's own faults are quick enough below this

    private readonly SafeFileHandle? _file;
    private readonly Thread? _thread;
    private volatile bool _stop;
    private long _read;

    /// <summary>Bytes read ahead so far.</summary>
    internal long BytesRead => Interlocked.Read(ref _read);

    public MetadataReadAhead(string path)
    {
        long length;
        try
        {
            _file = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete, FileOptions.SequentialScan);
            length = RandomAccess.GetLength(_file);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            _file?.Dispose();
            _file = null;
            return; // a hint only: the walk reads what it needs either way
        }
        long memory = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        if (length <= SmallFileBytes || length > memory / 2) return;
        _thread = new Thread(() => Run(length)) { IsBackground = true, Name = "metadata read-ahead" };
        _thread.Start();
    }

    private void Run(long length)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(ChunkBytes);
        try
        {
            for (long offset = 0; offset < length && !_stop;)
            {
                int n = RandomAccess.Read(_file!, buffer.AsSpan(0, ChunkBytes), offset);
                if (n == 0) break;
                offset += n;
                Interlocked.Add(ref _read, n);
            }
        }
        catch (IOException)
        {
            // A hint only, as above.
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    public void Dispose()
    {
        _stop = true;
        _thread?.Join();
        _file?.Dispose();
    }
}
