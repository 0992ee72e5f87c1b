namespace Platter.Lmdb;
internal static class AssemblyMarker { }
