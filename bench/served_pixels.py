"""What an exported model answers on a folder's images when the service decodes them (app.imaging:
any mode to RGB, transparency on white), beside what its card says it reached in validation: a
model that learnt other pixels than it is served says one figure at the end of its job and shows
another to its users.

    python bench/served_pixels.py NAME=MODEL_DIR [NAME=MODEL_DIR ...] --folder ROOT --split test
The folder is `ROOT/<split>/<class>/*` with the boxes of ROOT/boxes.csv (bench/realsets.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from app.datasets import read_boxes
from app.imaging import decode
from app.settings import Settings
from training.compare import OnnxModel
from training.data import IMAGE_SUFFIXES
from training.localization import LocalizationTally


def served(model_dir: str, root: Path, split: str) -> dict:
    model = OnnxModel.load(model_dir)
    card, prep, settings = model.card, model.card.preprocessing, Settings()
    boxes = {path: box for path, (_, box) in read_boxes(root / "boxes.csv").items()} \
        if (root / "boxes.csv").exists() else {}
    tally = LocalizationTally(served=card.box_rule, foreground=model.has_foreground)
    right = unknown = count = 0
    for label_dir in sorted(p for p in (root / split).iterdir() if p.is_dir()):
        truth = card.labels.index(label_dir.name)
        for path in sorted(p for p in label_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            decoded = decode(path.read_bytes(), settings.max_pixels, settings.work_max_side)
            x, window = prep.network_input(decoded.image)  # as app.predictor prepares an upload
            outputs = model.session.run(model.names, {"input": x[None]})
            out = {name: value[0] for name, value in zip(model.names, outputs)}
            verdict = model.scorer.verdict(out["logits"], out.get("features"))
            said = verdict.predicted == truth
            right, unknown, count = right + said, unknown + verdict.unknown, count + 1
            box = boxes.get(path.relative_to(root).as_posix())
            if box is not None:  # the true box in the decoded image's pixels (a large one is reduced)
                tally.add(out["cam"][truth], said, np.asarray(box) * (decoded.image.width / decoded.width), window,
                          out.get("foreground"))
    return {"card_top1": card.metrics["top1"], "card_gt_known": card.metrics.get("gt_known_loc"),
            "served_top1": right / count, "served_gt_known": tally.result().get("gt_known_loc"),
            "unknown": unknown / count, "images": count}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", metavar="NAME=MODEL_DIR")
    ap.add_argument("--folder", required=True, type=Path)
    ap.add_argument("--split", default="test")
    args = ap.parse_args()
    print(f"| model | card: validation top-1 / GT-known | served on {args.split}/: top-1 / GT-known | "
          "called unknown | images |\n| --- | --- | --- | --- | --- |")
    for case in args.models:
        name, _, model_dir = case.partition("=")
        r = served(model_dir, args.folder, args.split)
        pct = lambda v: "-" if v is None else f"{v:.1%}"  # noqa: E731
        print(f"| {name} | {pct(r['card_top1'])} / {pct(r['card_gt_known'])} | {pct(r['served_top1'])} / "
              f"{pct(r['served_gt_known'])} | {pct(r['unknown'])} | {r['images']} |")


if __name__ == "__main__":
    main()
