using System.Collections.Concurrent;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;

namespace Platter.Nbd.Tests;

/// <summary>Collects log entries so tests can assert the server logged no unexpected errors.</summary>
public sealed class RecordingLogger : ILogger<NbdServer>
{
    public ConcurrentQueue<(LogLevel Level, string Message, Exception? Exception)> Entries { get; } = new();

    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
    public bool IsEnabled(LogLevel logLevel) => true;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
        Entries.Enqueue((logLevel, formatter(state, exception), exception));

    public string[] Errors => [.. Entries.Where(e => e.Level >= LogLevel.Error).Select(e => e.Message + " " + e.Exception)];
}

/// <summary>An NbdServer on a unix socket in a fresh temp directory.</summary>
public sealed class TestServer : IAsyncDisposable
{
    private readonly TempDirectory _directory = new("pnbd");

    public string Directory => _directory.Path;
    public string SocketPath { get; }
    public NbdServer Server { get; }
    public MemoryExportProvider Exports { get; }
    public RecordingLogger Logger { get; } = new();

    private TestServer(MemoryExportProvider exports, NbdServerOptions options)
    {
        SocketPath = _directory.Combine("s");
        Exports = exports;
        Server = new NbdServer(exports, options, Logger);
    }

    public static async Task<TestServer> StartAsync(MemoryExportProvider exports, NbdServerOptions? options = null)
    {
        var server = new TestServer(exports, options ?? new NbdServerOptions());
        server.Server.Listen(new UnixDomainSocketEndPoint(server.SocketPath));
        await server.Server.StartAsync();
        return server;
    }

    public static Task<TestServer> StartDefaultAsync() => StartAsync(DefaultExports());

    public static MemoryExportProvider DefaultExports() => new(
        new MemoryExport("disk", 4 << 20, description: "test disk"),
        new MemoryExport("ro", 1 << 20, readOnly: true),
        new MemoryExport("aligned", 1 << 20, minimumBlockSize: 512));

    public string Uri(string export) => $"nbd+unix:///{export}?socket={SocketPath}";

    public Task<NbdTestClient> ConnectAsync(bool handshake = true) => NbdTestClient.ConnectUnixAsync(SocketPath, handshake);

    /// <summary>Connects, negotiates as asked, and GOes to <paramref name="export"/>.</summary>
    public async Task<NbdTestClient> OpenAsync(string export = "disk", bool structured = true, bool extended = false, bool meta = false, bool blockSize = false)
    {
        var client = await ConnectAsync();
        if (extended) Assert.Equal(NbdTestClient.RepAck, await client.ExtendedHeadersAsync());
        else if (structured) Assert.Equal(NbdTestClient.RepAck, await client.StructuredReplyAsync());
        if (meta)
        {
            var (final, contexts) = await client.MetaContextAsync(NbdTestClient.OptSetMetaContext, export, "base:allocation");
            Assert.Equal(NbdTestClient.RepAck, final);
            Assert.Single(contexts);
        }
        ushort[] infos = blockSize ? [3] : [];
        Assert.Equal(NbdTestClient.RepAck, await client.InfoOrGoAsync(NbdTestClient.OptGo, export, infos));
        return client;
    }

    public async ValueTask DisposeAsync()
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        await Server.StopAsync(cts.Token);
        Assert.Equal(0, Server.ActiveConnections);
        _directory.Dispose();
    }
}
