"""Evaluation: top-1/top-5 accuracy, a confusion matrix and CAM localization."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from app.cam import box_free_rule
from models import ResNet

from .data import geometry_from_vector
from .foreground import Foreground
from .localization import LocalizationTally


def normalize_batch(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float, scaled to [0, 1] and standardised per channel."""
    return (x.float().div_(255) - mean) / std


def channel_stats(cfg, device) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(cfg.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, device=device).view(1, 3, 1, 1)
    return mean, std


@torch.no_grad()
def evaluate(model: ResNet, dataset: Dataset, cfg, device: torch.device, num_classes: int,
             localization: bool = True, batch_size: int = 256, foreground: Foreground | None = None) -> dict:
    """Top-1/top-5 and loss on `dataset`; with `localization`, the CAM box figures of its boxed
    images (and those of the pc1 rules, with a fitted `foreground`)."""
    model.eval()
    mean, std = channel_stats(cfg, device)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    top5 = loss_sum = count = 0
    # served rule: calibrated on these boxes if enough, else the box-free default
    tally = LocalizationTally(fallback=box_free_rule(foreground is not None), foreground=foreground is not None)
    batches = DataLoader(dataset, batch_size=batch_size, num_workers=cfg.workers)
    for images, labels, boxes, windows in tqdm(batches, desc="evaluating", unit="batch", leave=False, disable=None):
        x = normalize_batch(images.to(device), mean, std)
        features = model.forward_features(x)
        logits = model.forward_head(features).float()
        labels_d = labels.to(device)
        loss_sum += F.cross_entropy(logits, labels_d, reduction="sum").item()
        k = min(5, num_classes)
        top5 += (logits.topk(k, dim=1).indices == labels_d[:, None]).any(dim=1).sum().item()
        pred = logits.argmax(dim=1).cpu().numpy()
        truth = labels.numpy()
        np.add.at(confusion, (truth, pred), 1)
        count += len(truth)
        has_box = torch.isfinite(boxes).all(dim=1)
        if localization and has_box.any():
            cams = model.forward_cam(features).float().cpu().numpy()
            maps = None if foreground is None else foreground.project(features.float()).cpu().numpy()
            for i in torch.nonzero(has_box).flatten().tolist():
                tally.add(cams[i, truth[i]], bool(pred[i] == truth[i]), boxes[i].numpy(),
                          geometry_from_vector(windows[i]), None if maps is None else maps[i])
    result = {"images": count, "loss": loss_sum / max(count, 1), "top1": float(np.trace(confusion)) / max(count, 1),
              "top5": top5 / max(count, 1), "confusion": confusion.tolist(),
              # what always answering the most common class would score: the gate's floor
              "chance_top1": float(confusion.sum(axis=1).max()) / max(count, 1)}
    result.update(tally.result())
    return result
