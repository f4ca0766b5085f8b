#!/usr/bin/env python3
"""Summarizes `saobp train` run folders as the Markdown tables of docs/TRAINING.md.

Usage: python3 scripts/summarize-runs.py [--at STEP] RUN_DIR [RUN_DIR ...]

With --at, every run is read up to that step only, so runs that got to
different steps compare at the same one.

Runs are grouped by their settings apart from the seed (train.json): per
group, the final val loss (mean and spread over seeds), the first step whose
evaluation reached val loss 2.0, the val loss by step, and the last evaluation's per-layer
normalized entropy of A and R and GTD of A (at lambda = 1) and of R (at the
layer's lambda, averaged over heads), with the final lambda per layer.
Standard library only.
"""

import json
import statistics
import sys
from pathlib import Path


def load(run, at=None):
    settings = json.loads((run / "train.json").read_text())
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
    if at is not None:
        records = [r for r in records if r["step"] <= at]
    return settings, records


def label(s):
    if s["lambda"] is None:
        lam = "0 (none)"
    else:
        values = sorted({v for layer in s["lambda"] for v in layer})
        lam = ",".join(f"{v:g}" for v in values)
    return f"λ = {lam}" + (" learned" if s["learn_lambda"] else "")


def mean(v):
    return sum(v) / len(v)


def main(args):
    if args[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return
    if not args:
        sys.exit(__doc__)
    at = None
    if args[:1] == ["--at"]:
        at, args = int(args[1]), args[2:]
    groups = {}
    for p in args:
        if not (Path(p) / "train.json").is_file():
            sys.exit(f"{p}: not a run folder (no train.json)")
        s, r = load(Path(p), at)
        if not r:
            continue
        groups.setdefault(label(s), []).append((Path(p).name, s, r))
    print("| run | seeds | steps done | final val loss | spread | first step with val ≤ 2.0 |")
    print("|---|---|---|---|---|---|")
    for name, runs in groups.items():
        finals = [r[-1]["val_loss"] for _, _, r in runs]
        steps = {r[-1]["step"] for _, _, r in runs}
        reach = []
        for _, _, r in runs:
            hit = next((x["step"] for x in r if x["val_loss"] <= 2.0), None)
            reach.append("—" if hit is None else str(hit))
        spread = f"{max(finals) - min(finals):.4f}" if len(finals) > 1 else "one seed"
        print(f"| {name} | {len(runs)} | {', '.join(map(str, sorted(steps)))} | "
              f"{mean(finals):.4f} | {spread} | {', '.join(reach)} |")
    print()
    names = list(groups)
    print("Val loss by step (mean over seeds; every 200 steps and the last):")
    print()
    print("| step | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    steps = sorted({x["step"] for runs in groups.values() for _, _, r in runs for x in r})
    last = steps[-1] if steps else 0
    for step in steps:
        if step % 200 and step != last:
            continue
        cells = []
        for name in names:
            v = [x["val_loss"] for _, _, r in groups[name] for x in r if x["step"] == step]
            cells.append(f"{mean(v):.4f}" if v else "—")
        print(f"| {step} | " + " | ".join(cells) + " |")
    print()
    print("Last evaluation, per layer (mean over seeds and heads):")
    print()
    print("| run | layer | norm. entropy A | norm. entropy R | GTD A (λ=1) | GTD R (λ) | λ |")
    print("|---|---|---|---|---|---|---|")
    for name, runs in groups.items():
        layers = len(runs[0][2][-1]["layers"])
        for l in range(layers):
            rows = [r[-1]["layers"][l] for _, _, r in runs]
            print(f"| {name} | {l} | {mean([x['entropy_a'] for x in rows]):.4f} | "
                  f"{mean([x['entropy_r'] for x in rows]):.4f} | "
                  f"{mean([mean(x['gtd_a']) for x in rows]):.4f} | "
                  f"{mean([mean(x['gtd_r']) for x in rows]):.4f} | "
                  f"{mean([mean(x['lambda']) for x in rows]):.3f} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
