using Platter.Storage;

/// <summary>
/// Loaded by the runtime before <c>platter serve</c>'s Main when DOTNET_STARTUP_HOOKS names this assembly. With
/// PLATTER_FAULT_TRIGGER=PATH set, it watches for the file PATH to appear; its content names a volume whose first
/// block is mapped and that nothing writes to at that moment. It then breaks an engine invariant in the store the
/// server opened — the volume frees a block with no journaled change that explains it (map and pending log out of
/// step) — and asks for a commit, which finds the violation and fails the store (fail-stop). What that commit
/// answered goes to PATH.done, so the test knows the fault is in.
/// </summary>
/// <remarks>The runtime requires this name, the global namespace and a public static Initialize.</remarks>
public static class StartupHook
{
    /// <summary>Called by the runtime once, before Main.</summary>
    public static void Initialize()
    {
        string? trigger = Environment.GetEnvironmentVariable("PLATTER_FAULT_TRIGGER");
        if (string.IsNullOrEmpty(trigger)) return;
        VolumeStore.OpenedForTests = store =>
            new Thread(() => Watch(store, trigger)) { IsBackground = true, Name = "platter-fault-hook" }.Start();
    }

    private static void Watch(VolumeStore store, string trigger)
    {
        // Test-only code: polling a file is the simplest cue a test process can give a server process.
        while (!File.Exists(trigger)) Thread.Sleep(50);
        string volume = File.ReadAllText(trigger).Trim();
        string outcome;
        try
        {
            var state = store.VolumeStateForTests(volume);
            lock (state.Lock) state.PendingFrees.Add(state.Map.Get(0).Pba);
            store.FlushAsync().AsTask().GetAwaiter().GetResult();
            outcome = "no failure: the commit took the broken state";
        }
        catch (Exception e)
        {
            outcome = e.Message;
        }
        File.WriteAllText(trigger + ".tmp-done", outcome);
        File.Move(trigger + ".tmp-done", trigger + ".done"); // whole or not at all for the test that polls for it
    }
}
