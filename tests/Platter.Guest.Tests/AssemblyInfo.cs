using Xunit;

// Each guest test boots QEMU under TCG, which keeps a core busy; on the 2-core build machines two guests
// at once would only make both slower and closer to their time limit. The Platter test and the optional
// qemu-nbd reference run (PLATTER_GUEST_QEMU_NBD=1) therefore run one after another.
[assembly: CollectionBehavior(DisableTestParallelization = true)]
