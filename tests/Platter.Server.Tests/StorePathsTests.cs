using Xunit;

namespace Platter.Server.Tests;

public class StorePathsTests
{
    private static Func<string, string?> Env(params (string Name, string Value)[] values) =>
        name => values.FirstOrDefault(v => v.Name == name).Value;

    [Fact]
    public void PlatterStoreWins() =>
        Assert.Equal("/srv/platter", StorePaths.DefaultStoreDirectory(Env(("PLATTER_STORE", "/srv/platter"), ("XDG_DATA_HOME", "/x"), ("HOME", "/home/u"))));

    [Fact]
    public void XdgDataHomeIsNext() =>
        Assert.Equal("/x/platter", StorePaths.DefaultStoreDirectory(Env(("XDG_DATA_HOME", "/x"), ("HOME", "/home/u"))));

    [Fact]
    public void RelativeXdgDataHomeIsIgnoredAsTheSpecSays() =>
        Assert.Equal("/home/u/.local/share/platter", StorePaths.DefaultStoreDirectory(Env(("XDG_DATA_HOME", "rel"), ("HOME", "/home/u"))));

    [Fact]
    public void HomeIsTheFallback() =>
        Assert.Equal("/home/u/.local/share/platter", StorePaths.DefaultStoreDirectory(Env(("HOME", "/home/u"))));

    [Fact]
    public void SocketsLiveInTheStore()
    {
        Assert.Equal("/s/nbd.sock", StorePaths.NbdSocketPath("/s"));
        Assert.Equal("/s/api.sock", StorePaths.ApiSocketPath("/s"));
        Assert.Equal("/s/api.sock", StorePaths.DefaultApiSocketPath(Env(("PLATTER_STORE", "/s"))));
        Assert.Equal("/a/b.sock", StorePaths.DefaultApiSocketPath(Env(("PLATTER_STORE", "/s"), ("PLATTER_API_SOCKET", "/a/b.sock"))));
    }
}
