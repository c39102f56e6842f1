"""Does a second look around the object pay? One checkpoint exported twice, without and with
test-time zoom (training/zoom.py; test-time flip as the run chose it in both), and the two served
graphs' top-1 on folder splits, side by side on the same images, through ONNX Runtime and the
card's preprocessing: overall, the images the zoom mends and breaks, and by the object's size
(its box's longer side over the image's, where the folder has a boxes.csv).

    python bench/test_time_zoom.py CHECKPOINT FOLDER [--split test] [--split unseen] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from app.card import ModelCard  # noqa: E402
from training.export import export_checkpoint  # noqa: E402
from training.open_world import run_batches, session_outputs  # noqa: E402

SIZES = ((0.0, 0.2), (0.2, 0.35), (0.35, 0.5), (0.5, 0.7), (0.7, 9.0))


def answers(version: Path, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    card = ModelCard.load(version / "card.json")
    session, names = session_outputs(version / "model.onnx")
    x = np.stack([card.preprocessing.crop_resize(Image.open(p).convert("RGB"))[0] for p in files])
    logits, _ = run_batches(session, names, card.preprocessing.normalize(x))
    return logits.argmax(1), np.array([card.labels.index(p.parent.name) for p in files])


def object_sides(folder: Path, files: list[Path]) -> np.ndarray | None:
    boxes = folder / "boxes.csv"
    if not boxes.is_file():
        return None
    by_path = {row["path"]: row for row in csv.DictReader(boxes.open())}
    sides = []
    for p in files:
        row = by_path.get(p.relative_to(folder).as_posix())
        if row is None:
            return None
        with Image.open(p) as im:
            width, height = im.size
        sides.append(max((float(row["x1"]) - float(row["x0"])) / width, (float(row["y1"]) - float(row["y0"])) / height))
    return np.array(sides)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--split", action="append")
    ap.add_argument("--out", type=Path, help="keep the two exports here (default: a temporary folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch)
        one = export_checkpoint(args.checkpoint, out / "one-look", settings={"test_time_zoom": False})
        two = export_checkpoint(args.checkpoint, out / "zoom", settings={"test_time_zoom": True})
        print(json.dumps({"zoom_card": ModelCard.load(two / "card.json").extra.get("test_time_zoom")}))
        for split in args.split or ["test"]:
            files = sorted(p for p in (args.folder / split).glob("*/*") if p.is_file())
            (once, truth), (twice, _) = answers(one, files), answers(two, files)
            right_once, right_twice = once == truth, twice == truth
            line = {"split": split, "images": len(files), "top1": round(float(right_once.mean()), 4),
                    "top1_zoomed": round(float(right_twice.mean()), 4),
                    "zoom_mends": int((right_twice & ~right_once).sum()),
                    "zoom_breaks": int((right_once & ~right_twice).sum())}
            sides = object_sides(args.folder, files)
            if sides is not None:
                line["by_object_side"] = {}  # images, top-1 one look, two looks
                for low, high in SIZES:
                    band = (sides >= low) & (sides < high)
                    if band.any():
                        line["by_object_side"][f"{low}-{min(high, 1.0)}"] = [
                            int(band.sum()), round(float(right_once[band].mean()), 3),
                            round(float(right_twice[band].mean()), 3)]
            print(json.dumps(line))


if __name__ == "__main__":
    main()
