using System.Text;

namespace Platter.Cli;

/// <summary>Plain aligned columns for people: a header row, two spaces between columns, numbers right-aligned.</summary>
public sealed class Table(params string[] headers)
{
    private readonly List<string[]> _rows = [];
    private readonly bool[] _rightAligned = new bool[headers.Length];

    /// <summary>Right-aligns the given columns (sizes, counts).</summary>
    public Table AlignRight(params int[] indexes)
    {
        foreach (var i in indexes) _rightAligned[i] = true;
        return this;
    }

    /// <summary>Adds a row; it must have one cell per header.</summary>
    public void Add(params string[] cells)
    {
        if (cells.Length != headers.Length) throw new ArgumentException("wrong number of cells");
        _rows.Add(cells);
    }

    /// <summary>The table as lines, each ending in a newline; trailing spaces are trimmed.</summary>
    public override string ToString()
    {
        var widths = new int[headers.Length];
        foreach (var row in _rows.Prepend(headers))
            for (int i = 0; i < row.Length; i++) widths[i] = Math.Max(widths[i], row[i].Length);
        var text = new StringBuilder();
        foreach (var row in _rows.Prepend(headers))
        {
            var line = new StringBuilder();
            for (int i = 0; i < row.Length; i++)
            {
                if (i > 0) line.Append("  ");
                line.Append(_rightAligned[i] ? row[i].PadLeft(widths[i]) : row[i].PadRight(widths[i]));
            }
            text.Append(line.ToString().TrimEnd()).Append('\n');
        }
        return text.ToString();
    }
}
