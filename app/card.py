"""The model card: what a registry version says about itself, read once and passed around typed.

Training writes it (training/export.py) beside `model.onnx` and inside its metadata; the registry
reads it (`Registry.card`); the engine, the routes, the Triton export and the promotion gate use
its fields. The JSON keeps every key training wrote: the fields the service reads are typed here,
the rest (training config, parity, versions) travel untouched in `extra`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cam import CALIBRATION_MIN_IMAGES, DEFAULT_RULE, BoxRule
from .preprocess import Preprocessing
from .scoring import OodSpec

FORMAT = "rescam.card/1"
TYPED = ("format", "architecture", "labels", "preprocessing", "cam_size", "cam", "metrics", "created", "calibration",
         "ood")


class CardError(ValueError):
    """A card that cannot be read; the message says what is wrong."""


@dataclass(frozen=True)
class ModelCard:
    labels: tuple[str, ...]
    preprocessing: Preprocessing
    cam_size: tuple[int, int]
    architecture: str | None = None
    # the rule the service draws this model's boxes with: calibrated on its boxed validation images
    # when it had enough of them (the best fixed threshold, MaxBoxAcc (Choe et al. 2020), or a per-
    # image rule where that localized better), else the default
    box_rule: BoxRule = DEFAULT_RULE
    best_threshold: float | None = None
    calibration_images: int = 0  # boxed validation images the card's rule was chosen on; 0: none named
    metrics: dict[str, Any] = field(default_factory=dict, compare=False)
    created: str | None = None
    format: str = FORMAT
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    # open world (app.scoring): the fitted temperature and its figures, and the OOD detector; None
    # for a version exported before them
    calibration: dict[str, Any] | None = field(default=None, compare=False)
    ood: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def temperature(self) -> float | None:
        t = (self.calibration or {}).get("temperature")
        return float(t) if isinstance(t, (int, float)) and 0 < t < math.inf else None

    @property
    def test_time_flip(self) -> bool:
        """Whether the graph averages each image with its left-right mirror (training/export.py)."""
        flip = self.extra.get("test_time_flip")
        return bool(flip.get("on")) if isinstance(flip, dict) else False

    @property
    def test_time_zoom(self) -> bool:
        """Whether the graph takes a second look around the object its CAM finds (training/zoom.py)."""
        zoom = self.extra.get("test_time_zoom")
        return bool(zoom.get("on")) if isinstance(zoom, dict) else False

    @property
    def precision(self) -> str:
        """The graph's arithmetic: float32, float16 (GPUs) or int8 (CPUs); inputs and outputs are
        float32 in all three."""
        return str(self.extra.get("precision") or "float32")

    @property
    def near_ties(self) -> dict[str, Any] | None:
        """For an int8 version that answers its near-ties in float32 (training/quantize.py): the
        card's `quantization.near_ties` entry (margin, share, held-out agreement, cost); else None."""
        q = self.extra.get("quantization")
        near = q.get("near_ties") if isinstance(q, dict) and q.get("kept") and self.precision == "int8" else None
        return near if isinstance(near, dict) and near.get("kept") else None

    @property
    def near_tie_margin(self) -> float | None:
        """The top-2 logit gap at or under which an image is run again by the float32 graph beside
        the int8 one (see near_ties); None for every other version."""
        if self.near_ties is None:
            return None
        margin = self.near_ties.get("margin")
        if not isinstance(margin, (int, float)) or isinstance(margin, bool) or not math.isfinite(margin):
            raise CardError(f"card's quantization.near_ties.margin is not a number: {margin!r:.50}")
        return float(margin)

    @property
    def ood_spec(self) -> OodSpec | None:
        return OodSpec.from_card(self.ood)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelCard:
        if not isinstance(d, dict):
            raise CardError(f"a card is a JSON object, not {type(d).__name__}")
        fmt = d.get("format", FORMAT)
        if not isinstance(fmt, str) or not fmt.startswith("rescam.card/1"):
            raise CardError(f"card format {fmt!r} is not one this rescam reads ({FORMAT})")
        try:
            labels = tuple(str(label) for label in d["labels"])
            prep = Preprocessing.from_card(d)
            h, w = (int(v) for v in d["cam_size"])
        except (KeyError, TypeError, ValueError) as e:
            raise CardError(f"card lacks a readable {e}: it needs labels, preprocessing and cam_size") from None
        if not labels:
            raise CardError("card has no labels")
        metrics = d.get("metrics") if isinstance(d.get("metrics"), dict) else {}
        cam = d.get("cam") if isinstance(d.get("cam"), dict) else {}
        images = cam.get("calibration_images") or metrics.get("images_with_boxes") or 0
        best = cam.get("best_threshold")
        best = float(best) if isinstance(best, (int, float)) and 0 < best < 1 else None
        rule = _rule(cam, best, int(images))
        if d.get("ood") is not None and OodSpec.from_card(d["ood"]) is None:
            raise CardError(f"card's ood entry is not one this rescam reads: {d['ood']!r:.200}")
        return cls(labels, prep, (h, w), d.get("architecture"), rule or DEFAULT_RULE, best,
                   int(images) if rule else 0, metrics, d.get("created"), fmt,
                   {k: v for k, v in d.items() if k not in TYPED},
                   d["calibration"] if isinstance(d.get("calibration"), dict) else None,
                   d["ood"] if isinstance(d.get("ood"), dict) else None)

    @classmethod
    def load(cls, path: str | Path) -> ModelCard:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise CardError(f"{path}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "architecture": self.architecture, "labels": list(self.labels),
                "preprocessing": self.preprocessing.to_card(), "cam_size": list(self.cam_size),
                "cam": {"rule": str(self.box_rule), "best_threshold": self.best_threshold,
                        "calibration_images": self.calibration_images},
                "metrics": self.metrics, "created": self.created, **self.extra,
                **({"calibration": self.calibration} if self.calibration is not None else {}),
                **({"ood": self.ood} if self.ood is not None else {})}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @property
    def default_threshold(self) -> float | None:
        """The box threshold the card's rule cuts at, when its rule is a fixed threshold."""
        return self.box_rule.value if self.box_rule.name == "threshold" and not self.box_rule.on_foreground else None

    @property
    def calibrated(self) -> bool:
        return self.calibration_images >= CALIBRATION_MIN_IMAGES

    @property
    def rule_source(self) -> str:
        """Where the card's rule comes from, in the words an answer gives."""
        if self.calibrated:
            return f"calibrated on {self.calibration_images} boxed validation images"
        if self.box_rule.on_foreground:
            return "default rule for models without boxes, on the foreground map"
        return "default rule for models without boxes"


def _rule(cam: dict[str, Any], best: float | None, images: int) -> BoxRule | None:
    """`cam.rule` (written by training), else an older card's `cam.best_threshold` when it was
    calibrated on enough boxed images, else None (the service's DEFAULT_RULE)."""
    if isinstance(cam.get("rule"), str):
        try:
            return BoxRule.parse(cam["rule"])
        except ValueError:
            pass
    if best is not None and images >= CALIBRATION_MIN_IMAGES:
        return BoxRule("threshold", best)
    return None
