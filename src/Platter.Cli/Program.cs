namespace Platter.Cli;

internal static class Program
{
    private static Task<int> Main(string[] args) => PlatterCli.RunAsync(args);
}
