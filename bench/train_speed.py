"""Training images/s of this checkout against another git revision, side by side in one run.

    .venv/bin/python bench/train_speed.py --base c89ced0 --data folder:/tmp/objects folder:/tmp/digits synthetic

Each data set is trained by `rescam train` with the `auto` recipe (what a job runs) for a fixed
number of steps, in a checkout of `--base` and in this one, the rounds alternating so that noise
hits both alike. The figure is the loop's own images/s (metrics.jsonl's step lines after the
first, which hold the warm-up), so the probe, evaluation and export are not counted. Prints one
JSON line per run and, per data set, the medians' ratio (this / base) and the plan each chose.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from serving import ROOT, git_tree


def run(source: Path, data: str, steps: int, out: Path) -> dict:
    """One `rescam train` from the source tree `source`; its loop's images/s and its plan."""
    settings = ["--set", "synthetic_train=12800", "--set", "synthetic_val=500"] if data == "synthetic" else []
    subprocess.run([sys.executable, "-m", "training.cli", "train", "--recipe", "auto", "--data", data,
                    "--max-steps", str(steps), "--time-budget", "100000", "--out", str(out), "--no-register",
                    *settings], cwd=source, env={**os.environ, "PYTHONPATH": str(source)}, check=True,
                   capture_output=True)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["images_per_s"] for r in lines if r.get("event") == "step"][1:]
    plan = [r for r in lines if r.get("event") == "plan"][-1]
    return {"images_per_s": statistics.median(rates), "image_size": plan["image_size"],
            "precision": plan.get("precision", "float32"), "device": plan.get("device", "cpu")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the git revision to compare with")
    p.add_argument("--data", nargs="+", default=["synthetic"], help="synthetic or folder:PATH, one or more")
    p.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp, git_tree(args.base, Path(tmp)) as base:
        trees = {"base": base, "this": ROOT}
        for data in args.data:
            figures: dict[str, list[dict]] = {name: [] for name in trees}
            for r in range(args.rounds):
                for name, tree in trees.items():
                    result = run(tree, data, args.steps, Path(tmp) / f"{name}-{r}-{len(figures[name])}")
                    figures[name].append(result)
                    print(json.dumps({"data": data, "round": r, "tree": name, **result}), flush=True)
            med = {name: statistics.median(f["images_per_s"] for f in runs) for name, runs in figures.items()}
            print(json.dumps({"data": data, "base": args.base, "base_images_per_s": med["base"],
                              "this_images_per_s": med["this"], "ratio": round(med["this"] / med["base"], 2),
                              "this_plan": {k: figures["this"][-1][k] for k in ("device", "precision", "image_size")}}),
                  flush=True)


if __name__ == "__main__":
    main()
