namespace Platter.Server;

/// <summary>
/// Where a store and its sockets live by default. The server and the CLI both resolve paths here so that
/// `platter volume list` finds the server that `platter serve` started with the same environment.
/// </summary>
public static class StorePaths
{
    /// <summary>Environment variable that names the store directory.</summary>
    public const string StoreEnvironmentVariable = "PLATTER_STORE";

    /// <summary>Environment variable that names the management API socket for the CLI.</summary>
    public const string ApiSocketEnvironmentVariable = "PLATTER_API_SOCKET";

    /// <summary>File name of the NBD unix socket inside the store directory.</summary>
    public const string NbdSocketFileName = "nbd.sock";

    /// <summary>File name of the management API unix socket inside the store directory.</summary>
    public const string ApiSocketFileName = "api.sock";

    /// <summary>
    /// The default store directory: $PLATTER_STORE, else $XDG_DATA_HOME/platter, else ~/.local/share/platter.
    /// The same rule holds for root (/root/.local/share/platter) so that the CLI and the server agree without
    /// configuration; a system service passes --store explicitly.
    /// </summary>
    public static string DefaultStoreDirectory(Func<string, string?>? getEnvironment = null)
    {
        getEnvironment ??= Environment.GetEnvironmentVariable;
        var store = getEnvironment(StoreEnvironmentVariable);
        if (!string.IsNullOrWhiteSpace(store)) return Path.GetFullPath(store);
        var dataHome = getEnvironment("XDG_DATA_HOME");
        // The XDG spec says relative values are invalid and must be ignored.
        if (!string.IsNullOrWhiteSpace(dataHome) && Path.IsPathRooted(dataHome)) return Path.Combine(dataHome, "platter");
        var home = getEnvironment("HOME");
        if (string.IsNullOrWhiteSpace(home)) home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        return Path.Combine(home, ".local", "share", "platter");
    }

    /// <summary>The NBD unix socket of a store directory.</summary>
    public static string NbdSocketPath(string storeDirectory) => Path.Combine(storeDirectory, NbdSocketFileName);

    /// <summary>The management API socket of a store directory.</summary>
    public static string ApiSocketPath(string storeDirectory) => Path.Combine(storeDirectory, ApiSocketFileName);

    /// <summary>The API socket the CLI talks to: $PLATTER_API_SOCKET, else the default store's api.sock.</summary>
    public static string DefaultApiSocketPath(Func<string, string?>? getEnvironment = null)
    {
        getEnvironment ??= Environment.GetEnvironmentVariable;
        var socket = getEnvironment(ApiSocketEnvironmentVariable);
        if (!string.IsNullOrWhiteSpace(socket)) return Path.GetFullPath(socket);
        return ApiSocketPath(DefaultStoreDirectory(getEnvironment));
    }
}
