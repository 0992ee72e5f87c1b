using System.Runtime.Versioning;

// Platter uses unix sockets, flock and unix file modes: Linux is the platform it is built and tested on.
[assembly: SupportedOSPlatform("linux")]
