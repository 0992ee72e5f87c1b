namespace Platter.Interop.Tests;

/// <summary>fio's nbd engine: several jobs writing at once, each verifying every block it wrote by CRC32C.</summary>
public sealed class FioTests(ServerFixture fixture, ITestOutputHelper output) : InteropTest(fixture, output), IClassFixture<ServerFixture>
{
    [Theory]
    [InlineData("--bs=4k", 4)]
    [InlineData("--bsrange=4k-64k", 3)]
    public async Task Random_writes_from_several_jobs_verify_with_crc32c(string blockSizeOption, int jobs)
    {
        const long regionBytes = 16 * MiB;
        int seed = Random.Shared.Next();
        Output.WriteLine($"seed {seed} (fio --randseed)");
        var export = await Fixture.CreateExportAsync("fio", jobs * regionBytes);

        // offset_increment gives each job its own region: fio's verify assumes nobody else writes its blocks.
        var result = await ProcessRunner.RunAsync(Tools.Fio,
        [
            "--name=randwrite-verify",
            "--ioengine=nbd",
            $"--uri={export.Uri}",
            "--rw=randwrite",
            blockSizeOption,
            "--iodepth=16",
            $"--numjobs={jobs}",
            $"--size={regionBytes}",
            $"--offset_increment={regionBytes}",
            "--verify=crc32c",
            "--verify_fatal=1",
            $"--randseed={seed}",
            "--output-format=json",
        ], TimeSpan.FromSeconds(120));

        Assert.True(result.ExitCode == 0, $"fio failed (seed {seed})\n{result.Describe()}");
        var report = Clients.ParseJson(result, result.Stdout);
        var jobReports = report.GetProperty("jobs").EnumerateArray().ToList();
        Assert.Equal(jobs, jobReports.Count);
        foreach (var job in jobReports)
        {
            Assert.True(job.GetProperty("error").GetInt32() == 0, $"a fio job reported an error (seed {seed})\n{result.Describe()}");
            long written = job.GetProperty("write").GetProperty("io_bytes").GetInt64();
            long verified = job.GetProperty("read").GetProperty("io_bytes").GetInt64();
            // Every byte written was read back and checked; a job that verified nothing would prove nothing.
            Assert.True(written >= regionBytes, $"job wrote {written} bytes, expected its whole {regionBytes}-byte region (seed {seed})");
            Assert.True(verified == written, $"job verified {verified} of {written} written bytes (seed {seed})");
        }
    }
}
