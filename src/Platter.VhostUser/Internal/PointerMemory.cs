using System.Buffers;

namespace Platter.VhostUser.Internal;

/// <summary>
/// A <see cref="Memory{T}"/> over guest memory, re-pointed for each segment of a request (one per request, reused, so
/// a request allocates nothing). Valid while the guest memory stays mapped: the queue stops, and waits for its
/// in-flight requests, before the memory table changes or the connection ends.
/// </summary>
internal sealed unsafe class PointerMemory : MemoryManager<byte>
{
    private byte* _pointer;
    private int _length;

    public Memory<byte> Point(byte* pointer, int length)
    {
        _pointer = pointer;
        _length = length;
        return Memory;
    }

    public override Span<byte> GetSpan() => new(_pointer, _length);

    public override MemoryHandle Pin(int elementIndex = 0) => new(_pointer + elementIndex);

    public override void Unpin()
    {
    }

    protected override void Dispose(bool disposing)
    {
    }
}
