"""The live model's figures on a job's own validation set, through ONNX Runtime, so that a
retrained model and the live one are judged on the same images (the promotion gate)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from torch.utils.data import DataLoader

from app.card import ModelCard
from app.registry import CARD_FILE, MODEL_FILE

from .config import TrainConfig
from .data import geometry_from_vector, load_data
from .localization import LocalizationTally


def evaluate_onnx(model_dir: str | Path, cfg: TrainConfig, batch_size: int = 64) -> dict:
    """Top-1 and CAM localization of an exported model on cfg's validation split; labels are
    matched by name, and an image whose class the model does not know counts as wrong. Its boxes
    are drawn with its own rule (the one the service serves it with)."""
    model_dir = Path(model_dir)
    card = ModelCard.load(model_dir / CARD_FILE)
    prep = card.preprocessing
    cfg = cfg.replace(image_size=prep.crop, resize=prep.resize, mean=prep.mean, std=prep.std, synthetic_train=0)
    data = load_data(cfg)
    session = ort.InferenceSession(str(model_dir / MODEL_FILE), providers=["CPUExecutionProvider"])
    index = {label: i for i, label in enumerate(card.labels)}
    correct = count = 0
    tally = LocalizationTally(served=card.box_rule)
    for images, labels, boxes, windows in DataLoader(data.val, batch_size=batch_size):
        x = prep.normalize(images.numpy().transpose(0, 2, 3, 1))
        logits, cams = session.run(["logits", "cam"], {"input": x})
        for i, label in enumerate(labels.tolist()):
            known = index.get(data.classes[label])
            right = known is not None and int(logits[i].argmax()) == known
            correct += right
            count += 1
            if known is not None and np.isfinite(boxes[i].numpy()).all():
                tally.add(cams[i, known], right, boxes[i].numpy(), geometry_from_vector(windows[i]))
    return {"images": count, "top1": correct / max(count, 1), "labels": list(card.labels), **tally.result()}
