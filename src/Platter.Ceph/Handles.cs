using System.Runtime.InteropServices;

namespace Platter.Ceph;

/// <summary>A <c>rados_t</c>: one connection to a cluster (its own client instance and address).</summary>
internal sealed class RadosHandle() : SafeHandle(0, ownsHandle: true)
{
    public override bool IsInvalid => handle == 0;

    internal void Set(nint value) => SetHandle(value);

    protected override bool ReleaseHandle()
    {
        Native.rados_shutdown(handle);
        return true;
    }
}

/// <summary>
/// A handle whose native object must be released before its parent's: it holds a reference on the parent
/// (an image on its I/O context, an I/O context on its connection) until it is released itself.
/// </summary>
internal abstract class ChildHandle : SafeHandle
{
    private SafeHandle? _parent;

    protected ChildHandle() : base(0, ownsHandle: true) { }

    public override bool IsInvalid => handle == 0;

    internal void Set(nint value, SafeHandle parent)
    {
        bool added = false;
        parent.DangerousAddRef(ref added);
        _parent = parent;
        SetHandle(value);
    }

    protected abstract void ReleaseNative(nint value);

    /// <summary>Hands the reference on the parent to the caller, who releases it once the native object is gone.</summary>
    protected SafeHandle? TakeParent()
    {
        var parent = _parent;
        _parent = null;
        return parent;
    }

    protected override bool ReleaseHandle()
    {
        ReleaseNative(handle);
        _parent?.DangerousRelease();
        _parent = null;
        return true;
    }
}

/// <summary>A <c>rados_ioctx_t</c>: a pool opened on one connection.</summary>
internal sealed class IoContextHandle : ChildHandle
{
    protected override void ReleaseNative(nint value) => Native.rados_ioctx_destroy(value);
}

/// <summary>A <c>rbd_image_t</c>: an open image (or snapshot of one).</summary>
internal sealed class RbdImageHandle : ChildHandle
{
    /// <summary>rbd_close's result (it flushes and releases the lock; a fenced client gets an error here).</summary>
    internal int CloseResult { get; private set; }

    /// <summary>
    /// Closed by <see cref="DeferredImageClose"/> a grace period after disposal instead of at once: set for read-only
    /// opens, which hold no watch and no lock, so nobody can tell when they really close, and for served writable
    /// images, whose owner releases the lock before disposing them.
    /// </summary>
    internal bool CloseLater { get; set; }

    /// <summary>When a deferred close is due (Environment.TickCount64); 0 for DeferredImageClose's default grace.</summary>
    internal long CloseDue { get; set; }

    protected override void ReleaseNative(nint value) => CloseResult = Native.rbd_close(value);

    protected override bool ReleaseHandle()
    {
        if (!CloseLater) return base.ReleaseHandle();
        DeferredImageClose.Enqueue(handle, TakeParent(), CloseDue);
        return true;
    }
}
