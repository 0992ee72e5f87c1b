#!/usr/bin/env python3
"""What metrics cost on the request path, measured with both servers running at the same time (issue 14).

Usage: bench/metrics-ab.py PLATTER_EXECUTABLE [--rounds 40] [--runtime 8] [--size 512M] [--seed 1] [--swap-every 2]

Starts two `platter serve` processes from the same executable, one as is and one with --no-metrics, each on its own
store with one prefilled volume. Each round runs ONE fio process with two jobs, one per server, side by side (4 KiB
random reads or writes at queue depth 32, alternating by round; the job order alternates too), so both servers meet
the same machine at every instant: whatever the neighbours do lands on both. Every --swap-every rounds (default 2:
one read and one write round per pair of processes) both servers are restarted with their roles swapped (the store
that served with metrics now serves without), so a difference between the two stores or processes that is not the
metrics cancels out instead of passing for their cost. Swapping once, halfway, was not enough: a Native AOT profile
showed the kernel's copy from the page cache into the server's buffer costing 0.78 µs per 4 KiB read in one process and
1.24 in the other of the same round (their buffers and pages differ), a process-wide difference that one swap leaves to
chance and that the rounds of one pair of processes, resampled as if independent, hide from the interval.

Two measures per round, each as a ratio metrics on / off:
- server CPU per operation: utime+stime of the server process from /proc/PID/stat over the round (all its threads)
  divided by the operations fio completed on it;
- throughput: the operations each server completed (both were offered the same work by one fio process).
Prints each round, then per workload and over all rounds the geometric mean of the per-round ratios with a 95%
bootstrap confidence interval (10,000 resamples of the rounds, seeded), the median and the range, and the verdict
against the issue's budget (metrics cost at most 3%): proven when the interval's upper end (CPU) is below 1.03 and
its lower end (throughput) above 0.97. Sequential A-then-B runs (bench/run-peers.sh + bench/metrics-cost.py)
measured per-round ratios from 0.6 to 2.1 on this shared machine: the two servers did not meet the same load.
"""
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
BUDGET = 0.03  # issue 14: metrics may cost at most 3%


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


def start(exe, d, metrics):
    log = open(os.path.join(d, "server.log"), "a")
    for sock in ("api.sock", "nbd.sock"):
        if os.path.exists(os.path.join(d, sock)):
            os.unlink(os.path.join(d, sock))
    p = subprocess.Popen([exe, "serve", "--store", os.path.join(d, "store"), "--socket", os.path.join(d, "nbd.sock"),
                          "--api-socket", os.path.join(d, "api.sock"), "--listen", "none",
                          *([] if metrics else ["--no-metrics"])], stdout=log, stderr=subprocess.STDOUT)
    wait_for(os.path.join(d, "api.sock"))
    wait_for(os.path.join(d, "nbd.sock"))
    return p


def stop(p):
    p.terminate()
    try:
        p.wait(60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def bootstrap_gmean(ratios, rng, resamples=10000):
    """Geometric mean of the ratios and its 95% percentile-bootstrap interval."""
    logs = [math.log(r) for r in ratios]
    n = len(logs)
    means = sorted(sum(rng.choice(logs) for _ in range(n)) / n for _ in range(resamples))
    return math.exp(sum(logs) / n), math.exp(means[int(0.025 * resamples)]), math.exp(means[int(0.975 * resamples) - 1])


def main():
    args = sys.argv[1:]
    if not args or args[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    exe, rounds, runtime, size, seed, rate, swap_every = args[0], 40, 8, "512M", 1, 0, 2
    i = 1
    while i < len(args):
        if args[i] == "--rounds": rounds = int(args[i + 1])
        elif args[i] == "--runtime": runtime = int(args[i + 1])
        elif args[i] == "--size": size = args[i + 1]
        elif args[i] == "--seed": seed = int(args[i + 1])
        elif args[i] == "--rate": rate = int(args[i + 1])
        elif args[i] == "--swap-every": swap_every = int(args[i + 1])
        else: raise SystemExit(f"metrics-ab: unknown argument {args[i]}")
        i += 2
    work = tempfile.mkdtemp(prefix="platter-metrics-ab.")
    dirs = [os.path.join(work, "a"), os.path.join(work, "b")]
    procs = {}
    try:
        # Store a serves with metrics in the first half, b in the second.
        for d, metrics in zip(dirs, (True, False)):
            os.makedirs(d)
            procs[d] = start(exe, d, metrics)
            subprocess.run([exe, "volume", "create", "v", "--size", size, "--api-socket", os.path.join(d, "api.sock")],
                           check=True, stdout=subprocess.DEVNULL)
            subprocess.run(["fio", "--name=fill", "--ioengine=nbd", f"--uri=nbd+unix:///v?socket={d}/nbd.sock", "--rw=write",
                            "--bs=1M", f"--size={size}", "--iodepth=8", "--output=/dev/null"], check=True)
        role = {"on": dirs[0], "off": dirs[1]}
        results = {}  # workload -> list of (cpu ratio, throughput ratio)
        print(f"metrics-ab: {exe}, {rounds} rounds of {runtime} s, both servers restarted with roles swapped every "
              f"{swap_every} rounds; load at start {open('/proc/loadavg').read().split()[0]}")
        print("| round | workload | metrics on: store | CPU µs/op on | off | CPU on / off | ops on / off | load avg |")
        print("|---|---|---|---|---|---|---|---|")
        for r in range(1, rounds + 1):
            if r > 1 and (r - 1) % swap_every == 0:
                for d in dirs:
                    stop(procs[d])
                role = {"on": role["off"], "off": role["on"]}
                for name, d in role.items():
                    procs[d] = start(exe, d, name == "on")
                # Unmeasured: a process just started (its thread pool, its map, the store's pages) served one read
                # round at 3.5x the CPU per operation of the other in one run.
                warm = ["fio", "--time_based", "--runtime=2", "--ioengine=nbd", "--rw=randrw", "--bs=4k", "--iodepth=32",
                        f"--size={size}", "--output=/dev/null"]
                for d in dirs:
                    warm += [f"--name=warm-{os.path.basename(d)}", f"--uri=nbd+unix:///v?socket={d}/nbd.sock"]
                subprocess.run(warm, check=True, stdout=subprocess.DEVNULL)
            rw = "randread" if r % 2 else "randwrite"
            # Job order alternates too, in case fio starts the first job a moment earlier.
            names = ["on", "off"] if (r // 2) % 2 == 0 else ["off", "on"]
            cmd = ["fio", "--output-format=json", "--time_based", f"--runtime={runtime}", "--ioengine=nbd", f"--rw={rw}",
                   "--bs=4k", "--iodepth=32", f"--size={size}", f"--randseed={seed + r}",
                   *([f"--rate_iops={rate}"] if rate else [])]
            for n in names:
                cmd += [f"--name={n}", f"--uri=nbd+unix:///v?socket={role[n]}/nbd.sock"]
            pids = {n: procs[role[n]].pid for n in role}
            before = {n: cpu_seconds(pids[n]) for n in role}
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            after = {n: cpu_seconds(pids[n]) for n in role}
            load = open("/proc/loadavg").read().split()[0]
            jobs = {j["jobname"]: j for j in json.loads(out[out.index("{"):])["jobs"]}
            side = "read" if rw == "randread" else "write"
            us, ops = {}, {}
            for n in role:
                ops[n] = jobs[n][side]["total_ios"]
                us[n] = 1e6 * (after[n] - before[n]) / max(ops[n], 1)
            cpu_ratio, ops_ratio = us["on"] / us["off"], ops["on"] / max(ops["off"], 1)
            results.setdefault(rw, []).append((cpu_ratio, ops_ratio))
            print(f"| {r} | {rw} 4k qd32 | {os.path.basename(role['on'])} | {us['on']:.2f} | {us['off']:.2f} | {cpu_ratio:.3f} | "
                  f"{ops_ratio:.3f} | {load} |", flush=True)
        print()
        print(f"Load average at the end: {' '.join(open('/proc/loadavg').read().split()[:3])}")
        print()
        print("| workload | rounds | measure (on / off) | geometric mean | 95% CI | median | min | max | within 3%? |")
        print("|---|---|---|---|---|---|---|---|---|")
        rng = random.Random(seed)
        groups = list(results.items()) + [("all", [x for v in results.values() for x in v])]
        for rw, pairs in groups:
            for k, measure in enumerate(("CPU per op", "throughput")):
                ratios = [p[k] for p in pairs]
                g, lo, hi = bootstrap_gmean(ratios, rng)
                if measure == "CPU per op":
                    verdict = "yes" if hi < 1 + BUDGET else ("no" if lo > 1 + BUDGET else "not shown")
                else:
                    verdict = "yes" if lo > 1 - BUDGET else ("no" if hi < 1 - BUDGET else "not shown")
                print(f"| {rw} | {len(ratios)} | {measure} | {g:.3f} | {lo:.3f}–{hi:.3f} | {statistics.median(ratios):.3f} | "
                      f"{min(ratios):.3f} | {max(ratios):.3f} | {verdict} |")
    finally:
        for p in procs.values():
            if p.poll() is None:
                stop(p)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
