using System.Globalization;

namespace Platter.Cli;

/// <summary>
/// Parses sizes people type: a number with an optional binary unit. K, M, G, T, P, E (with or without a
/// trailing B or iB, any case) are powers of 1024, as in qemu-img: 4K = 4KiB = 4096. A fraction is accepted when
/// it comes to whole bytes (1.5G); a bare number is bytes.
/// </summary>
public static class SizeParser
{
    /// <summary>The message shown for anything that is not a size.</summary>
    public const string Expected = "expected a number with an optional unit K, M, G, T, P (e.g. 512, 4K, 10M, 20G, 1T)";

    /// <summary>Parses <paramref name="text"/>; on failure returns false with a one-line reason.</summary>
    public static bool TryParse(string? text, out long bytes, out string error)
    {
        bytes = 0;
        error = "";
        var s = text?.Trim() ?? "";
        if (s.Length == 0)
        {
            error = "a size cannot be empty; " + Expected;
            return false;
        }
        if (s[0] == '-')
        {
            error = $"invalid size '{text}': a size cannot be negative";
            return false;
        }

        int end = 0;
        while (end < s.Length && (char.IsAsciiDigit(s[end]) || s[end] == '.')) end++;
        var number = s[..end];
        var unit = s[end..].Trim();
        if (number.Length == 0 || number.Count(c => c == '.') > 1 || number[0] == '.' || number[^1] == '.')
        {
            error = $"invalid size '{text}': {Expected}";
            return false;
        }
        if (!TryUnitShift(unit, out int shift))
        {
            error = $"invalid size '{text}': unknown unit '{unit}'; {Expected}";
            return false;
        }
        if (number.Replace(".", "").TrimStart('0').Length > 28 ||
            !decimal.TryParse(number, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out var value))
        {
            error = $"invalid size '{text}': too large (at most 8 EiB)";
            return false;
        }

        decimal multiplier = 1L << shift;
        decimal total;
        try
        {
            total = value * multiplier;
        }
        catch (OverflowException)
        {
            error = $"invalid size '{text}': too large (at most 8 EiB)";
            return false;
        }
        if (total > long.MaxValue)
        {
            error = $"invalid size '{text}': too large (at most 8 EiB)";
            return false;
        }
        if (total != decimal.Truncate(total))
        {
            error = $"invalid size '{text}': not a whole number of bytes";
            return false;
        }
        if (total == 0)
        {
            error = $"invalid size '{text}': a size must be greater than zero";
            return false;
        }
        bytes = (long)total;
        return true;
    }

    /// <summary>Parses or throws <see cref="FormatException"/> with the reason.</summary>
    public static long Parse(string text) => TryParse(text, out var bytes, out var error) ? bytes : throw new FormatException(error);

    private static bool TryUnitShift(string unit, out int shift)
    {
        shift = 0;
        if (unit.Length == 0) return true;
        var u = unit.ToUpperInvariant();
        if (u == "B") return true;
        if (u.EndsWith("IB", StringComparison.Ordinal)) u = u[..^2];
        else if (u.EndsWith('B')) u = u[..^1];
        if (u.Length != 1) return false;
        shift = u[0] switch
        {
            'K' => 10,
            'M' => 20,
            'G' => 30,
            'T' => 40,
            'P' => 50,
            'E' => 60,
            _ => -1,
        };
        return shift > 0;
    }
}
