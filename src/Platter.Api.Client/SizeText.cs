using System.Globalization;

namespace Platter.Server;

/// <summary>Formats byte counts for people: binary units, at most one decimal, exact where it is exact.</summary>
public static class SizeText
{
    private static readonly string[] Units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

    /// <summary>E.g. 512 B, 4 KiB, 1.5 GiB, 20 GiB.</summary>
    public static string Format(long bytes)
    {
        if (bytes < 0) return bytes.ToString(CultureInfo.InvariantCulture) + " B";
        int unit = 0;
        double value = bytes;
        while (value >= 1024 && unit < Units.Length - 1)
        {
            value /= 1024;
            unit++;
        }
        if (unit == 0) return bytes.ToString(CultureInfo.InvariantCulture) + " B";
        var rounded = Math.Round(value, 1, MidpointRounding.AwayFromZero);
        var text = rounded == Math.Floor(rounded)
            ? rounded.ToString("0", CultureInfo.InvariantCulture)
            : rounded.ToString("0.0", CultureInfo.InvariantCulture);
        return text + " " + Units[unit];
    }
}
