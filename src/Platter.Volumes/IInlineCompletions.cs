namespace Platter.Volumes;

/// <summary>
/// A handle whose requests complete on a thread of the backend's own (librbd's completion thread for an RBD volume).
/// By default the handle sends the caller's continuation to the thread pool, so whatever the caller does next (close
/// the volume, make a synchronous call into the backend, wait for a lock) never runs on that thread: waiting there
/// would hold up every other completion of the volume, or deadlock when the wait needs that thread itself. A caller
/// whose continuation of a successful request only does short work that never waits may take the thread-pool hop out:
/// one thread wake-up per request, the largest share of the server's CPU per RBD write after librbd's own
/// (docs/PERFORMANCE.md, issue 10). Wrappers that only forward the handle's calls pass the member on; a wrapper that
/// does work of its own after the inner request (a cache) does not implement it.
/// </summary>
public interface IInlineCompletions
{
    /// <summary>
    /// The caller promises that from now on its continuation of every successful read, write, flush, trim or
    /// write-zeroes through this handle returns promptly and never blocks: no lock held across I/O, no synchronous
    /// call into the backend, no close of the handle (the NBD door writes its reply to a socket without waiting for
    /// room, then returns). The handle may then run that continuation on its completion thread. A failed request's
    /// continuation still goes to the thread pool (an exception, an error log line).
    /// </summary>
    void CompleteInline();
}
