using System.Runtime.InteropServices;
using Platter.Storage.Devices;

namespace Platter.Storage.Internal;

/// <summary>
/// The scrubber's reads, overlapped with its checksumming: the scrub thread submits runs in physical order, reader
/// threads (<see cref="EngineLimits.ScrubReaderThreads"/>) read them into page-aligned slots with
/// <see cref="IDataDevice.ReadUncached"/> (O_DIRECT: the disk itself, no page cache read or polluted), and the scrub
/// thread checks the oldest slot while the next ones are being read. Without it a scrub alternates between a disk
/// that waits for the CRC and a CPU that waits for the disk (0.24–0.48x of a sequential read, docs/PERFORMANCE.md).
///
/// Slots are used round-robin and finished in the order submitted, so the slot of the n-th submission is n modulo
/// the slot count, and a submission never finds its slot busy as long as the caller finishes the oldest slot before
/// submitting more than <see cref="Slots"/> reads (it throws otherwise: a bug, not a wait).
///
/// One instance per scrub session, used by the scrub thread alone. <see cref="Dispose"/> waits for every submitted
/// read to end before it frees the memory, so no read lands in freed memory.
/// </summary>
internal sealed unsafe class ScrubReadAhead : IDisposable
{
    private enum SlotState { Free, Queued, Reading, Done }

    private struct Slot
    {
        public long Offset;
        public int Bytes;
        public SlotState State;
        public Exception? Error;
    }

    private readonly IDataDevice _device;
    private readonly int _slotBytes;
    private readonly byte* _memory;
    private readonly Slot[] _slots;
    private readonly Queue<int> _queued;
    private readonly Thread[] _readers;
    private readonly object _lock = new(); // guards _slots, _queued, _closing, _throughCache; never held across I/O
    private bool _closing;
    private bool _throughCache;
    private long _submitted;
    private bool _disposed;

    public ScrubReadAhead(IDataDevice device, int slots, int slotBytes, int readers)
    {
        if (slotBytes % IDataDevice.UncachedAlignment != 0) throw new ArgumentOutOfRangeException(nameof(slotBytes));
        _device = device;
        _slotBytes = slotBytes;
        _slots = new Slot[slots];
        _queued = new Queue<int>(slots);
        // The slots, then one block for the scrub thread's own confirming reads; aligned for O_DIRECT.
        _memory = (byte*)NativeMemory.AlignedAlloc((nuint)((long)slots * slotBytes + EngineLimits.BlockBytes), IDataDevice.UncachedAlignment);
        _readers = new Thread[readers];
        for (int i = 0; i < readers; i++)
        {
            _readers[i] = new Thread(ReadLoop) { IsBackground = true, Name = "platter-scrub-read" };
            _readers[i].Start();
        }
    }

    /// <summary>Reads that may be submitted and not yet finished.</summary>
    public int Slots => _slots.Length;

    /// <summary>True once a read went through the page cache (the device cannot bypass it; the scrubber says so once).</summary>
    public bool ReadThroughCache
    {
        get { lock (_lock) return _throughCache; }
    }

    /// <summary>A block of aligned memory for the scrub thread's own direct reads (the confirming read of a candidate).</summary>
    public Span<byte> ConfirmBuffer => new(_memory + (long)_slots.Length * _slotBytes, EngineLimits.BlockBytes);

    /// <summary>Queues a read of <paramref name="bytes"/> at <paramref name="offset"/>; returns its slot.</summary>
    public int Submit(long offset, int bytes)
    {
        if (bytes <= 0 || bytes > _slotBytes || bytes % IDataDevice.UncachedAlignment != 0) throw new ArgumentOutOfRangeException(nameof(bytes));
        lock (_lock)
        {
            int slot = (int)(_submitted % _slots.Length);
            if (_slots[slot].State != SlotState.Free) throw new InvalidOperationException("a scrub read was submitted before the oldest one was finished");
            _submitted++;
            _slots[slot] = new Slot { Offset = offset, Bytes = bytes, State = SlotState.Queued };
            _queued.Enqueue(slot);
            Monitor.PulseAll(_lock);
            return slot;
        }
    }

    /// <summary>
    /// Waits until the slot's read has ended. Returns the bytes read, or throws what the read threw (an
    /// <see cref="IOException"/> for a disk error). The slot stays the caller's until <see cref="Release"/>.
    /// </summary>
    public Span<byte> Wait(int slot)
    {
        Exception? error;
        int bytes;
        lock (_lock)
        {
            while (_slots[slot].State != SlotState.Done) Monitor.Wait(_lock);
            (error, bytes) = (_slots[slot].Error, _slots[slot].Bytes);
        }
        if (error is not null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(error);
        return new Span<byte>(_memory + (long)slot * _slotBytes, bytes);
    }

    /// <summary>Gives the slot back for another read.</summary>
    public void Release(int slot)
    {
        lock (_lock) _slots[slot] = default;
    }

    private void ReadLoop()
    {
        while (true)
        {
            int slot;
            long offset;
            int bytes;
            lock (_lock)
            {
                while (_queued.Count == 0 && !_closing) Monitor.Wait(_lock);
                // Closing: every queued read is still done first, so Dispose never frees memory a read may write.
                if (_queued.Count == 0) return;
                slot = _queued.Dequeue();
                _slots[slot].State = SlotState.Reading;
                (offset, bytes) = (_slots[slot].Offset, _slots[slot].Bytes);
            }
            Exception? error = null;
            bool direct = false;
            try
            {
                direct = _device.ReadUncached(offset, new Span<byte>(_memory + (long)slot * _slotBytes, bytes));
            }
            catch (Exception e)
            {
                error = e;
            }
            lock (_lock)
            {
                _slots[slot].State = SlotState.Done;
                _slots[slot].Error = error;
                if (error is null && !direct) _throughCache = true;
                Monitor.PulseAll(_lock);
            }
        }
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        lock (_lock)
        {
            _closing = true;
            Monitor.PulseAll(_lock);
        }
        foreach (var reader in _readers) reader.Join();
        NativeMemory.AlignedFree(_memory);
    }
}
