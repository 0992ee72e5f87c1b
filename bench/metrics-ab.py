#!/usr/bin/env python3
"""What metrics cost on the request path, measured with both servers running at the same time (issue 14).

Usage: bench/metrics-ab.py PLATTER_EXECUTABLE [--rounds 20] [--runtime 5] [--size 512M]

Starts two `platter serve` processes from the same executable, one as is and one with --no-metrics, each on its own
store with one prefilled volume. Each round runs ONE fio process with two jobs, one per server, side by side (4 KiB
random reads or writes at queue depth 32, alternating by round), so both servers meet the same machine at every
instant: whatever the neighbours do lands on both. The measure is server CPU per operation: utime+stime of the
server process from /proc/PID/stat over the round (all its threads) divided by the operations fio completed on it.
Prints each round's ratio (metrics on / off) and, per workload, the median and the spread (min, quartiles, max), with
the load average. Sequential A-then-B runs (bench/run-peers.sh + bench/metrics-cost.py) measured per-round ratios from
0.6 to 2.1 on this shared machine: the two servers did not meet the same load.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15 of stat)


def wait_for(path, seconds=120):
    deadline = time.time() + seconds
    while not os.path.exists(path):
        if time.time() > deadline:
            raise SystemExit(f"metrics-ab: {path} did not appear")
        time.sleep(0.1)


def main():
    args = sys.argv[1:]
    if not args or args[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    exe, rounds, runtime, size = args[0], 20, 5, "512M"
    i = 1
    while i < len(args):
        if args[i] == "--rounds": rounds = int(args[i + 1])
        elif args[i] == "--runtime": runtime = int(args[i + 1])
        elif args[i] == "--size": size = args[i + 1]
        else: raise SystemExit(f"metrics-ab: unknown argument {args[i]}")
        i += 2
    work = tempfile.mkdtemp(prefix="platter-metrics-ab.")
    servers = {}
    try:
        for name, extra in (("on", []), ("off", ["--no-metrics"])):
            d = os.path.join(work, name)
            os.makedirs(d)
            log = open(os.path.join(d, "server.log"), "w")
            p = subprocess.Popen([exe, "serve", "--store", os.path.join(d, "store"), "--socket", os.path.join(d, "nbd.sock"),
                                  "--api-socket", os.path.join(d, "api.sock"), "--listen", "none", *extra],
                                 stdout=log, stderr=subprocess.STDOUT)
            servers[name] = (p, d)
        for name, (p, d) in servers.items():
            wait_for(os.path.join(d, "api.sock"))
            wait_for(os.path.join(d, "nbd.sock"))
            subprocess.run([exe, "volume", "create", "v", "--size", size, "--api-socket", os.path.join(d, "api.sock")], check=True, stdout=subprocess.DEVNULL)
            subprocess.run(["fio", "--name=fill", "--ioengine=nbd", f"--uri=nbd+unix:///v?socket={d}/nbd.sock", "--rw=write", "--bs=1M",
                            f"--size={size}", "--iodepth=8", "--output=/dev/null"], check=True)
        results = {}  # workload -> list of (ratio, on_us, off_us, iops_on, iops_off, load)
        print("| round | workload | CPU µs/op, metrics on | off | on / off | IOPS on / off | load avg |")
        print("|---|---|---|---|---|---|---|")
        for r in range(1, rounds + 1):
            rw = "randread" if r % 2 else "randwrite"
            # Job order alternates too, in case fio starts the first job a moment earlier.
            names = ["on", "off"] if (r // 2) % 2 == 0 else ["off", "on"]
            cmd = ["fio", "--output-format=json", "--time_based", f"--runtime={runtime}", "--ioengine=nbd", f"--rw={rw}",
                   "--bs=4k", "--iodepth=32", f"--size={size}"]
            for n in names:
                cmd += [f"--name={n}", f"--uri=nbd+unix:///v?socket={servers[n][1]}/nbd.sock"]
            before = {n: cpu_seconds(servers[n][0].pid) for n in servers}
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            after = {n: cpu_seconds(servers[n][0].pid) for n in servers}
            load = open("/proc/loadavg").read().split()[0]
            jobs = {j["jobname"]: j for j in json.loads(out[out.index("{"):])["jobs"]}
            side = "read" if rw == "randread" else "write"
            us, iops = {}, {}
            for n in servers:
                ops = jobs[n][side]["total_ios"]
                us[n] = 1e6 * (after[n] - before[n]) / max(ops, 1)
                iops[n] = jobs[n][side]["iops"]
            ratio = us["on"] / us["off"]
            results.setdefault(rw, []).append(ratio)
            print(f"| {r} | {rw} 4k qd32 | {us['on']:.2f} | {us['off']:.2f} | {ratio:.3f} | {iops['on'] / iops['off']:.3f} | {load} |", flush=True)
        print()
        print("| workload | rounds | on / off CPU per op: median | min | lower quartile | upper quartile | max |")
        print("|---|---|---|---|---|---|---|")
        for rw, ratios in results.items():
            q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
            print(f"| {rw} 4k qd32 | {len(ratios)} | {statistics.median(ratios):.3f} | {min(ratios):.3f} | {q[0]:.3f} | {q[2]:.3f} | {max(ratios):.3f} |")
    finally:
        for p, _ in servers.values():
            p.terminate()
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
