using System.CommandLine;
using System.CommandLine.Parsing;
using Platter.Storage;

namespace Platter.Cli;

/// <summary>A snapshot named on the command line as <c>VOL@SNAP</c> (the same string is its NBD export name).</summary>
internal readonly record struct SnapshotName(string Volume, string Snapshot)
{
    public override string ToString() => $"{Volume}@{Snapshot}";

    /// <summary>Parses <c>VOL@SNAP</c>; null and a reason when it is not one.</summary>
    public static SnapshotName? TryParse(string text, out string? error)
    {
        if (!VolumeNames.TrySplitSnapshotName(text, out var volume, out var snapshot))
        {
            error = $"'{text}' is not a snapshot: write VOLUME@SNAPSHOT, e.g. vm1@before-upgrade";
            return null;
        }
        error = VolumeNames.Validate(volume) is { } volumeReason ? $"invalid volume name '{volume}': {volumeReason}"
            : VolumeNames.Validate(snapshot) is { } snapshotReason ? $"invalid snapshot name '{snapshot}': {snapshotReason}"
            : null;
        return error is null ? new SnapshotName(volume, snapshot) : null;
    }

    /// <summary>A required <c>VOL@SNAP</c> argument, checked while parsing (a bad one is a usage error, exit 2).</summary>
    public static Argument<SnapshotName> Argument(string name, string description) => new(name)
    {
        Description = description,
        HelpName = name,
        CustomParser = result =>
        {
            var text = result.Tokens.Count > 0 ? result.Tokens[0].Value : "";
            if (TryParse(text, out var error) is { } parsed) return parsed;
            result.AddError(error!);
            return default;
        },
    };
}
