global using Platter.Interop.Tests.Infrastructure;
global using Platter.Testing;
global using Xunit;
global using Xunit.Abstractions;
