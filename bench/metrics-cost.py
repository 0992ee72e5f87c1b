#!/usr/bin/env python3
"""What metrics cost, from one bench/run-peers.sh run with the targets platter and platter-nometrics.

Usage: bench/metrics-cost.py RESULT_DIR

Pairs the two targets round by round (they ran back to back in each round, so both met the same load) and prints,
per workload, each round's server CPU per operation with metrics on and off and their ratio, then the median ratio
and its range. CPU per operation (the server's utime+stime over the run, from /proc/PID/stat, divided by the
operations fio completed) only counts time the server actually ran, so it is far less disturbed by other jobs on the
machine than throughput, which also the median IOPS ratio shows for comparison.
"""
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from summarize import parse_fio  # noqa: E402  (the same fio parsing as the summary)


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    cells = {}  # (workload, round) -> {target: (cpu_us_op, iops)}
    with open(os.path.join(sys.argv[1], "runs.jsonl")) as f:
        for line in f:
            if not line.strip():
                continue
            run = json.loads(line)
            if run["kind"] != "fio" or run.get("rc", 0) != 0 or run["target"] not in ("platter", "platter-nometrics"):
                continue
            m = parse_fio(run, run["workload"])
            if not m["ops"]:
                continue
            cpu_us_op = 1e6 * (run.get("server_cpu_s") or 0.0) / m["ops"]
            cells.setdefault((run["workload"], run["round"]), {})[run["target"]] = (cpu_us_op, m["iops"])

    workloads = sorted({w for w, _ in cells})
    print("| workload | rounds | CPU µs/op on (median) | off (median) | on / off per round: median [min–max] | IOPS on / off (median of rounds) |")
    print("|---|---|---|---|---|---|")
    for w in workloads:
        pairs = [cells[k] for k in sorted(cells) if k[0] == w and len(cells[k]) == 2]
        if not pairs:
            continue
        on = [p["platter"][0] for p in pairs]
        off = [p["platter-nometrics"][0] for p in pairs]
        cpu_ratio = [p["platter"][0] / p["platter-nometrics"][0] for p in pairs]
        iops_ratio = [p["platter"][1] / p["platter-nometrics"][1] for p in pairs]
        print(f"| {w} | {len(pairs)} | {statistics.median(on):.2f} | {statistics.median(off):.2f} | "
              f"{statistics.median(cpu_ratio):.3f} [{min(cpu_ratio):.3f}–{max(cpu_ratio):.3f}] | {statistics.median(iops_ratio):.3f} |")
        for (wk, rnd), p in sorted(cells.items()):
            if wk == w and len(p) == 2:
                print(f"|   round {rnd} | | {p['platter'][0]:.2f} | {p['platter-nometrics'][0]:.2f} | "
                      f"{p['platter'][0] / p['platter-nometrics'][0]:.3f} | {p['platter'][1] / p['platter-nometrics'][1]:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
