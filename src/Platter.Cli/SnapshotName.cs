using System.CommandLine;
using System.CommandLine.Parsing;
using Platter.Storage;

namespace Platter.Cli;

/// <summary>A snapshot named on the command line as <c>VOL@SNAP</c> (the same string is its NBD export name).</summary>
internal readonly record struct SnapshotName(string Volume, string Snapshot)
{
    public override string ToString() => $"{Volume}@{Snapshot}";

    /// <summary>
    /// Parses <c>VOL@SNAP</c>; null and a reason when it is not one. With <paramref name="forNew"/> the snapshot name
    /// must pass today's rules (it is about to be created); otherwise both names only need the older, looser rules,
    /// so snapshots and volumes an older version created can still be named (deleted, cloned, rolled back to).
    /// </summary>
    public static SnapshotName? TryParse(string text, out string? error, bool forNew = false)
    {
        if (!VolumeNames.TrySplitSnapshotName(text, out var volume, out var snapshot))
        {
            error = $"'{text}' is not a snapshot: write VOLUME@SNAPSHOT, e.g. vm1@before-upgrade";
            return null;
        }
        error = VolumeNames.ValidateExisting(volume) is { } volumeReason ? $"invalid volume name '{volume}': {volumeReason}"
            : (forNew ? VolumeNames.Validate(snapshot) : VolumeNames.ValidateExisting(snapshot)) is { } snapshotReason
                ? $"invalid snapshot name '{snapshot}': {snapshotReason}"
            : null;
        return error is null ? new SnapshotName(volume, snapshot) : null;
    }

    /// <summary>A required <c>VOL@SNAP</c> argument, checked while parsing (a bad one is a usage error, exit 2).</summary>
    public static Argument<SnapshotName> Argument(string name, string description, bool forNew = false) => new(name)
    {
        Description = description,
        HelpName = name,
        CustomParser = result =>
        {
            var text = result.Tokens.Count > 0 ? result.Tokens[0].Value : "";
            if (TryParse(text, out var error, forNew) is { } parsed) return parsed;
            result.AddError(error!);
            return default;
        },
    };
}
