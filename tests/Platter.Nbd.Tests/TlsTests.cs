using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using static Platter.Testing.NbdTestClient;

namespace Platter.Nbd.Tests;

public class TlsTests
{
    internal static X509Certificate2 SelfSignedForTests(string subject, X509Certificate2? issuer = null, bool ca = false) => SelfSigned(subject, issuer, ca);

    private static X509Certificate2 SelfSigned(string subject, X509Certificate2? issuer = null, bool ca = false)
    {
        using var key = RSA.Create(2048);
        var request = new CertificateRequest($"CN={subject}", key, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(ca, false, 0, true));
        if (ca) request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        else request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1"), new Oid("1.3.6.1.5.5.7.3.2")], false));
        var san = new SubjectAlternativeNameBuilder();
        san.AddDnsName(subject);
        request.CertificateExtensions.Add(san.Build());
        var notBefore = DateTimeOffset.UtcNow.AddMinutes(-5);
        var notAfter = issuer is null ? DateTimeOffset.UtcNow.AddDays(2) : issuer.NotAfter.ToUniversalTime().AddHours(-1);
        X509Certificate2 cert = issuer is null
            ? request.CreateSelfSigned(notBefore, notAfter)
            : request.Create(issuer, notBefore, notAfter, RandomNumberGenerator.GetBytes(8)).CopyWithPrivateKey(key);
        // Round-trip through PKCS#12 so SslStream on Linux gets a usable private key.
        return X509CertificateLoader.LoadPkcs12(cert.Export(X509ContentType.Pkcs12), null);
    }

    [Fact]
    public async Task StartTls_UpgradesAndServesOverTls()
    {
        using var cert = SelfSigned("localhost");
        await using var server = await TestServer.StartAsync(TestServer.DefaultExports(), new NbdServerOptions { TlsCertificate = cert });
        await using var client = await server.ConnectAsync();
        // Negotiation state before STARTTLS does not survive it.
        Assert.Equal(RepAck, await client.StructuredReplyAsync());
        await client.StartTlsAsync("localhost");
        Assert.Equal(ErrInvalid, (await client.OptionAsync(OptStartTls)).Single().Type);
        Assert.Equal(ErrInvalid, (await client.MetaContextAsync(OptSetMetaContext, "disk", "base:allocation")).Final);
        Assert.Equal(RepAck, await client.ExtendedHeadersAsync());
        Assert.Equal(RepAck, await client.InfoOrGoAsync(OptGo, "disk"));
        Assert.Equal(0u, await client.WriteAsync(0, new byte[70_000]));
        byte[] data = new byte[100_000];
        Random.Shared.NextBytes(data);
        Assert.Equal(0u, await client.WriteAsync(4096, data));
        Assert.Equal(data, (await client.ReadAsync(4096, data.Length)).Data);
        await client.DisconnectAsync();
        Assert.True(await client.IsClosedByServerAsync());
    }

    [Fact]
    public async Task TlsRequired_RefusesEveryOptionButStartTlsAndAbort()
    {
        using var cert = SelfSigned("localhost");
        var options = new NbdServerOptions { TlsCertificate = cert, TlsRequired = true };
        await using var server = await TestServer.StartAsync(TestServer.DefaultExports(), options);
        await using (var client = await server.ConnectAsync())
        {
            Assert.Equal(ErrTlsReqd, (await client.OptionAsync(OptList)).Single().Type);
            Assert.Equal(ErrTlsReqd, await client.InfoOrGoAsync(OptGo, "disk"));
            Assert.Equal(ErrTlsReqd, await client.InfoOrGoAsync(OptInfo, "disk"));
            Assert.Equal(ErrTlsReqd, (await client.OptionAsync(OptStructuredReply)).Single().Type);
            Assert.Equal(ErrTlsReqd, (await client.OptionAsync(77)).Single().Type);
            await client.StartTlsAsync("localhost");
            Assert.Equal(RepAck, (await client.OptionAsync(OptList)).Last().Type);
            Assert.Equal(RepAck, await client.InfoOrGoAsync(OptGo, "disk"));
            Assert.Equal(0u, await client.FlushAsync());
        }
        await using (var client = await server.ConnectAsync())
        {
            // EXPORT_NAME cannot be refused politely: the session ends.
            await client.SendOptionAsync(OptExportName, "disk"u8.ToArray());
            Assert.True(await client.IsClosedByServerAsync());
        }
        await using (var client = await server.ConnectAsync())
        {
            Assert.Equal(RepAck, (await client.OptionAsync(OptAbort)).Single().Type);
        }
    }

    [Fact]
    public async Task ClientCertificate_MustChainToConfiguredAuthority()
    {
        using var serverCert = SelfSigned("localhost");
        using var ca = SelfSigned("Platter Test CA", ca: true);
        using var good = SelfSigned("client", issuer: ca);
        using var stranger = SelfSigned("stranger");
        var options = new NbdServerOptions { TlsCertificate = serverCert, TlsRequired = true, TlsClientCertificateAuthority = ca };
        await using var server = await TestServer.StartAsync(TestServer.DefaultExports(), options);

        await using (var client = await server.ConnectAsync())
        {
            await client.StartTlsAsync("localhost", good);
            Assert.Equal(RepAck, await client.InfoOrGoAsync(OptGo, "disk"));
            Assert.Equal(0u, await client.FlushAsync());
        }
        foreach (var (cert, what) in new[] { (stranger, "a certificate from another authority"), ((X509Certificate2?)null, "no certificate") })
        {
            int rejectedBefore = RejectedClientCertificates(server);
            await using var client = await server.ConnectAsync();
            // Depending on the TLS version the refusal shows in the handshake (TLS 1.2) or on first use (TLS 1.3: the
            // client finishes before the server has judged its certificate). Either way it is the TLS layer's error
            // or the closed connection, never an option reply, a protocol error or a timeout.
            var refusal = await Record.ExceptionAsync(async () =>
            {
                await client.StartTlsAsync("localhost", cert);
                await client.OptionAsync(OptList);
            });
            Assert.True(refusal is AuthenticationException or IOException,
                $"{what}: expected the server's TLS rejection, got {(refusal is null ? "an answer to NBD_OPT_LIST" : refusal.GetType().Name + ": " + refusal.Message)}");
            // The server's side: its certificate check turned this client away (it logs why the connection ended).
            await WaitUntilAsync(() => RejectedClientCertificates(server) == rejectedBefore + 1,
                $"{what}: the server did not log the rejected certificate; its log:\n{string.Join('\n', server.Logger.Entries.Select(e => e.Message))}");
        }
        await using (var client = await server.ConnectAsync())
        {
            await client.StartTlsAsync("localhost", good);
            Assert.Equal(RepAck, (await client.OptionAsync(OptList)).Last().Type);
        }
        Assert.Empty(server.Logger.Errors);
    }

    // The server ends a connection whose client certificate fails its check with "connection ended: <the
    // AuthenticationException's message>", which names the validation callback that refused the certificate.
    private static int RejectedClientCertificates(TestServer server) =>
        server.Logger.Entries.Count(e => e.Message.Contains("connection ended", StringComparison.Ordinal)
                                         && e.Message.Contains("RemoteCertificateValidationCallback", StringComparison.Ordinal));

    // The server logs after it has closed the connection, so the client can see the refusal first: wait a bounded time.
    private static async Task WaitUntilAsync(Func<bool> condition, string failure)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (!condition())
        {
            if (DateTime.UtcNow > deadline) Assert.Fail(failure);
            await Task.Delay(10);
        }
    }

    [Fact]
    public async Task GarbageInsteadOfTlsHandshake_ClosesConnection()
    {
        using var cert = SelfSigned("localhost");
        await using var server = await TestServer.StartAsync(TestServer.DefaultExports(), new NbdServerOptions { TlsCertificate = cert });
        await using var client = await server.ConnectAsync();
        Assert.Equal(RepAck, (await client.OptionAsync(OptStartTls)).Single().Type);
        await client.WriteAsync(new byte[64]);
        Assert.True(await client.IsClosedByServerAsync());
        Assert.Empty(server.Logger.Errors);
    }

    [Fact]
    public void TlsRequired_WithoutCertificate_IsRejected()
    {
        Assert.Throws<ArgumentException>(() => new NbdServer(new MemoryExportProvider(), new NbdServerOptions { TlsRequired = true }));
    }
}
