#!/usr/bin/env python3
"""Summarizes a bench/aged.sh result directory as markdown (python3 standard library only).

Per round: cold 1 MiB sequential read MB/s and 4 KiB random write IOPS, fresh and aged, with the load average taken
right before each run, and the ratios aged / fresh; then the medians of the per-round ratios against the targets
(random writes >= 0.9x, cold sequential reads >= 0.7x), and what the ageing did (time, snapshots, data file size).

Usage: summarize-aged.py RESULT_DIR   (reads runs.jsonl and env.txt; markdown to stdout)
"""
import json
import os
import statistics
import sys


def load_fio(path):
    try:
        with open(path) as f:
            job = json.load(f)["jobs"][0]
    except (OSError, ValueError, KeyError, IndexError):
        return None
    for d in ("read", "write"):
        if job[d].get("total_ios"):
            return {"iops": job[d]["iops"], "mbs": job[d]["bw_bytes"] / 1e6,
                    "p99": job[d]["clat_ns"]["percentile"].get("99.000000", 0) / 1000.0}
    return None


def main(result_dir):
    runs = [json.loads(line) for line in open(os.path.join(result_dir, "runs.jsonl")) if line.strip()]
    rows = {}
    ageing = {}
    for run in runs:
        if run["state"] == "ageing":
            ageing[run["round"]] = run
            continue
        rows[(run["round"], run["state"], run["workload"])] = (load_fio(run["fio_json"]), run)
    rounds = sorted({k[0] for k in rows})
    print("# Aged store versus fresh store\n")
    try:
        print("```\n" + open(os.path.join(result_dir, "env.txt")).read().strip() + "\n```\n")
    except OSError:
        pass
    print("| round | workload | fresh | load | aged | load | aged / fresh |")
    print("|---|---|---|---|---|---|---|")
    ratios = {"seqread": [], "randwrite": []}
    for r in rounds:
        for w, unit in (("seqread", "mbs"), ("randwrite", "iops")):
            f, fr = rows.get((r, "fresh", w), (None, None))
            a, ar = rows.get((r, "aged", w), (None, None))
            if not f or not a:
                print(f"| {r} | {w} | failed | | | | |")
                continue
            ratio = a[unit] / f[unit] if f[unit] else None
            ratios[w].append(ratio)
            u = "MB/s" if unit == "mbs" else "IOPS"
            print(f"| {r} | {w} | {f[unit]:,.0f} {u} (p99 {f['p99']:,.0f} µs) | {fr['load']} | "
                  f"{a[unit]:,.0f} {u} (p99 {a['p99']:,.0f} µs) | {ar['load']} | **{ratio:.2f}** |")
    print()
    print("| target | median of per-round aged / fresh | range | target |")
    print("|---|---|---|---|")
    for w, goal, name in (("randwrite", 0.9, "4 KiB random writes, depth 32"),
                          ("seqread", 0.7, "1 MiB sequential reads, depth 8, page cache dropped")):
        v = [x for x in ratios[w] if x is not None]
        if v:
            med = statistics.median(v)
            print(f"| {name} | **{med:.2f}** | {min(v):.2f}–{max(v):.2f} | >= {goal}: {'met' if med >= goal else 'NOT met'} |")
    print()
    print("| round | ageing time | snapshots taken and deleted | settle after it | data file allocated / apparent after |")
    print("|---|---|---|---|---|")
    for r in rounds:
        a = ageing.get(r)
        if a:
            df = a["data_file"]
            print(f"| {r} | {a['seconds']} s | {a['snapshots']} | {a['settle_s']} s | "
                  f"{df['allocated'] / 2**20:,.0f} / {df['apparent'] / 2**20:,.0f} MiB |")


if __name__ == "__main__":
    main(sys.argv[1])
