using System.Diagnostics;
using System.Globalization;
using Platter.Server;

namespace Platter.Cli;

/// <summary>
/// One progress line, redrawn in place with '\r': a bar and percentage when the total is known, the bytes moved,
/// the rate and the time left. It draws only on a terminal; when its writer is a file or a pipe (a script, a log)
/// it prints nothing, so output stays clean. Redraws at most every 200 ms, so a fast copy does not spend its time
/// drawing.
/// </summary>
internal sealed class ProgressMeter
{
    private const long RedrawIntervalMs = 200;
    private const int BarWidth = 30;

    private readonly TextWriter? _writer;
    private readonly string _label;
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private long _lastDrawMs = -RedrawIntervalMs;
    private int _lastLength;

    private ProgressMeter(TextWriter? writer, string label)
    {
        _writer = writer;
        _label = label;
    }

    /// <summary>Total bytes when known (a percentage, a bar and an ETA are shown), else 0.</summary>
    public long TotalBytes { get; set; }

    /// <summary>A meter on stdout, drawn only when stdout is the process's own terminal.</summary>
    public static ProgressMeter OnStdout(CliContext context, string label, bool enabled = true) =>
        new(enabled && ReferenceEquals(context.Out, Console.Out) && !Console.IsOutputRedirected ? Console.Out : null, label);

    /// <summary>A meter on stderr (for commands whose stdout carries data), drawn only when stderr is a terminal.</summary>
    public static ProgressMeter OnStderr(CliContext context, string label) =>
        new(ReferenceEquals(context.Error, Console.Error) && !Console.IsErrorRedirected ? Console.Error : null, label);

    /// <summary>Reports <paramref name="doneBytes"/> so far; redraws when due.</summary>
    public void Report(long doneBytes)
    {
        if (_writer is null) return;
        long now = _clock.ElapsedMilliseconds;
        if (now - _lastDrawMs < RedrawIntervalMs) return;
        _lastDrawMs = now;
        Draw(doneBytes, now);
    }

    /// <summary>Draws the final state and ends the line.</summary>
    public void Finish(long doneBytes)
    {
        if (_writer is null) return;
        Draw(doneBytes, _clock.ElapsedMilliseconds);
        _writer.WriteLine();
    }

    /// <summary>Clears the line (before an error message).</summary>
    public void Clear()
    {
        if (_writer is null || _lastLength == 0) return;
        _writer.Write("\r" + new string(' ', _lastLength) + "\r");
        _writer.Flush();
    }

    private void Draw(long done, long elapsedMs)
    {
        double seconds = Math.Max(elapsedMs / 1000.0, 0.001);
        double rate = done / seconds;
        string text;
        if (TotalBytes > 0)
        {
            double fraction = Math.Clamp((double)done / TotalBytes, 0, 1);
            int filled = (int)(fraction * BarWidth);
            string eta = rate > 0 && done > 0 ? FormatDuration((TotalBytes - done) / rate) : "--";
            text = string.Create(CultureInfo.InvariantCulture,
                $"{_label} [{new string('#', filled)}{new string('.', BarWidth - filled)}] {fraction * 100,5:0.0}%  {SizeText.Format(done)} / {SizeText.Format(TotalBytes)}  {SizeText.Format((long)rate)}/s  ETA {eta}");
        }
        else
        {
            text = $"{_label} {SizeText.Format(done)}  {SizeText.Format((long)rate)}/s  {FormatDuration(seconds)}";
        }
        int pad = Math.Max(0, _lastLength - text.Length);
        _writer!.Write("\r" + text + new string(' ', pad));
        _writer.Flush();
        _lastLength = text.Length;
    }

    internal static string FormatDuration(double seconds)
    {
        if (double.IsNaN(seconds) || double.IsInfinity(seconds) || seconds < 0) return "--";
        var t = TimeSpan.FromSeconds(Math.Round(seconds));
        return t.TotalHours >= 1 ? $"{(int)t.TotalHours}:{t.Minutes:00}:{t.Seconds:00}" : $"{t.Minutes}:{t.Seconds:00}";
    }
}
