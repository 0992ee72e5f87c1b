#!/usr/bin/env python3
"""Summarizes a bench/run-peers.sh result directory as markdown (python3 standard library only).

Per workload and target: the median over rounds of IOPS (4 KiB workloads) or MB/s (1 MiB and copy
workloads), the range, the median p50/p99 completion latency, the flush p99 where flushes were sent,
server CPU (utime+stime delta of the server process over the job, as % of one core and as CPU
microseconds per operation) and fio's own CPU. Then the ratios Platter / best peer and
Platter / qemu-nbd qcow2 per workload.

Usage: summarize.py RESULT_DIR   (reads RESULT_DIR/runs.jsonl, env.txt; writes markdown to stdout)
"""
import json
import os
import statistics
import sys

# NBD servers that compete with Platter. raw-* are limits, not peers.
PEERS = ["qemu-nbd-raw", "qemu-nbd-qcow2", "qcow2-snap", "nbdkit-file"]
TARGET_ORDER = ["raw-direct", "raw-cached", "qemu-nbd-raw", "qemu-nbd-qcow2", "qcow2-snap", "nbdkit-file", "platter", "platter-nometrics", "platter-direct", "platter-base"]
WORKLOAD_ORDER = ["randwrite-4k-qd1-flush", "randwrite-4k-qd32", "randread-4k-qd32", "seqwrite-1m-qd8",
                  "seqread-1m-qd8", "copy-from-file", "copy-to-null"]


def unit_of(workload):
    return "IOPS" if "-4k-" in workload else "MB/s"


def percentile_us(lat, p):
    pct = (lat or {}).get("percentile") or {}
    v = pct.get(p)
    return v / 1000.0 if v else None


def parse_fio(run, workload):
    with open(run["fio_json"]) as f:
        job = json.load(f)["jobs"][0]
    direction = "read" if "read" in workload else "write"
    d = job[direction]
    ops = d["total_ios"]
    sync = job.get("sync") or {}
    return {
        "iops": d["iops"],
        "mbps": d["bw_bytes"] / 1e6,
        "p50": percentile_us(d.get("clat_ns"), "50.000000"),
        "p99": percentile_us(d.get("clat_ns"), "99.000000"),
        "flush_p99": percentile_us(sync.get("lat_ns"), "99.000000") if sync.get("total_ios") else None,
        "ops": ops,
        "client_cpu": job.get("usr_cpu", 0.0) + job.get("sys_cpu", 0.0),
    }


def parse_copy(run):
    return {"iops": None, "mbps": run["bytes"] / run["wall_s"] / 1e6, "p50": None, "p99": None,
            "flush_p99": None, "ops": None, "client_cpu": None}


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=0):
    if v is None:
        return "—"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    result_dir = sys.argv[1]
    runs = []
    with open(os.path.join(result_dir, "runs.jsonl")) as f:
        for line in f:
            if line.strip():
                runs.append(json.loads(line))

    failures = []
    cells = {}  # (workload, target) -> list of per-round metric dicts
    by_round = {}  # (workload, target) -> {round: metric dict}
    for run in runs:
        key = (run["workload"], run["target"])
        if run["kind"] == "na":
            cells.setdefault(key, [])
            continue
        if run.get("rc", 0) != 0:
            failures.append(f"round {run['round']} {run['target']} {run['workload']}: exit {run['rc']}")
            continue
        m = parse_fio(run, run["workload"]) if run["kind"] == "fio" else parse_copy(run)
        cpu_s = run.get("server_cpu_s") or 0.0
        has_server = not run["target"].startswith("raw-")
        m["cpu_pct"] = 100.0 * cpu_s / run["wall_s"] if has_server else None
        ops = m["ops"] if m["ops"] else None
        m["cpu_us_op"] = 1e6 * cpu_s / ops if has_server and ops else None
        m["cpu_s_gb"] = cpu_s / (run["bytes"] / 1e9) if has_server and run["kind"] == "nbdcopy" else None
        cells.setdefault(key, []).append(m)
        by_round.setdefault(key, {})[run["round"]] = m

    workloads = [w for w in WORKLOAD_ORDER if any(k[0] == w for k in cells)]
    workloads += sorted({k[0] for k in cells} - set(workloads))
    targets = [t for t in TARGET_ORDER if any(k[1] == t for k in cells)]

    out = []
    out.append("# Platter and peers: fio (nbd engine) and nbdcopy on one machine, one run\n")
    env_path = os.path.join(result_dir, "env.txt")
    if os.path.exists(env_path):
        out.append("```")
        out.append(open(env_path).read().rstrip())
        out.append("```\n")
    skipped = os.path.join(result_dir, "skipped.txt")
    if os.path.exists(skipped):
        for line in open(skipped):
            out.append(f"- **{line.strip()}**")
        out.append("")
    rounds = sorted({r["round"] for r in runs})
    out.append(f"Rounds: {len(rounds)}. Values are medians over rounds (range in brackets). "
               "Latency is fio completion latency in µs (median of per-round percentiles). "
               "Server CPU: utime+stime of the server process over the job, % of one core and CPU µs per I/O "
               "(per GB for copies). raw-* have no server: they are the disk (direct) and the page cache (cached).\n")

    summary = []
    for w in workloads:
        unit = unit_of(w)
        is_copy = w.startswith("copy-")
        flush = "flush" in w
        out.append(f"## {w} ({unit})\n")
        head = ["target", unit, "range"]
        if not is_copy:
            head += ["p50 µs", "p99 µs"]
        if flush:
            head += ["flush p99 µs"]
        head += ["server CPU %", "CPU s/GB" if is_copy else "CPU µs/op"]
        if not is_copy:
            head += ["fio CPU %"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        medians = {}
        for t in targets:
            ms = cells.get((w, t))
            if ms is None:
                continue
            if not ms:
                continue  # not applicable to this target
            key = "iops" if unit == "IOPS" else "mbps"
            vals = [m[key] for m in ms]
            medians[t] = med(vals)
            row = [t, fmt(medians[t], 0 if unit == "IOPS" else 1), f"{fmt(min(vals), 0 if unit == 'IOPS' else 1)}–{fmt(max(vals), 0 if unit == 'IOPS' else 1)}"]
            if not is_copy:
                row += [fmt(med([m["p50"] for m in ms]), 1), fmt(med([m["p99"] for m in ms]), 1)]
            if flush:
                row += [fmt(med([m["flush_p99"] for m in ms]), 1)]
            row += [fmt(med([m["cpu_pct"] for m in ms])),
                    fmt(med([m["cpu_s_gb"] for m in ms]), 2) if is_copy else fmt(med([m["cpu_us_op"] for m in ms]), 1)]
            if not is_copy:
                row += [fmt(med([m["client_cpu"] for m in ms]))]
            out.append("| " + " | ".join(row) + " |")
        out.append("")
        peers = {t: v for t, v in medians.items() if t in PEERS and v}
        best = max(peers, key=peers.get) if peers else None
        p = medians.get("platter")
        summary.append((w, unit, p, best, peers.get(best) if best else None, medians.get("qemu-nbd-qcow2"),
                        medians.get("raw-cached")))

    out.append("## Ratios\n")
    out.append("| workload | unit | platter | best peer | Platter / best peer | Platter / qemu-nbd qcow2 | Platter / raw-cached |")
    out.append("|---|---|---|---|---|---|---|")
    for w, unit, p, best, best_v, qcow2, raw in summary:
        digits = 0 if unit == "IOPS" else 1
        ratio = lambda a, b: f"{a / b:.2f}" if a and b else "—"
        out.append(f"| {w} | {unit} | {fmt(p, digits) if p else 'not run'} | "
                   f"{(best + ' ' + fmt(best_v, digits)) if best else '—'} | {ratio(p, best_v)} | {ratio(p, qcow2)} | {ratio(p, raw)} |")
    out.append("")
    if "platter-base" in targets:
        # Two builds of Platter in one run: the ratio within each round (the two ran minutes apart, under the same
        # load), then the median and range of those ratios. A range that spans 1.00 is no measurable difference.
        out.append("## platter / platter-base (per-round ratios)\n")
        out.append("| workload | unit | median ratio | range | rounds | server CPU µs/op (or s/GB), platter / base |")
        out.append("|---|---|---|---|---|---|")
        for w in workloads:
            key = "iops" if unit_of(w) == "IOPS" else "mbps"
            a, b = by_round.get((w, "platter"), {}), by_round.get((w, "platter-base"), {})
            ratios = [a[r][key] / b[r][key] for r in sorted(set(a) & set(b)) if a[r][key] and b[r][key]]
            if not ratios:
                continue
            cpu = "cpu_s_gb" if w.startswith("copy-") else "cpu_us_op"
            ca = med([m[cpu] for m in a.values()])
            cb = med([m[cpu] for m in b.values()])
            out.append(f"| {w} | {unit_of(w)} | {statistics.median(ratios):.2f} | {min(ratios):.2f}–{max(ratios):.2f} | "
                       f"{len(ratios)} | {fmt(ca, 2 if w.startswith('copy-') else 1)} / {fmt(cb, 2 if w.startswith('copy-') else 1)} |")
        out.append("")
    if failures:
        out.append("## Failed jobs (excluded from the medians)\n")
        for f in failures:
            out.append(f"- {f}")
        out.append("")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
