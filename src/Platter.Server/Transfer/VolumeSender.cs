using System.Buffers;

namespace Platter.Server.Transfer;

/// <summary>
/// Produces a send stream of a snapshot through the backend seam, so it works the same for every backend. A full
/// stream carries the snapshot's allocated, non-zero data; an incremental one carries exactly the ranges
/// <see cref="IVolumeBackend.Diff"/> reports between the base and the snapshot (new data as data records, ranges
/// that now read as zeros as zero records), so its size and time follow the change, not the volume.
/// </summary>
public sealed class VolumeSender(IVolumeBackend store, SnapshotIdentities identities)
{
    // A zero run shorter than this inside a data range is sent as data: a record head costs 28 bytes, and the
    // engine allocates in 4 KiB blocks, so splitting finer would not keep anything more unallocated.
    private const int ZeroRunBytesMin = 4096;

    /// <summary>Checks the request and returns the header to send; NotFound for a missing volume or snapshot.</summary>
    public SendStreamHeader Prepare(string volume, string snapshot, string? fromSnapshot)
    {
        var info = store.GetVolumeInfo(volume);
        var snap = store.GetSnapshotInfo(volume, snapshot);
        Guid baseId = Guid.Empty;
        if (fromSnapshot is not null)
        {
            var from = store.GetSnapshotInfo(volume, fromSnapshot);
            if (from.Id == snap.Id)
                throw new StorageException(StorageError.InvalidArgument, $"the base '{volume}@{fromSnapshot}' is the snapshot being sent");
            if (from.CreatedUtc > snap.CreatedUtc || from.Id > snap.Id)
                throw new StorageException(StorageError.InvalidArgument,
                    $"the base '{volume}@{fromSnapshot}' is newer than '{volume}@{snapshot}': send from an older snapshot");
            baseId = identities.GetOrAssign(info, from);
        }
        var id = identities.GetOrAssign(info, snap);
        return new SendStreamHeader(snap.SizeBytes, snapshot, id, fromSnapshot, baseId, volume, snap.CreatedUtc);
    }

    /// <summary>Writes the whole stream for <paramref name="header"/> (from <see cref="Prepare"/>) to <paramref name="output"/>.</summary>
    public async Task<SendSummary> SendAsync(string volume, SendStreamHeader header, Stream output, CancellationToken cancellationToken)
    {
        var writer = new SendStreamWriter(output);
        await writer.WriteHeaderAsync(header, cancellationToken).ConfigureAwait(false);
        using var handle = store.OpenSnapshotHandle(volume, header.Snapshot);
        byte[] buffer = ArrayPool<byte>.Shared.Rent(SendStream.RecordPayloadBytesMax);
        try
        {
            if (header.BaseSnapshot is null)
            {
                foreach (var (offset, length) in AllocatedRanges(handle))
                    await SendRangeAsync(handle, writer, offset, length, sendZeros: false, buffer, cancellationToken).ConfigureAwait(false);
            }
            else
            {
                foreach (var change in store.Diff(volume, header.BaseSnapshot, header.Snapshot))
                {
                    // The diff may cover a range past a shrunk snapshot's end; the receiver's resize discards it.
                    long end = Math.Min(change.Offset + change.Length, header.VolumeSizeBytes);
                    if (end <= change.Offset) continue;
                    if (change.Allocated)
                        await SendRangeAsync(handle, writer, change.Offset, end - change.Offset, sendZeros: true, buffer, cancellationToken).ConfigureAwait(false);
                    else
                        await writer.WriteZeroAsync(change.Offset, end - change.Offset, cancellationToken).ConfigureAwait(false);
                }
            }
            await writer.WriteEndAsync(cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
        return new SendSummary(writer.BytesWritten);
    }

    private static IEnumerable<(long Offset, long Length)> AllocatedRanges(IVolumeHandle handle)
    {
        var extents = new VolumeExtent[256];
        long size = handle.SizeBytes;
        long at = 0;
        long runStart = -1;
        while (at < size)
        {
            int n = handle.GetExtents(at, size - at, extents);
            if (n == 0) throw new InvalidOperationException($"the backend returned no extents at {at} of {handle.Name}");
            for (int i = 0; i < n; i++)
            {
                var e = extents[i];
                if (e.Allocated && runStart < 0) runStart = e.Offset;
                if (!e.Allocated && runStart >= 0)
                {
                    yield return (runStart, e.Offset - runStart);
                    runStart = -1;
                }
                at = e.Offset + e.Length;
            }
        }
        if (runStart >= 0) yield return (runStart, size - runStart);
    }

    /// <summary>
    /// Reads the range in record-sized pieces and sends the non-zero runs as data; zero runs are skipped (a full
    /// stream: the target starts empty) or sent as zero records (an incremental one: the target had data there).
    /// </summary>
    private static async Task SendRangeAsync(IVolumeHandle handle, SendStreamWriter writer, long offset, long length, bool sendZeros,
        byte[] buffer, CancellationToken cancellationToken)
    {
        long end = offset + length;
        while (offset < end)
        {
            int chunk = (int)Math.Min(SendStream.RecordPayloadBytesMax, end - offset);
            await handle.ReadAsync(offset, buffer.AsMemory(0, chunk), cancellationToken).ConfigureAwait(false);
            int at = 0;
            while (at < chunk)
            {
                int zeros = ZeroRun(buffer.AsSpan(at, chunk - at));
                if (zeros > 0)
                {
                    if (sendZeros) await writer.WriteZeroAsync(offset + at, zeros, cancellationToken).ConfigureAwait(false);
                    at += zeros;
                    continue;
                }
                int data = DataRun(buffer.AsSpan(at, chunk - at));
                await writer.WriteDataAsync(offset + at, buffer.AsMemory(at, data), cancellationToken).ConfigureAwait(false);
                at += data;
            }
            offset += chunk;
        }
    }

    /// <summary>Length of the zero run at the start of <paramref name="span"/> in whole 4 KiB pieces (or all of a zero tail); 0 when none.</summary>
    private static int ZeroRun(ReadOnlySpan<byte> span)
    {
        int at = 0;
        while (at < span.Length)
        {
            int piece = Math.Min(ZeroRunBytesMin, span.Length - at);
            if (span.Slice(at, piece).ContainsAnyExcept((byte)0)) break;
            at += piece;
        }
        return at;
    }

    /// <summary>Length of the data run at the start of <paramref name="span"/>: up to the next whole zero 4 KiB piece.</summary>
    private static int DataRun(ReadOnlySpan<byte> span)
    {
        int at = 0;
        while (at < span.Length)
        {
            int piece = Math.Min(ZeroRunBytesMin, span.Length - at);
            if (at > 0 && !span.Slice(at, piece).ContainsAnyExcept((byte)0)) break;
            at += piece;
        }
        return at;
    }
}

/// <summary>What a send wrote.</summary>
/// <param name="StreamBytes">Bytes of the stream.</param>
public sealed record SendSummary(long StreamBytes);
