using System.Runtime.Versioning;

// vhost-user is a Linux protocol (unix sockets with SCM_RIGHTS, eventfd, shared memory from memfd).
[assembly: SupportedOSPlatform("linux")]
