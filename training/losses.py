"""A loss that fits the CAM to the boxes a data set gives: the one mechanism rescam serves (CAM,
then a rule, then a box) trained on the signal that a threshold calibrated on boxes throws away."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def box_fit_loss(cams: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor) -> torch.Tensor | None:
    """Mean squared difference between each boxed image's true-class CAM, rectified and scaled to a
    peak of 1, and the share of each CAM cell that lies in its box: high in the box, none outside,
    which is what a threshold or a mass rule turns into a box that fits. cams (N, K, h, w); masks
    (N, 1, H, W) from data.box_masks after augmentation; images whose box is empty (none given, or
    moved out of view) are left out. None when no image of the batch has a box."""
    boxed = masks.flatten(1).sum(1) > 0
    if not boxed.any():
        return None
    cam = cams[boxed, labels[boxed]].float().relu()
    cam = cam / cam.flatten(1).amax(1).clamp_min(1e-6)[:, None, None]
    target = F.adaptive_avg_pool2d(masks[boxed].float(), cam.shape[-2:])[:, 0]
    return ((cam - target) ** 2).mean()
