"""Which box rule fits, measured: GT-known localization (IoU >= 0.5 between the true box and the
box drawn from the true class's CAM, or from the foreground map for `pc1:` rules, where the model
has one) under every box-free rule, with MaxBoxAcc and MaxBoxAccV2
(Choe et al. 2020: the best fixed threshold, found with the boxes) as the ceiling, per model and
data set, through ONNX Runtime and the service's own box code (app.cam).

    python bench/box_rules.py CASE [CASE ...]
    CASE = NAME=MODEL_DIR@DATA   e.g. demo=runs/demo/export@synthetic
                                      digits=runs/digits/export@folder:/tmp/digits
A folder's boxes come from its boxes.csv.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from training.compare import evaluate_onnx
from training.config import TrainConfig
from training.localization import FOREGROUND_RULES, MEASURED_RULES


def measure(model_dir: str, data: str) -> dict:
    kind, _, where = data.partition(":")
    boxes = Path(where) / "boxes.csv" if kind == "folder" else None
    cfg = TrainConfig(data=data, boxes_csv=str(boxes) if boxes and boxes.exists() else None)
    return evaluate_onnx(model_dir, cfg)


def table(results: dict[str, dict]) -> str:
    names = list(results)
    # every model has the CAM's rules, one with a foreground map the pc1 ones; its served rule differs
    rules = [str(rule) for rule in (*MEASURED_RULES, *FOREGROUND_RULES)]
    lines = ["| rule | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for rule in rules:
        cells = [f"{r['gt_known_by_rule'][rule]:.1%} ({r['box_area_ratio_by_rule'][rule]:.1f}x)"
                 if rule in r["gt_known_by_rule"] else "-" for r in results.values()]
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    lines.append("| MaxBoxAcc (best threshold, needs boxes) | " + " | ".join(
        f"{r['max_box_acc']:.1%} at {r['best_threshold']:g}" for r in results.values()) + " |")
    lines.append("| MaxBoxAccV2 (IoU 0.3/0.5/0.7) | " + " | ".join(
        f"{r['max_box_acc_v2']:.1%}" for r in results.values()) + " |")
    lines.append("| top-1 | " + " | ".join(f"{r['top1']:.1%}" for r in results.values()) + " |")
    lines.append("| validation images with boxes | " + " | ".join(
        str(r["images_with_boxes"]) for r in results.values()) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases", nargs="+", metavar="NAME=MODEL_DIR@DATA")
    ap.add_argument("--json", help="also write every figure here")
    args = ap.parse_args()
    results = {}
    for case in args.cases:
        name, _, rest = case.partition("=")
        model_dir, _, data = rest.partition("@")
        results[name] = measure(model_dir, data)
    print("GT-known localization per rule (median box area / true area):\n")
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
