using System.Net;
using System.Net.Http.Json;
using System.Net.Sockets;
using System.Text;
using Platter.Server.Api;
using Platter.Storage;
using Xunit;

namespace Platter.Server.Tests;

public class ManagementApiTests
{
    [Fact]
    public async Task VolumeLifecycleThroughTheApi()
    {
        await using var server = await RunningHost.StartAsync();
        using var client = server.Client();

        Assert.Empty(await client.ListVolumesAsync());
        var created = await client.CreateVolumeAsync("vm1", 20L << 30);
        Assert.Equal("vm1", created.Name);
        Assert.Equal(20L << 30, created.SizeBytes);
        Assert.Equal(0, created.AllocatedBytes);

        var listed = Assert.Single(await client.ListVolumesAsync());
        Assert.Equal(created, listed);
        Assert.Equal(created, await client.GetVolumeAsync("vm1"));

        var resized = await client.ResizeVolumeAsync("vm1", 30L << 30);
        Assert.Equal(30L << 30, resized.SizeBytes);

        var renamed = await client.RenameVolumeAsync("vm1", "vm2");
        Assert.Equal("vm2", renamed.Name);
        Assert.Equal(created.Id, renamed.Id);
        Assert.Equal("not_found", (await Assert.ThrowsAsync<PlatterApiException>(() => client.GetVolumeAsync("vm1"))).Code);

        var usage = await client.GetUsageAsync();
        Assert.Equal(1, usage.VolumeCount);
        Assert.Equal(30L << 30, usage.ProvisionedBytes);

        await client.DeleteVolumeAsync("vm2");
        Assert.Empty(await client.ListVolumesAsync());
        Assert.Equal(0, (await client.GetUsageAsync()).VolumeCount);
    }

    [Fact]
    public async Task ErrorsHaveStatusCodeAndMessage()
    {
        await using var server = await RunningHost.StartAsync();
        using var client = server.Client();
        await client.CreateVolumeAsync("vm1", 1L << 30);

        async Task Expect(int status, string code, Func<Task> call)
        {
            var e = await Assert.ThrowsAsync<PlatterApiException>(call);
            Assert.Equal(status, e.StatusCode);
            Assert.Equal(code, e.Code);
            Assert.False(string.IsNullOrWhiteSpace(e.Message));
        }

        await Expect(404, "not_found", () => client.GetVolumeAsync("nope"));
        await Expect(404, "not_found", () => client.ResizeVolumeAsync("nope", 1L << 30));
        await Expect(404, "not_found", () => client.RenameVolumeAsync("nope", "other"));
        await Expect(404, "not_found", () => client.DeleteVolumeAsync("nope"));
        await Expect(409, "already_exists", () => client.CreateVolumeAsync("vm1", 1L << 30));
        await Expect(409, "already_exists", async () =>
        {
            await client.CreateVolumeAsync("vm2", 1L << 30);
            await client.RenameVolumeAsync("vm2", "vm1");
        });
        await Expect(400, "invalid_name", () => client.CreateVolumeAsync("a@b", 1L << 30));
        await Expect(400, "invalid_name", () => client.RenameVolumeAsync("vm1", " padded"));
        await Expect(400, "invalid_argument", () => client.CreateVolumeAsync("odd", 1000));
        await Expect(400, "invalid_argument", () => client.CreateVolumeAsync("neg", -4096));
        await Expect(400, "invalid_argument", () => client.ResizeVolumeAsync("vm1", 0));

        // The failed calls changed nothing.
        var names = (await client.ListVolumesAsync()).Select(v => v.Name).Order().ToArray();
        Assert.Equal(["vm1", "vm2"], names);
        Assert.Equal(1L << 30, (await client.GetVolumeAsync("vm1")).SizeBytes);
    }

    [Fact]
    public async Task MalformedRequestsAreBadRequests()
    {
        await using var server = await RunningHost.StartAsync();
        using var http = UnixHttp.Client(server.ApiSocket);

        async Task<(HttpStatusCode, ErrorDto?)> Post(string path, string body, string contentType = "application/json")
        {
            using var response = await http.PostAsync(path, new StringContent(body, Encoding.UTF8, contentType));
            return (response.StatusCode, await response.Content.ReadFromJsonAsync(PlatterJsonContext.Default.ErrorDto));
        }

        var (status, error) = await Post("/v1/volumes", "{not json");
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("bad_request", error?.Error);

        (status, error) = await Post("/v1/volumes", "{\"sizeBytes\":4096}");
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Contains("name", error?.Message);

        (status, error) = await Post("/v1/volumes", "{\"name\":\"x\"}");
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Contains("sizeBytes", error?.Message);

        (status, error) = await Post("/v1/volumes", "name=x", "application/x-www-form-urlencoded");
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Contains("JSON", error?.Message);

        using var missing = await http.GetAsync("/v2/whatever");
        Assert.Equal(HttpStatusCode.NotFound, missing.StatusCode);
        Assert.Equal("no_such_endpoint", (await missing.Content.ReadFromJsonAsync(PlatterJsonContext.Default.ErrorDto))?.Error);

        Assert.Empty(server.Host.Store.ListVolumes());
    }

    [Fact]
    public async Task HealthReportsStoreAndEndpoints()
    {
        await using var server = await RunningHost.StartAsync();
        using var client = server.Client();
        var health = await client.GetHealthAsync();
        Assert.Equal("ok", health.Status);
        Assert.Equal(server.StorePath, health.StoreDirectory);
        Assert.Null(health.NbdSocket);
        Assert.Null(health.NbdTcp);
        Assert.False(health.Tls);
    }

    [Fact]
    public async Task ApiSocketIsOwnerOnly()
    {
        await using var server = await RunningHost.StartAsync();
        var mode = File.GetUnixFileMode(server.ApiSocket);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, mode);
    }

    [Fact]
    public async Task TcpListenerRequiresTheBearerTokenForChanges()
    {
        int port = Repository.FreeLoopbackPort();
        await using var server = await RunningHost.StartAsync(dir => new PlatterHostOptions
        {
            StoreDirectory = dir.Combine("store"),
            ApiSocketPath = dir.Combine("api.sock"),
            ApiTcpEndPoint = new IPEndPoint(IPAddress.Loopback, port),
            ApiToken = "s3cret-token",
        });
        var baseUri = new Uri($"http://127.0.0.1:{port}/");

        using (var anonymous = new HttpClient { BaseAddress = baseUri })
        {
            // Reading needs no token (the read-only dashboard, a Prometheus scraping /metrics); changing does.
            using var read = await anonymous.GetAsync("v1/volumes");
            Assert.Equal(HttpStatusCode.OK, read.StatusCode);
            using var response = await anonymous.PostAsJsonAsync("v1/volumes", new CreateVolumeRequest("x", 4096), PlatterJsonContext.Default.CreateVolumeRequest);
            Assert.Equal(HttpStatusCode.Unauthorized, response.StatusCode);
            Assert.Equal("unauthorized", (await response.Content.ReadFromJsonAsync(PlatterJsonContext.Default.ErrorDto))?.Error);
            using var delete = await anonymous.DeleteAsync("v1/volumes/x");
            Assert.Equal(HttpStatusCode.Unauthorized, delete.StatusCode);
        }

        using (var wrong = PlatterApiClient.ForTcp(baseUri, "s3cret-tokeX"))
        {
            var e = await Assert.ThrowsAsync<PlatterApiException>(() => wrong.CreateVolumeAsync("x", 4096));
            Assert.Equal(401, e.StatusCode);
        }
        Assert.Empty(server.Host.Store.ListVolumes());

        using (var right = PlatterApiClient.ForTcp(baseUri, "s3cret-token"))
        {
            await right.CreateVolumeAsync("x", 4096);
            Assert.Single(await right.ListVolumesAsync());
        }

        // RFC 9110: the scheme is case-insensitive; the token is not. A change (reading needs no token): deleting a
        // volume that does not exist gets past the token check to 404.
        foreach (var (header, expected) in new[]
                 {
                     ("bearer s3cret-token", HttpStatusCode.NotFound), ("BEARER s3cret-token", HttpStatusCode.NotFound),
                     ("Bearer  s3cret-token", HttpStatusCode.NotFound), ("bearer S3CRET-TOKEN", HttpStatusCode.Unauthorized),
                     ("Basic s3cret-token", HttpStatusCode.Unauthorized), ("s3cret-token", HttpStatusCode.Unauthorized),
                 })
        {
            using var raw = new HttpClient { BaseAddress = baseUri };
            using var request = new HttpRequestMessage(HttpMethod.Delete, "v1/volumes/no-such-volume");
            request.Headers.TryAddWithoutValidation("Authorization", header);
            using var response = await raw.SendAsync(request);
            Assert.True(expected == response.StatusCode, $"Authorization: {header} -> {(int)response.StatusCode}");
        }

        // The unix socket needs no token: file permissions guard it.
        using var local = server.Client();
        Assert.Single(await local.ListVolumesAsync());
    }

    [Fact]
    public async Task SecondServerOnTheSameStoreIsRefused()
    {
        await using var server = await RunningHost.StartAsync();
        await using var second = new PlatterHost(new PlatterHostOptions
        {
            StoreDirectory = server.StorePath,
            ApiSocketPath = server.Directory.Combine("api2.sock"),
        });
        var e = await Assert.ThrowsAsync<StorageException>(() => second.StartAsync());
        Assert.Equal(StorageError.InUse, e.Error);
        // The first server is unharmed.
        using var client = server.Client();
        await client.CreateVolumeAsync("still-works", 4096);
    }

    [Fact]
    public async Task ListenerOnALiveSocketIsRefusedAndTheStoreReleased()
    {
        await using var server = await RunningHost.StartAsync();
        await using var other = new PlatterHost(new PlatterHostOptions
        {
            StoreDirectory = server.Directory.Combine("store2"),
            ApiSocketPath = server.ApiSocket,
        });
        var e = await Assert.ThrowsAsync<IOException>(() => other.StartAsync());
        Assert.Contains("another server is listening", e.Message);
        // The failed start closed its store again: another host can open it.
        await using var third = new PlatterHost(new PlatterHostOptions
        {
            StoreDirectory = server.Directory.Combine("store2"),
            ApiSocketPath = server.Directory.Combine("api3.sock"),
        });
        await third.StartAsync();
    }

    [Fact]
    public async Task VolumesSurviveARestartAndStaleSocketsAreReplaced()
    {
        using var dir = new TempDirectory();
        var options = new PlatterHostOptions { StoreDirectory = dir.Combine("store"), ApiSocketPath = dir.Combine("api.sock") };
        await using (var first = new PlatterHost(options))
        {
            await first.StartAsync();
            using var client = PlatterApiClient.ForUnixSocket(options.ApiSocketPath);
            await client.CreateVolumeAsync("keep", 1L << 30);
            await first.StopAsync();
            await first.StopAsync(); // twice is fine
        }
        Assert.False(File.Exists(options.ApiSocketPath), "a clean stop removes its socket");

        // A dead server's socket file: bound, never unlinked, nothing listens there. (.NET unlinks its own
        // sockets on close, so another process leaves it behind.)
        using (var python = System.Diagnostics.Process.Start("python3", ["-c", "import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])", options.ApiSocketPath]))
            await python.WaitForExitAsync();
        Assert.True(File.Exists(options.ApiSocketPath));

        await using var second = new PlatterHost(options);
        await second.StartAsync();
        using var again = PlatterApiClient.ForUnixSocket(options.ApiSocketPath);
        var volume = await again.GetVolumeAsync("keep");
        Assert.Equal(1L << 30, volume.SizeBytes);
    }

    [Fact]
    public async Task AFileInTheSocketsPlaceIsNotDeleted()
    {
        using var dir = new TempDirectory();
        File.WriteAllText(dir.Combine("api.sock"), "precious");
        await using var host = new PlatterHost(new PlatterHostOptions { StoreDirectory = dir.Combine("store"), ApiSocketPath = dir.Combine("api.sock") });
        var e = await Assert.ThrowsAsync<IOException>(() => host.StartAsync());
        Assert.Contains("not a socket", e.Message);
        Assert.Equal("precious", File.ReadAllText(dir.Combine("api.sock")));
    }
}
