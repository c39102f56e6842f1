"""Does averaging an image with its mirror at test time pay? Top-1 of the served graph on a
folder split, the image alone against the mean of its and its mirror's logits, side by side on the
same images, through ONNX Runtime and the card's preprocessing.

    python bench/test_time_flip.py VERSION_DIR FOLDER [--split test] [--split unseen]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from app.card import ModelCard  # noqa: E402


def top1(version: Path, folder: Path, split: str) -> dict:
    card = ModelCard.load(version / "card.json")
    session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    index = {label: i for i, label in enumerate(card.labels)}
    plain = flipped = both = count = gained = lost = 0
    for path in sorted((folder / split).glob("*/*")):
        image = Image.open(path).convert("RGB")
        x = card.preprocessing.network_input(image)[0][None]
        pair = np.concatenate([x, x[..., ::-1]])
        logits = session.run(["logits"], {session.get_inputs()[0].name: np.ascontiguousarray(pair)})[0]
        truth = index[path.parent.name]
        plain_right, averaged_right = logits[0].argmax() == truth, logits.mean(axis=0).argmax() == truth
        plain, both, flipped = plain + plain_right, both + averaged_right, flipped + (logits[1].argmax() == truth)
        gained, lost = gained + (averaged_right and not plain_right), lost + (plain_right and not averaged_right)
        count += 1
    return {"split": split, "images": count, "top1": round(plain / count, 4),
            "top1_mirror_alone": round(flipped / count, 4), "top1_averaged": round(both / count, 4),
            "averaging_mends": int(gained), "averaging_breaks": int(lost)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("version", type=Path)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--split", action="append")
    args = ap.parse_args()
    for split in args.split or ["test"]:
        print(json.dumps(top1(args.version, args.folder, split)))


if __name__ == "__main__":
    main()
