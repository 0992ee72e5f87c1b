#!/usr/bin/env python3
"""Summary table of a bench/vhost-user.sh run (its results TSV) as markdown.

Medians over rounds; the ratios are medians of per-round ratios: both sides of a ratio ran within seconds of each
other, while the machine's load moves between rounds."""
import csv
import statistics
import sys

rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
val = {(r["round"], r["workload"], r["target"]): r for r in rows}
rounds = sorted({r["round"] for r in rows})


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def x(v):
    return "-" if v != v else f"{v:.2f}x"  # nan: the other target did not run


def ratio(w, t, other, key):
    out = []
    for r in rounds:
        a, b = val.get((r, w, t)), val.get((r, w, other))
        if a and b and float(b[key]) > 0:
            out.append(float(a[key]) / float(b[key]))
    return med(out)


targets = list(dict.fromkeys(r["target"] for r in rows))
base = "platter-vu-base" in targets
print("| workload | target | IOPS | p99 us | server CPU us/op | IOPS / qsd-vu | CPU per op / qsd-vu | CPU per op / platter-nbd |"
      + (" IOPS / platter-vu-base | CPU per op / platter-vu-base |" if base else ""))
print("|---|---|---|---|---|---|---|---|" + ("---|---|" if base else ""))
for w in dict.fromkeys(r["workload"] for r in rows):
    for t in targets:
        rs = [val[(r, w, t)] for r in rounds if (r, w, t) in val]
        if not rs:
            continue
        iops, p99, cpu = (med(float(x[k]) for x in rs) for k in ("iops", "p99us", "cpu_us_per_op"))
        q, c, n = ratio(w, t, "qsd-vu", "iops"), ratio(w, t, "qsd-vu", "cpu_us_per_op"), ratio(w, t, "platter-nbd", "cpu_us_per_op")
        line = f"| {w} | {t} | {iops:,.0f} | {p99:,.0f} | {cpu:.1f} | {x(q)} | {x(c)} | {x(n)} |"
        if base:
            line += f" {x(ratio(w, t, 'platter-vu-base', 'iops'))} | {x(ratio(w, t, 'platter-vu-base', 'cpu_us_per_op'))} |"
        print(line)
