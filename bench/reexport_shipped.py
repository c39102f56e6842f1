"""Re-export the shipped default model (app/default_model) from its own weights with this rescam's
exporter: the same network, today's graph outputs, calibration and open-world files, and a fresh
report. Its training figures (metrics, steps) are the card's as they were; its training config too,
but for the validation set's size, which is the demo recipe's of today.

    .venv/bin/python bench/reexport_shipped.py [--into app/default_model]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch

from app.registry import CARD_FILE, MODEL_FILE, REPORT_DIR, WEIGHTS_FILE
from app.scoring import OOD_FILE
from training.config import RECIPES
from training.export import embed_card, export_checkpoint
from training.report import write_report

SHIPPED = Path(__file__).resolve().parents[1] / "app" / "default_model"


def checkpoint_of(folder: Path, out: Path) -> Path:
    """A trainer-style checkpoint made of a version's weights and card; its validation set is the
    demo recipe's of today (training never read it: one epoch, no best epoch kept), on which the
    export fits its temperature and OOD threshold and measures the served graph."""
    card = json.loads((folder / CARD_FILE).read_text())
    ckpt = {"architecture": card["architecture"], "model_kwargs": card["model_kwargs"], "classes": card["labels"],
            "config": {**card["training_config"], "synthetic_val": RECIPES["demo"]["synthetic_val"]},
            "metrics": card["metrics"], "epoch": card["epochs"],
            "step": card["steps"], "fingerprint": card["data_fingerprint"], "finished": True,
            "model": torch.load(folder / WEIGHTS_FILE, map_location="cpu")}
    torch.save(ckpt, out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--into", type=Path, default=SHIPPED)
    args = ap.parse_args()
    old = json.loads((SHIPPED / CARD_FILE).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        export = export_checkpoint(checkpoint_of(SHIPPED, Path(tmp) / "checkpoint.pth"), Path(tmp) / "export")
        card = json.loads((export / CARD_FILE).read_text())
        card["created"] = old["created"]  # when it was trained; the export's own time is below
        card["reexported"] = {"by": "bench/reexport_shipped.py", "git_revision": card.pop("git_revision"),
                              "validation_images": {"training": old["metrics"]["images"],
                                                    "export": card["training_config"]["synthetic_val"]},
                              "trained_at_revision": old.get("git_revision")
                              or old.get("reexported", {}).get("trained_at_revision")}
        (export / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
        embed_card(export / MODEL_FILE, card)
        shutil.copytree(SHIPPED / REPORT_DIR, export / REPORT_DIR)  # its curves travel on
        write_report(export, title=f"{card['architecture']} · the shipped default model")
        args.into.mkdir(parents=True, exist_ok=True)
        for name in (MODEL_FILE, CARD_FILE, OOD_FILE, WEIGHTS_FILE):
            shutil.copy2(export / name, args.into / name)
        shutil.rmtree(args.into / REPORT_DIR, ignore_errors=True)
        shutil.copytree(export / REPORT_DIR, args.into / REPORT_DIR)
    print(json.dumps({"calibration": {k: v for k, v in card["calibration"].items() if "reliability" not in k},
                      "ood": card["ood"]}, indent=1))


if __name__ == "__main__":
    main()
