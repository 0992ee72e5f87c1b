using System.Text.Json;
using Microsoft.Playwright;

namespace Platter.Interop.Tests;

/// <summary>
/// The web dashboard in headless Chromium (Debian's <c>chromium</c>, driven by Playwright): it shows what the CLI
/// made, it is read-only without the token, and what it does with the token is what the CLI then sees.
/// </summary>
public sealed class DashboardTests(ObservabilityServer fixture, ITestOutputHelper output) : IClassFixture<ObservabilityServer>, IAsyncLifetime
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(20);
    private readonly TempDirectory _scratch = new("plt-dash");
    private IPlaywright _playwright = null!;
    private IBrowser _browser = null!;

    public async Task InitializeAsync()
    {
        _playwright = await Playwright.CreateAsync();
        // Playwright's own browser download cannot work here; Debian's chromium is the browser.
        _browser = await _playwright.Chromium.LaunchAsync(new BrowserTypeLaunchOptions
        {
            ExecutablePath = Tools.Chromium,
            Headless = true,
            // Tests run as root in CI, where Chromium refuses to start with its sandbox.
            Args = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        });
    }

    public async Task DisposeAsync()
    {
        await _browser.DisposeAsync();
        _playwright.Dispose();
        output.WriteLine("--- server log (tail) ---");
        var log = fixture.Server.Log;
        output.WriteLine(log.Length <= 16_000 ? log : "[...]\n" + log[^16_000..]);
        _scratch.Dispose();
    }

    [Fact]
    public async Task Page_shows_the_cli_volume_and_a_snapshot_taken_in_it_shows_in_the_cli()
    {
        var server = fixture.Server;
        (await server.CliAsync("volume", "create", "dash-vm", "--size", "1G")).EnsureSuccess("platter volume create failed");

        var page = await _browser.NewPageAsync(new BrowserNewPageOptions { ViewportSize = new ViewportSize { Width = 1400, Height = 900 } });
        var errors = new List<string>();
        page.PageError += (_, e) => errors.Add(e);
        page.Console += (_, m) => { if (m.Type == "error") errors.Add(m.Text); };

        var response = await page.GotoAsync(new Uri(fixture.ApiUri, "/").ToString());
        Assert.NotNull(response);
        Assert.True(response!.Ok, $"GET / answered {response.Status}");
        Assert.EndsWith("/dashboard/", page.Url);

        var row = page.Locator("tr[data-volume='dash-vm']");
        await Assertions.Expect(row).ToBeVisibleAsync(new() { Timeout = (float)Wait.TotalMilliseconds });
        await Assertions.Expect(row.Locator("td").Nth(1)).ToHaveTextAsync("1.00 GiB");
        await Assertions.Expect(page.Locator("#health")).ToHaveTextAsync("ok");

        // Without the token the page is read-only: every action is disabled.
        await Assertions.Expect(row.GetByRole(AriaRole.Button, new() { Name = "Snapshot" })).ToBeDisabledAsync();
        await Assertions.Expect(page.Locator("#create-form button")).ToBeDisabledAsync();

        await page.Locator("#token").FillAsync(ObservabilityServer.Token);
        await page.Locator("#token-save").ClickAsync();
        await Assertions.Expect(row.GetByRole(AriaRole.Button, new() { Name = "Snapshot" })).ToBeEnabledAsync();

        // A destructive action asks first; cancelling it changes nothing.
        await row.GetByRole(AriaRole.Button, new() { Name = "Delete" }).ClickAsync();
        await Assertions.Expect(page.Locator("#dialog")).ToBeVisibleAsync();
        await Assertions.Expect(page.Locator("#dialog-title")).ToHaveTextAsync("Delete volume dash-vm?");
        await page.Locator("#dialog-cancel").ClickAsync();
        await Assertions.Expect(page.Locator("#dialog")).ToBeHiddenAsync();
        (await server.CliAsync("volume", "info", "dash-vm")).EnsureSuccess("the volume must survive a cancelled delete");

        // A snapshot made in the page.
        await row.GetByRole(AriaRole.Button, new() { Name = "Snapshot" }).ClickAsync();
        await page.Locator("#dialog-input").FillAsync("from-page");
        await page.Locator("#dialog-ok").ClickAsync();
        await Assertions.Expect(page.Locator("tr[data-snapshot='dash-vm@from-page']")).ToBeVisibleAsync(new() { Timeout = (float)Wait.TotalMilliseconds });

        var list = (await server.CliAsync("snapshot", "list", "dash-vm", "--json")).EnsureSuccess("platter snapshot list failed");
        using var json = JsonDocument.Parse(list.Stdout);
        var names = json.RootElement.GetProperty("snapshots").EnumerateArray().Select(s => s.GetProperty("fullName").GetString()).ToList();
        Assert.Contains("dash-vm@from-page", names);

        var screenshot = _scratch.Combine("dashboard.png");
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = screenshot, FullPage = true });
        Assert.True(new FileInfo(screenshot).Length > 10_000, "the screenshot is empty");
        Assert.True(errors.Count == 0, "the page reported errors:\n" + string.Join("\n", errors));
    }

    [Fact]
    public async Task Changes_without_the_token_are_refused_over_tcp()
    {
        using var http = new HttpClient { BaseAddress = fixture.ApiUri };
        using var read = await http.GetAsync("v1/volumes");
        Assert.True(read.IsSuccessStatusCode, $"reading needs no token: {(int)read.StatusCode}");
        using var create = await http.PostAsync("v1/volumes",
            new StringContent("{\"name\":\"sneaky\",\"sizeBytes\":1048576}", System.Text.Encoding.UTF8, "application/json"));
        Assert.Equal(System.Net.HttpStatusCode.Unauthorized, create.StatusCode);
        var info = await fixture.Server.CliAsync("volume", "info", "sneaky");
        Assert.NotEqual(0, info.ExitCode);
    }
}
