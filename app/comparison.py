"""Two versions side by side on the same images: what a user needs before a deploy or a rollback.

The images are the gallery of a version's report (validation images as that model saw them, with
their true boxes; training/report.py); each version answers them as the service would (its own
preprocessing and box rule), and each answer is drawn: CAM of the class it said, its box, the
true box in green.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from PIL import Image

from . import cam, overlay
from .engine import Engine
from .model_manager import ModelManager
from .registry import REPORT_DIR

SHOWN_SIDE = 224  # overlays are drawn at least this large, so boxes and labels can be read


def report_images(models: ModelManager, version: int) -> list[dict[str, Any]]:
    """The gallery entries of a version's report (empty when it has none)."""
    folder = models.registry.version_dir(models.name, version) / REPORT_DIR
    try:
        gallery = json.loads((folder / "report.json").read_text())["gallery"]
    except (OSError, ValueError, KeyError):
        return []
    return [{**g, "path": folder / g["image"]} for g in gallery if (folder / g["image"]).is_file()]


def answer(engine: Engine, image: Image.Image, true_box: list[float] | None) -> dict[str, Any]:
    """One version's answer on one image: the label, its score, its box and the drawing."""
    array, window = engine.prep.crop_resize(image)
    out = engine.run(engine.prep.normalize(array[None]))
    verdict = engine.scorer.verdict(out.logits[0], None if out.features is None else out.features[0])
    said = verdict.predicted
    drawn, box = overlay.answer_picture(image, out.cams[0], said, window, engine.card.box_rule, engine.labels[said],
                                        true_box, SHOWN_SIDE, None if out.foreground is None else out.foreground[0])
    png, _ = overlay.encode(drawn, "png")
    return {"said": engine.labels[said], "score": round(float(verdict.probs[said]), 4), "unknown": verdict.unknown,
            "box": [round(v, 1) for v in box] if box else None,
            "iou": round(cam.iou(box, true_box), 3) if box and true_box else None,
            "overlay": "data:image/png;base64," + base64.b64encode(png).decode()}


def figures(models: ModelManager, version: int) -> dict[str, Any]:
    card = models.registry.card(models.name, version)
    return {"version": version, "architecture": card.architecture, "labels": len(card.labels),
            "box_rule": str(card.box_rule), "created": card.created,
            "metrics": {k: v for k, v in card.metrics.items() if not isinstance(v, dict)}}


def compare(models: ModelManager, a: int, b: int) -> dict[str, Any]:
    """Both versions' figures, and both answers on the images of b's report (else a's)."""
    engines = {}
    for v in (a, b):
        models.registry.version_dir(models.name, v)  # UnknownVersion (404) before any loading
        live = models.engine
        engines[v] = live if live is not None and live.version == v else models.load_version(v)
    gallery = report_images(models, b) or report_images(models, a)
    rows = []
    for g in gallery:
        with Image.open(g["path"]) as im:
            image = im.convert("RGB")
        rows.append({"truth": g["truth"], "true_box": g["true_box"], "group": g["group"],
                     "a": answer(engines[a], image, g["true_box"]), "b": answer(engines[b], image, g["true_box"])})
    return {"a": figures(models, a), "b": figures(models, b), "images": rows}

