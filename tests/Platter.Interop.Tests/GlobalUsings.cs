global using Platter.Interop.Tests.Infrastructure;
global using Xunit;
global using Xunit.Abstractions;
