using System.Buffers;
using System.IO.Pipelines;

namespace Platter.Nbd.Internal;

/// <summary>The peer broke the protocol in a way that leaves the stream unparseable: the connection is closed.</summary>
internal sealed class NbdProtocolException(string message) : Exception(message);

internal static class PipeHelpers
{
    /// <summary>Copies exactly <paramref name="destination"/>.Length bytes; false on end of stream.</summary>
    public static async ValueTask<bool> ReadExactAsync(this PipeReader reader, Memory<byte> destination, CancellationToken cancellationToken)
    {
        while (destination.Length > 0)
        {
            ReadResult result = await reader.ReadAsync(cancellationToken).ConfigureAwait(false);
            if (result.IsCanceled) throw new OperationCanceledException();
            ReadOnlySequence<byte> buffer = result.Buffer;
            long take = Math.Min(buffer.Length, destination.Length);
            buffer.Slice(0, take).CopyTo(destination.Span);
            destination = destination[(int)take..];
            reader.AdvanceTo(buffer.GetPosition(take));
            if (destination.Length > 0 && result.IsCompleted) return false;
        }
        return true;
    }

    /// <summary>Discards exactly <paramref name="count"/> bytes without holding them; false on end of stream.</summary>
    public static async ValueTask<bool> SkipAsync(this PipeReader reader, long count, CancellationToken cancellationToken)
    {
        while (count > 0)
        {
            ReadResult result = await reader.ReadAsync(cancellationToken).ConfigureAwait(false);
            if (result.IsCanceled) throw new OperationCanceledException();
            long take = Math.Min(result.Buffer.Length, count);
            count -= take;
            reader.AdvanceTo(result.Buffer.GetPosition(take));
            if (count > 0 && result.IsCompleted) return false;
        }
        return true;
    }
}
