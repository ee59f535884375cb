#!/usr/bin/env python3
"""ExDyna's balance and density from one or more run directories' metrics.jsonl.

For every run: imbalance (n * max_w k_w / sum_w k_w - 1, the reducer's "imbalance" figure of
each step) median, p95 and max over the steps after --warmup, the achieved density's median and
its error against the target, and the final test accuracy.

    bench/exdyna_balance.py runs/a runs/b [--warmup 100]
"""
import argparse
import json
import os


def percentile(sorted_values, q):
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run directories (or metrics.jsonl files)")
    ap.add_argument("--warmup", type=int, default=100, help="steps left out at the start (100)")
    args = ap.parse_args()
    print(f"{'run':60s} {'steps':>5s} {'imb med':>8s} {'p95':>6s} {'max':>6s} "
          f"{'density':>8s} {'err':>6s} {'acc':>7s}")
    for run in args.runs:
        path = run if run.endswith(".jsonl") else os.path.join(run, "metrics.jsonl")
        imbalance, density, target, accuracy = [], [], None, None
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                if r.get("kind") == "reduce" and "imbalance" in r and r["step"] > args.warmup:
                    imbalance.append(r["imbalance"])
                    density.append(r["density"])
                    target = r["density_target"]
                elif r.get("kind") == "final":
                    accuracy = r.get("test_accuracy")
        if not imbalance:
            print(f"{run:60s} no ExDyna step records after step {args.warmup}")
            continue
        imbalance.sort()
        density.sort()
        d = percentile(density, 0.5)
        print(f"{run:60s} {len(imbalance):5d} {percentile(imbalance, 0.5):8.3f} "
              f"{percentile(imbalance, 0.95):6.3f} {imbalance[-1]:6.3f} {d:8.5f} "
              f"{abs(d - target) / target * 100:5.1f}% {accuracy if accuracy is not None else '-':>7}")


if __name__ == "__main__":
    main()
