using Platter.Cli;
using Xunit;

namespace Platter.Server.Tests;

public class SizeParserTests
{
    [Theory]
    [InlineData("512", 512L)]
    [InlineData("4K", 4096L)]
    [InlineData("4k", 4096L)]
    [InlineData("4KiB", 4096L)]
    [InlineData("4KB", 4096L)]
    [InlineData("10M", 10L << 20)]
    [InlineData("20G", 20L << 30)]
    [InlineData("20g", 20L << 30)]
    [InlineData("1T", 1L << 40)]
    [InlineData("2P", 2L << 50)]
    [InlineData("1.5G", 3L << 29)]
    [InlineData(" 20G ", 20L << 30)]
    [InlineData("512B", 512L)]
    [InlineData("7E", 7L << 60)]
    public void Accepts(string text, long expected)
    {
        Assert.True(SizeParser.TryParse(text, out var bytes, out var error), error);
        Assert.Equal(expected, bytes);
    }

    [Theory]
    [InlineData("", "empty")]
    [InlineData("   ", "empty")]
    [InlineData("abc", "expected a number")]
    [InlineData("G", "expected a number")]
    [InlineData("10X", "unknown unit 'X'")]
    [InlineData("10GG", "unknown unit")]
    [InlineData("1..5G", "expected a number")]
    [InlineData(".5G", "expected a number")]
    [InlineData("5.G", "expected a number")]
    [InlineData("0", "greater than zero")]
    [InlineData("0K", "greater than zero")]
    [InlineData("-1G", "negative")]
    [InlineData("-512", "negative")]
    [InlineData("1.3K", "whole number of bytes")]
    [InlineData("0.1", "whole number of bytes")]
    [InlineData("8E", "too large")]
    [InlineData("9223372036854775808", "too large")]
    [InlineData("99999999999999999999999999999999999T", "too large")]
    [InlineData("10 20G", "unknown unit")]
    [InlineData("0x10", "unknown unit")]
    public void RejectsWithReason(string text, string reason)
    {
        Assert.False(SizeParser.TryParse(text, out _, out var error));
        Assert.Contains(reason, error);
        Assert.DoesNotContain('\n', error);
    }

    [Fact]
    public void LargestByteCountIsAccepted()
    {
        Assert.True(SizeParser.TryParse("9223372036854775807", out var bytes, out _));
        Assert.Equal(long.MaxValue, bytes);
    }

    [Theory]
    [InlineData(512L, "512 B")]
    [InlineData(4096L, "4 KiB")]
    [InlineData(20L << 30, "20 GiB")]
    [InlineData(3L << 29, "1.5 GiB")]
    [InlineData(1L << 40, "1 TiB")]
    [InlineData(0L, "0 B")]
    public void FormatsForPeople(long bytes, string expected) => Assert.Equal(expected, SizeText.Format(bytes));
}
