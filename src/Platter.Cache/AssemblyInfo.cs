using System.Runtime.Versioning;

// The cache uses fdatasync and unix file modes; Platter runs on Linux.
[assembly: SupportedOSPlatform("linux")]
