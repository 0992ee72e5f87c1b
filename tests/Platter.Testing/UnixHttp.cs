using System.Net.Sockets;

namespace Platter.Testing;

/// <summary>Plain HTTP clients for a server's management API on its unix socket (requests the typed client does not make).</summary>
public static class UnixHttp
{
    /// <summary>An HttpClient whose every connection goes to <paramref name="socketPath"/>; base address http://platter/.</summary>
    public static HttpClient Client(string socketPath)
    {
        var handler = new SocketsHttpHandler
        {
            ConnectCallback = async (_, ct) =>
            {
                var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                try
                {
                    await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), ct);
                }
                catch
                {
                    socket.Dispose();
                    throw;
                }
                return new NetworkStream(socket, ownsSocket: true);
            },
        };
        return new HttpClient(handler) { BaseAddress = new Uri("http://platter/") };
    }

    /// <summary>GET <paramref name="path"/> on the API socket; the body, or an exception naming the status.</summary>
    public static async Task<string> GetAsync(string socketPath, string path)
    {
        using var http = Client(socketPath);
        using var response = await http.GetAsync(path);
        string body = await response.Content.ReadAsStringAsync();
        if (!response.IsSuccessStatusCode) throw new HttpRequestException($"GET {path}: {(int)response.StatusCode}\n{body}");
        return body;
    }
}
