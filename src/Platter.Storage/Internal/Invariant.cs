namespace Platter.Storage.Internal;

/// <summary>
/// Always-on assertions on what the engine's own code guarantees (validate at the edge, assert inside). A violation
/// means memory can no longer be trusted: the caller's fail-stop handler fails the store (see
/// <see cref="Committer.FailStop"/>) instead of answering one client with an error and carrying on. Each check is a
/// comparison or two on values already at hand: cheap enough for every write.
/// </summary>
internal static class Invariant
{
    public static void Check(bool condition, string what)
    {
        if (!condition) Fail(what);
    }

    // Kept out of line so the checks inline to a compare and a branch.
    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    public static void Fail(string what) => throw new InvariantViolation(what);
}

/// <summary>A broken engine invariant: never expected, never retried, always fails the store.</summary>
internal sealed class InvariantViolation(string message) : InvalidOperationException($"engine invariant broken: {message}");
