#!/usr/bin/env python3
"""Summarizes a bench/snapshots.sh result directory as markdown (python3 standard library only).

create: snapshot creation time in-process (create-inproc.json from Platter.Bench --snapshots) and end to end
        (`platter snapshot create`, with `platter snapshot list` as the CLI's own cost), medians and ranges.
cow:    4 KiB random write IOPS before and right after a snapshot, whole run and first 2 s, per target; the
        ratios after/before (median of per-round ratios, each round's runs being adjacent) and Platter / qcow2.
clone:  4 KiB random read IOPS and server CPU per read per depth and target; depth 16 / depth 1 and depth 1 / depth 0
        as ratios of medians and as medians of per-round ratios (a round's runs are minutes apart), and Platter / qcow2.
delete: read latency (fio per-I/O log) during a snapshot's deletion and reclaim versus the control run, in the
        window from the command to the end of the reclaim (the same span in the control run), and over the whole run.

Usage: summarize-snapshots.py RESULT_DIR   (reads runs.jsonl, create-inproc.json, env.txt, notes.txt; markdown to stdout)
"""
import json
import os
import statistics
import sys


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=0):
    if v is None:
        return "—"
    return f"{v:,.{digits}f}"


def rng(values, digits=0):
    values = [v for v in values if v is not None]
    return f"{fmt(min(values), digits)}–{fmt(max(values), digits)}" if values else "—"


def ratio(a, b):
    return f"{a / b:.2f}" if a and b else "—"


def load_fio(path, direction):
    try:
        with open(path) as f:
            job = json.load(f)["jobs"][0]
    except (OSError, ValueError, KeyError, IndexError):
        return None
    d = job[direction]
    if not d.get("total_ios"):
        return None
    pct = (d.get("clat_ns") or {}).get("percentile") or {}
    us = lambda k: pct[k] / 1000.0 if k in pct else None
    return {"iops": d["iops"], "p50": us("50.000000"), "p99": us("99.000000"), "p999": us("99.900000"),
            "max": d["clat_ns"]["max"] / 1000.0 if d.get("clat_ns") else None}


def first_seconds_iops(path, seconds):
    """Mean IOPS over the first `seconds` of fio's averaged IOPS log (one sample per 500 ms window)."""
    try:
        rows = [line.split(",") for line in open(path) if line.strip()]
    except OSError:
        return None
    vals = [float(r[1]) for r in rows if float(r[0]) <= seconds * 1000 + 1]
    return sum(vals) / len(vals) if vals else None


def percentile(sorted_vals, p):
    if not sorted_vals:
        return None
    k = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def load_clat(path):
    """(epoch_ms, latency_us) per I/O from fio's clat log written with log_unix_epoch=1 (values in ns)."""
    out = []
    try:
        for line in open(path):
            parts = line.split(",")
            if len(parts) >= 2:
                out.append((int(parts[0]), int(parts[1]) / 1000.0))
    except OSError:
        pass
    return out


def load_usage(path):
    """(epoch_ms, freeBytes) samples; lines are `ms {json}` as snapshots.sh wrote them."""
    out = []
    try:
        for line in open(path):
            ms, _, rest = line.strip().partition(" ")
            try:
                out.append((int(ms), int(json.loads(rest)["freeBytes"])))
            except (ValueError, KeyError, TypeError):
                pass
    except OSError:
        pass
    return out


def reclaim_window(run):
    """When the deleted snapshot's space was back in the allocator: (end_ms, reclaimed_bytes, finished).

    The store's usedBytes drops as soon as the delete returns (accounting); freeBytes rises only when the
    background reclaim hands the blocks back, so the reclaim is over when freeBytes stops rising."""
    samples = load_usage(run["usage_log"])
    before = (run.get("usage_before") or {}).get("freeBytes")
    if not samples or before is None:
        return run["cmd_end_ms"], None, False
    final = samples[-1][1]
    reclaimed = final - before
    tolerance = max(reclaimed // 100, 1 << 20)
    end = next((t for t, f in samples if f >= final - tolerance), samples[-1][0])
    # Still rising in the last second of the run: the reclaim outlasted fio.
    last_second = [f for t, f in samples if t >= samples[-1][0] - 1000]
    finished = max(last_second) - min(last_second) <= (1 << 20)
    return max(end, run["cmd_end_ms"]), reclaimed, finished


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    rd = sys.argv[1]
    runs = []
    if os.path.exists(os.path.join(rd, "runs.jsonl")):
        for line in open(os.path.join(rd, "runs.jsonl")):
            if line.strip():
                runs.append(json.loads(line))
    out = ["# Platter snapshots (issue 4): bench/snapshots.sh, one machine, one run\n"]
    env = os.path.join(rd, "env.txt")
    if os.path.exists(env):
        out += ["```", open(env).read().rstrip(), "```\n"]
    notes = os.path.join(rd, "notes.txt")
    if os.path.exists(notes):
        out += [f"- {line.strip()}" for line in open(notes) if line.strip()]
        out.append("")
    failures = []

    # --- create ---
    inproc = os.path.join(rd, "create-inproc.json")
    cli = [r for r in runs if r["part"] == "create"]
    if os.path.exists(inproc) or cli:
        out.append("## Snapshot creation time (ms)\n")
        out.append("In-process: `VolumeStore.CreateSnapshot` alone (durable on return). End to end: the wall time of "
                   "`platter snapshot create` (a .NET process start, an API call, the engine); `snapshot list` is the "
                   "same CLI start and an API round trip with no engine work. API: the POST alone, timed by curl.\n")
        out.append("| volume | size | written | allocated GiB | in-process median | range | delete median | API create median | range | CLI create median | range | CLI list median |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        vols = json.load(open(inproc)) if os.path.exists(inproc) else []
        medians = {}
        for v in vols:
            name = v["name"]
            c = [x["us"] / 1000.0 for x in cli if x["volume"] == name and x["how"] == "cli-create"]
            l = [x["us"] / 1000.0 for x in cli if x["volume"] == name and x["how"] == "cli-list"]
            a = [x["us"] / 1000.0 for x in cli if x["volume"] == name and x["how"] == "api-create"]
            medians[name] = (med(v["create_ms"]), med(c), med(a))
            out.append(f"| {name} | {v['size_bytes'] >> 30} GiB | {v['pattern']} | {v['allocated_bytes'] / 2**30:.2f} | "
                       f"{fmt(med(v['create_ms']), 3)} | {rng(v['create_ms'], 3)} | {fmt(med(v['delete_ms']), 3)} | "
                       f"{fmt(med(a), 2)} | {rng(a, 2)} | {fmt(med(c), 1)} | {rng(c, 1)} | {fmt(med(l), 1)} |")
        out.append("")
        if "snap-small" in medians and "snap-big" in medians:
            s, b = medians["snap-small"], medians["snap-big"]
            out.append(f"Big / small: in-process {ratio(b[0], s[0])}, API {ratio(b[2], s[2])}, CLI {ratio(b[1], s[1])}.\n")

    # --- cow ---
    cow = [r for r in runs if r["part"] == "cow"]
    if cow:
        out.append("## Random writes before and right after a snapshot (4 KiB, depth 32, IOPS)\n")
        out.append("after / before: the median over rounds of each round's ratio (a round's two runs are adjacent). "
                   "First 2 s: the first two seconds of each run, when every write is a first write since the snapshot.\n")
        out.append("| target | before | range | after | range | after / before | before, first 2 s | after, first 2 s | first 2 s after / before | p99 µs before | p99 µs after |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        summary = {}
        for t in ["platter", "qcow2"]:
            rows = {}
            for r in cow:
                if r["target"] != t:
                    continue
                m = load_fio(r["fio_json"], "write")
                if m is None:
                    failures.append(f"cow round {r['round']} {t} {r['phase']}: no fio result ({r['fio_json']})")
                    continue
                m["first"] = first_seconds_iops(r["iops_log"], 2)
                rows.setdefault(r["round"], {})[r["phase"]] = m
            if not rows:
                continue
            get = lambda phase, key: [rows[k][phase][key] for k in rows if phase in rows[k]]
            pairs = [rows[k] for k in rows if "before" in rows[k] and "after" in rows[k]]
            per_round = med([p["after"]["iops"] / p["before"]["iops"] for p in pairs])
            per_round_first = med([p["after"]["first"] / p["before"]["first"] for p in pairs if p["after"]["first"] and p["before"]["first"]])
            summary[t] = {"before": med(get("before", "iops")), "after": med(get("after", "iops")),
                          "after_first": med(get("after", "first")), "ratio": per_round, "ratio_first": per_round_first}
            out.append(f"| {t} | {fmt(med(get('before', 'iops')))} | {rng(get('before', 'iops'))} | {fmt(med(get('after', 'iops')))} | "
                       f"{rng(get('after', 'iops'))} | {fmt(per_round, 2)} | {fmt(med(get('before', 'first')))} | "
                       f"{fmt(med(get('after', 'first')))} | {fmt(per_round_first, 2)} | {fmt(med(get('before', 'p99')), 0)} | "
                       f"{fmt(med(get('after', 'p99')), 0)} |")
        out.append("")
        if "platter" in summary and "qcow2" in summary:
            p, q = summary["platter"], summary["qcow2"]
            out.append(f"Platter / qcow2: before {ratio(p['before'], q['before'])}, after {ratio(p['after'], q['after'])}, "
                       f"after in the first 2 s {ratio(p['after_first'], q['after_first'])}.\n")

    # --- clone ---
    clone = [r for r in runs if r["part"] == "clone"]
    if clone:
        out.append("## Random reads on clones (4 KiB, depth 32, IOPS)\n")
        out.append("| target | depth | IOPS | range | p50 µs | p99 µs | server CPU µs per read | load avg |")
        out.append("|---|---|---|---|---|---|---|---|")
        by = {}
        per_round = {}
        for r in clone:
            m = load_fio(r["fio_json"], "read")
            if m is None:
                failures.append(f"clone round {r['round']} {r['target']}: no fio result ({r['fio_json']})")
                continue
            side = r["target"].rsplit("-d", 1)[0]
            m["cpu_us"] = None
            if r.get("cpu_s") is not None:
                try:
                    with open(r["fio_json"]) as f:
                        reads = json.load(f)["jobs"][0]["read"]["total_ios"]
                    m["cpu_us"] = r["cpu_s"] * 1e6 / reads if reads else None
                except (OSError, ValueError, KeyError, IndexError):
                    pass
            m["load"] = r.get("load")
            by.setdefault((side, r["depth"]), []).append(m)
            per_round.setdefault((side, r["round"]), {})[r["depth"]] = m
        iops = {}
        for (side, depth) in sorted(by, key=lambda k: (k[0] != "platter", k[1])):
            ms = by[(side, depth)]
            iops[(side, depth)] = med([m["iops"] for m in ms])
            out.append(f"| {side} | {depth} | {fmt(iops[(side, depth)])} | {rng([m['iops'] for m in ms])} | "
                       f"{fmt(med([m['p50'] for m in ms]), 0)} | {fmt(med([m['p99'] for m in ms]), 0)} | "
                       f"{fmt(med([m['cpu_us'] for m in ms]), 1)} | {rng([m['load'] for m in ms], 1)} |")
        out.append("")
        # Per-round ratios: a round's targets ran minutes apart, so their ratio cancels the machine's slow drift.
        for side in ["platter", "qcow2"]:
            rounds_ = sorted(rd for (s_, rd) in per_round if s_ == side)
            if not rounds_:
                continue
            depths_ = sorted({d for rd in rounds_ for d in per_round[(side, rd)]})
            if len(depths_) < 2:
                continue
            deep_ = max(depths_)
            def per(a, b, key):
                vals = []
                for rd in rounds_:
                    row = per_round[(side, rd)]
                    if a in row and b in row and row[a].get(key) and row[b].get(key):
                        vals.append(row[a][key] / row[b][key])
                return vals
            lines = []
            for a, b in ((1, 0), (deep_, 1)):
                v = per(a, b, "iops")
                c = per(b, a, "cpu_us")  # CPU per read inverted: above 1 means the first is cheaper
                if v:
                    lines.append(f"depth {a} / depth {b}: IOPS {med(v):.2f} (per round {', '.join(f'{x:.2f}' for x in v)})"
                                 + (f", CPU per read inverted {med(c):.2f} (per round {', '.join(f'{x:.2f}' for x in c)})" if c else ""))
            out.append(f"- {side}, medians of per-round ratios: " + "; ".join(lines))
        out.append("")
        depths = sorted({d for _, d in iops})
        deep = max(depths)
        for side in ["platter", "qcow2"]:
            if (side, 1) in iops and (side, deep) in iops:
                out.append(f"- {side}: depth {deep} / depth 1 = {ratio(iops[(side, deep)], iops[(side, 1)])}; "
                           f"depth 1 / depth 0 = {ratio(iops.get((side, 1)), iops.get((side, 0)))}")
        for d in depths:
            if ("platter", d) in iops and ("qcow2", d) in iops:
                out.append(f"- Platter / qcow2 at depth {d}: {ratio(iops[('platter', d)], iops[('qcow2', d)])}")
        out.append("")

    # --- delete ---
    dele = [r for r in runs if r["part"] == "delete"]
    if dele:
        out.append("## Read latency while a snapshot is deleted (4 KiB random reads, depth 1)\n")
        out.append("Window: from the start of the delete request to the end of the reclaim (when the store's free "
                   "bytes, from /v1/usage, stop rising), and the same span from the start of the request listing the "
                   "snapshots in the round's control run. Whole run: fio's own percentiles over the run.\n")
        out.append("| round | run | window s | reclaimed GiB | request ms | window p50 µs | window p99 µs | window p99.9 µs | window max µs | run p99 µs | run IOPS |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        rows = {}
        for r in dele:
            rows.setdefault(r["round"], {})[r["kind"]] = r
        agg = {"delete": [], "control": []}
        for rnd in sorted(rows):
            pair = rows[rnd]
            if "delete" not in pair:
                continue
            end, reclaimed, finished = reclaim_window(pair["delete"])
            span = end - pair["delete"]["cmd_start_ms"]
            for kind in ["control", "delete"]:
                r = pair.get(kind)
                if r is None:
                    continue
                m = load_fio(r["fio_json"], "read")
                lat = load_clat(r["clat_log"])
                w0 = r["cmd_start_ms"]
                win = sorted(l for t, l in lat if w0 <= t <= w0 + span)
                if m is None or not win:
                    failures.append(f"delete round {rnd} {kind}: no fio result or no I/O in the window")
                    continue
                row = {"p50": percentile(win, 50), "p99": percentile(win, 99), "p999": percentile(win, 99.9),
                       "max": win[-1], "run_p99": m["p99"], "iops": m["iops"]}
                agg[kind].append(row)
                rec = f"{reclaimed / 2**30:.2f}" + ("" if finished else " (not finished)") if kind == "delete" and reclaimed is not None else ""
                cmd = r["cmd_end_ms"] - r["cmd_start_ms"]
                out.append(f"| {rnd} | {kind} | {span / 1000:.1f} | {rec} | {cmd} | {fmt(row['p50'])} | {fmt(row['p99'])} | "
                           f"{fmt(row['p999'])} | {fmt(row['max'])} | {fmt(row['run_p99'])} | {fmt(row['iops'])} |")
        out.append("")
        d, c = agg["delete"], agg["control"]
        if d and c:
            dp, cp = med([x["p99"] for x in d]), med([x["p99"] for x in c])
            out.append(f"Medians over rounds: window p99 {fmt(dp)} µs with the deletion, {fmt(cp)} µs without: ratio "
                       f"{ratio(dp, cp)}; whole-run p99 ratio {ratio(med([x['run_p99'] for x in d]), med([x['run_p99'] for x in c]))}; "
                       f"IOPS ratio {ratio(med([x['iops'] for x in d]), med([x['iops'] for x in c]))}.\n")

    if failures:
        out.append("## Failed or missing jobs (left out)\n")
        out += [f"- {f}" for f in failures]
        out.append("")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
