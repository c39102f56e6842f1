"""int8 against float32 on each model named: the parity figures `rescam export --precision int8`
writes on the card (top-1 agreement, CAM correlation, box IoU, each one's top-1, size, speed, and
the near-tie fallback where one was kept), one JSON line per model.

    .venv/bin/python bench/int8_parity.py shipped /tmp/q/run-digits/checkpoint.pth RUN/checkpoint.pth
    .venv/bin/python bench/int8_parity.py RUN/checkpoint.pth --held-out test=/tmp/sets/obj_test

`shipped`: the model in app/default_model, from its weights and card. With `--held-out NAME=FOLDER`
(a folder whose val/ split the model was not fitted on), each model is also exported in float32
and both are run as the service runs them (app.engine.Engine) on that split: top-1 of each, how
often they agree, the share of images the int8 version answered in float32, and ms per image at
batch 8 and 1. Each export goes to a scratch folder and is removed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reexport_shipped import SHIPPED, checkpoint_of  # noqa: E402

from app.card import ModelCard  # noqa: E402
from app.engine import Engine  # noqa: E402
from app.registry import CARD_FILE  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.data import load_data  # noqa: E402
from training.export import export_checkpoint  # noqa: E402
from training.open_world import dataset_arrays  # noqa: E402


def held_out(float_dir: Path, int8_dir: Path, checkpoint: Path, folder: str, limit: int = 1000) -> dict:
    """Both versions through app.engine.Engine (the service's sessions) on `folder`'s val/ split."""
    cfg = TrainConfig.from_dict(torch.load(checkpoint, map_location="cpu", weights_only=False)["config"])
    engines = {name: Engine.load(d, ModelCard.load(d / CARD_FILE), name, 1, ["CPUExecutionProvider"])
               for name, d in (("float32", float_dir), ("int8", int8_dir))}
    prep = engines["float32"].prep
    data = load_data(cfg.replace(data=f"folder:{folder}", boxes_csv=None, synthetic_train=0, image_size=prep.crop))
    images, labels = dataset_arrays(data.val, limit)
    x = prep.normalize(images)
    top, times = {}, {}
    for _ in range(3):  # rounds alternate between the two, each figure the median of its rounds
        for name, engine in engines.items():
            for batch in (8, 1):
                start = time.perf_counter()
                logits = np.concatenate([engine.run(x[i:i + batch]).logits for i in range(0, len(x), batch)])
                times.setdefault(f"{name}_batch{batch}", []).append((time.perf_counter() - start) / len(x) * 1000)
                top[name] = logits.argmax(1)
    ms = {k: round(float(np.median(v)), 3) for k, v in times.items()}
    index = {label: i for i, label in enumerate(engines["float32"].labels)}
    truth = np.array([index[data.classes[k]] for k in labels])
    return {"images": len(x), "top1_agreement": float((top["float32"] == top["int8"]).mean()),
            "top1_float32": float((top["float32"] == truth).mean()), "top1_int8": float((top["int8"] == truth).mean()),
            "near_tie_share": engines["int8"].near_tie_images / (6 * len(x)), "ms_per_image": ms,
            "int8_cost": {b: round(ms[f"int8_batch{b}"] / ms[f"float32_batch{b}"], 3) for b in (8, 1)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="shipped, or a checkpoint.pth")
    ap.add_argument("--held-out", action="append", default=[], metavar="NAME=FOLDER")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(args.models):
            checkpoint = checkpoint_of(SHIPPED, Path(tmp) / "shipped.pth") if name == "shipped" else Path(name)
            out = export_checkpoint(checkpoint, Path(tmp) / f"export-{i}", "int8", int8_fallback=True)
            q = json.loads((out / "card.json").read_text())["quantization"]
            print(json.dumps({"bench": "int8_parity", "model": name, **{k: v for k, v in q.items() if k != "method"}}),
                  flush=True)
            if args.held_out and q["kept"]:
                reference = export_checkpoint(checkpoint, Path(tmp) / f"float32-{i}", "float32")
                for split in args.held_out:
                    split_name, folder = split.split("=", 1)
                    print(json.dumps({"bench": "int8_parity", "model": name, "held_out": split_name,
                                      **held_out(reference, out, checkpoint, folder)}), flush=True)


if __name__ == "__main__":
    main()
