"""An exported model through ONNX Runtime on a run's own validation set: the live model's figures
for the promotion gate (judged on the same images as the retrained one) and the report's
per-image scores (training/report.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from torch.utils.data import DataLoader
from tqdm import tqdm

from app.cam import Geometry
from app.card import ModelCard
from app.registry import CARD_FILE, MODEL_FILE
from app.scoring import Scorer, Verdict

from .config import TrainConfig
from .data import DataBundle, geometry_from_vector, load_data
from .localization import LocalizationTally
from .open_world import battery_figures, mean_auroc, session_outputs


@dataclass
class Scored:
    """One validation image as the exported model saw it."""

    index: int  # in the validation set
    truth: int | None  # the true class's index among the model's labels; None when it does not know it
    logits: np.ndarray  # (classes,)
    cams: np.ndarray  # (classes, h, w)
    verdict: Verdict  # calibrated scores and the open-world verdict (app.scoring)
    box: np.ndarray  # the true box in the original image's pixels; NaN when none
    window: Geometry
    foreground: np.ndarray | None = None  # (h, w), where the graph has the map


@dataclass
class OnnxModel:
    """An exported version as the service runs it: its card, its ONNX Runtime session (CPU; an int8
    version's near-ties answered by its float32 graph) and the outputs it has, and its scorer
    (app.scoring). Opened once, for every figure taken of it."""

    card: ModelCard
    session: ort.InferenceSession
    names: list[str]
    scorer: Scorer

    @classmethod
    def load(cls, model_dir: str | Path) -> OnnxModel:
        model_dir = Path(model_dir)
        card = ModelCard.load(model_dir / CARD_FILE)
        session, names = session_outputs(model_dir / MODEL_FILE, card.near_tie_margin)
        return cls(card, session, names, Scorer.load(model_dir, card.temperature, card.ood_spec))

    @property
    def has_foreground(self) -> bool:
        return "foreground" in self.names

    def battery(self, cfg: TrainConfig, known: np.ndarray) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
        """training.open_world.battery_figures of this model against the `known` OOD scores."""
        return battery_figures(self.scorer, self.session, self.names, cfg, list(self.card.labels),
                               self.card.preprocessing, known)


def scored_images(model_dir: str | Path, cfg: TrainConfig, batch_size: int = 64, desc: str = "scoring"
                  ) -> tuple[OnnxModel, DataBundle, Iterator[Scored]]:
    """The model, cfg's data read with the card's preprocessing, and each validation image scored
    by ONNX Runtime and app.scoring; labels are matched by name."""
    model = OnnxModel.load(model_dir)
    card, session, names, scorer = model.card, model.session, model.names, model.scorer
    prep = card.preprocessing
    data = load_data(cfg.replace(image_size=prep.crop, resize=prep.resize, mean=prep.mean, std=prep.std,
                                 synthetic_train=0))
    index = {label: i for i, label in enumerate(card.labels)}

    def images() -> Iterator[Scored]:
        k = 0
        loader = DataLoader(data.val, batch_size=batch_size)
        for images, labels, boxes, windows in tqdm(loader, desc=desc, unit="batch", leave=False, disable=None):
            x = prep.normalize(images.numpy().transpose(0, 2, 3, 1))
            out = dict(zip(names, session.run(names, {"input": x})))
            logits, cams, features, foreground = out["logits"], out["cam"], out.get("features"), out.get("foreground")
            verdicts = scorer.verdicts(logits, features)
            for i, label in enumerate(labels.tolist()):
                yield Scored(k, index.get(data.classes[label]), logits[i], cams[i], verdicts[i], boxes[i].numpy(),
                             geometry_from_vector(windows[i]), None if foreground is None else foreground[i])
                k += 1

    return model, data, images()


def evaluate_onnx(model_dir: str | Path, cfg: TrainConfig, batch_size: int = 64, battery: bool = True) -> dict:
    """Top-1 and CAM localization of an exported model on cfg's validation split; an image whose
    class the model does not know counts as wrong. Its boxes are drawn with its own rule (the one
    the service serves it with). With `battery`, its OOD battery's figures too."""
    model, _, images = scored_images(model_dir, cfg, batch_size, desc="the live model")
    card = model.card
    correct = count = 0
    tally = LocalizationTally(served=card.box_rule, foreground=model.has_foreground)
    known = []
    for s in images:
        right = s.truth is not None and s.verdict.predicted == s.truth
        correct += right
        count += 1
        known.append(s.verdict.ood_score)
        if s.truth is not None and np.isfinite(s.box).all():
            tally.add(s.cams[s.truth], right, s.box, s.window, s.foreground)
    figures = {"images": count, "top1": correct / max(count, 1), "labels": list(card.labels), **tally.result()}
    if battery:
        figures["ood_battery"], _ = model.battery(cfg, np.array(known))
        figures["ood_auroc"] = mean_auroc(figures["ood_battery"])
    return figures
