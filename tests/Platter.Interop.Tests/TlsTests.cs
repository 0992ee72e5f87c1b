using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Platter.Interop.Tests;

/// <summary>
/// `platter serve --tls-cert/--tls-key --tls-required` with libnbd's GnuTLS client: data goes through TLS (nbdcopy
/// both ways over nbds://), the negotiated protocol says TLS, and a client that will not start TLS is refused.
/// </summary>
public sealed class TlsTests(ITestOutputHelper output) : IDisposable
{
    private readonly TempDirectory _dir = new("plt-tls");

    [Fact]
    public async Task Data_goes_through_tls_and_plain_clients_are_refused()
    {
        string serverCert = Path.Combine(_dir.Path, "server-cert.pem");
        string serverKey = Path.Combine(_dir.Path, "server-key.pem");
        string clientDir = Directory.CreateDirectory(Path.Combine(_dir.Path, "client")).FullName;
        WriteSelfSignedCertificate(serverCert, serverKey, Path.Combine(clientDir, "ca-cert.pem"));

        int port = Repository.FreeLoopbackPort();
        await using var server = new PlatterServer
        {
            Listen = $"127.0.0.1:{port}",
            ExtraArguments = ["--tls-cert", serverCert, "--tls-key", serverKey, "--tls-required"],
        };
        try
        {
            await server.StartAsync();
            var created = await server.CliAsync("volume", "create", "secure", "--size", "16M");
            Assert.True(created.ExitCode == 0, created.Describe());
            string tlsUri = $"nbds://127.0.0.1:{port}/secure?tls-certificates={clientDir}";

            var info = await Clients.NbdInfoJsonAsync(tlsUri);
            Assert.True(info.GetProperty("TLS").GetBoolean(), "nbdinfo must report a TLS session");

            var data = new byte[16 << 20];
            new Random(7).NextBytes(data);
            string source = Path.Combine(_dir.Path, "source.img");
            string copy = Path.Combine(_dir.Path, "copy.img");
            await File.WriteAllBytesAsync(source, data);
            (await ProcessRunner.RunAsync(Tools.NbdCopy, ["--flush", source, tlsUri])).EnsureSuccess("nbdcopy into the volume over TLS");
            (await ProcessRunner.RunAsync(Tools.NbdCopy, [tlsUri, copy])).EnsureSuccess("nbdcopy out of the volume over TLS");
            byte[] readBack = await File.ReadAllBytesAsync(copy);
            Assert.True(data.SequenceEqual(readBack), "data read back over TLS differs");

            // Refused by the server's TLS requirement (NBD_REP_ERR_TLS_REQD, which libnbd names), not failed some other way.
            var plain = await Nbdsh.RunAsync(PlainConnect, new Dictionary<string, string> { ["URI"] = $"nbd://127.0.0.1:{port}/secure" });
            Assert.False(plain.GetProperty("connected").GetBoolean(), "a client without TLS must be refused by --tls-required");
            Assert.Contains("handshake: server requires TLS encryption first", plain.GetProperty("error").GetString());
            Assert.Equal(0, await server.StopAsync());
        }
        catch
        {
            output.WriteLine("--- TLS server log ---");
            output.WriteLine(server.Log);
            throw;
        }
    }

    [Fact]
    public async Task A_client_CA_alone_refuses_clients_that_skip_TLS()
    {
        string serverCert = Path.Combine(_dir.Path, "server-cert.pem");
        string serverKey = Path.Combine(_dir.Path, "server-key.pem");
        string clientDir = Directory.CreateDirectory(Path.Combine(_dir.Path, "client")).FullName;
        WriteSelfSignedCertificate(serverCert, serverKey, Path.Combine(clientDir, "ca-cert.pem"));

        int port = Repository.FreeLoopbackPort();
        // No --tls-required: the client CA implies it, or a client that never starts TLS would skip the certificate check.
        await using var server = new PlatterServer
        {
            Listen = $"127.0.0.1:{port}",
            ExtraArguments = ["--tls-cert", serverCert, "--tls-key", serverKey, "--tls-client-ca", serverCert],
        };
        try
        {
            await server.StartAsync();
            (await server.CliAsync("volume", "create", "secure", "--size", "16M")).EnsureSuccess();
            var plain = await Nbdsh.RunAsync(PlainConnect, new Dictionary<string, string> { ["URI"] = $"nbd://127.0.0.1:{port}/secure" });
            Assert.False(plain.GetProperty("connected").GetBoolean(), "a client without TLS must be refused when --tls-client-ca is given");
            Assert.Contains("handshake: server requires TLS encryption first", plain.GetProperty("error").GetString());
        }
        catch
        {
            output.WriteLine("--- TLS server log ---");
            output.WriteLine(server.Log);
            throw;
        }
    }

    // libnbd's own client, told not to use TLS: reports whether it connected and, if not, libnbd's reason.
    private const string PlainConnect = """
import json, os
h = nbd.NBD()
h.set_tls(nbd.TLS_DISABLE)
try:
    h.connect_uri(os.environ["URI"])
    print(json.dumps({"connected": True}))
except nbd.Error as e:
    print(json.dumps({"connected": False, "error": str(e)}))
""";

    // A self-signed server certificate for localhost and 127.0.0.1; the client trusts it as its own CA.
    internal static void WriteSelfSignedCertificate(string certPath, string keyPath, string caPath)
    {
        using var key = RSA.Create(2048);
        var request = new CertificateRequest("CN=localhost", key, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        var names = new SubjectAlternativeNameBuilder();
        names.AddDnsName("localhost");
        names.AddIpAddress(IPAddress.Loopback);
        request.CertificateExtensions.Add(names.Build());
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(
            X509KeyUsageFlags.DigitalSignature | X509KeyUsageFlags.KeyEncipherment | X509KeyUsageFlags.KeyCertSign, true));
        using var certificate = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-5), DateTimeOffset.UtcNow.AddDays(1));
        string pem = certificate.ExportCertificatePem();
        File.WriteAllText(certPath, pem);
        File.WriteAllText(caPath, pem);
        File.WriteAllText(keyPath, key.ExportPkcs8PrivateKeyPem());
    }

    public void Dispose() => _dir.Dispose();
}
