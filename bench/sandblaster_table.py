#!/usr/bin/env python3
"""Table of bench/sandblaster.sh: median time per batch per setting, and the slowdown a 3x slow
replica causes to each method (portions + backups against a static split)."""
import json
import pathlib
import re
import statistics
import sys

out = pathlib.Path(sys.argv[1])
runs = {}
for metrics in sorted(out.glob("*-r*/metrics.jsonl")):
    m = re.fullmatch(r"(\w+)-w(\d+)-(portions|static)(-slow)?-r(\d+)", metrics.parent.name)
    if not m:
        continue
    model, workers, method, slow, _ = m.groups()
    batches = [json.loads(l) for l in metrics.read_text().splitlines() if '"batch"' in l]
    batches = [b for b in batches if b.get("kind") == "batch"]
    if not batches:
        continue
    key = (model, int(workers), method, bool(slow))
    entry = runs.setdefault(key, {"batch_s": [], "dropped": 0, "backups": 0, "counted": None})
    entry["batch_s"].append(statistics.median(b["batch_s"] for b in batches))
    entry["backups"] += sum(b["backups"] for b in batches)
    entry["dropped"] += sum(b["duplicates"] + b["late_results"] for b in batches)
    entry["counted"] = batches[-1]["counted_by_replica"]

print(f"{'model':7} {'replicas':>8} {'method':28} {'batch s (median)':>16} {'vs no slow':>10}"
      f" {'backups':>8} {'dropped':>8}  portions counted per replica (last batch)")
for (model, workers, method, slow), e in sorted(runs.items()):
    med = statistics.median(e["batch_s"])
    base = runs.get((model, workers, method, False))
    ratio = med / statistics.median(base["batch_s"]) if base else float("nan")
    name = ("portions+backup" if method == "portions" else "static split") + (
        ", 1 slowed 3x" if slow else "")
    print(f"{model:7} {workers:>8} {name:28} {med:>16.3f} {ratio:>9.2f}x {e['backups']:>8}"
          f" {e['dropped']:>8}  {e['counted']}  ({len(e['batch_s'])} runs)")
