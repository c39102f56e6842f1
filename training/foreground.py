"""The foreground map: the last feature map projected on its first principal component.

Where a network's features are on an object they differ most from where they are on the
background, so the direction along which the last feature map varies most, over every position of
the training images, separates the two (Wei et al. 2017's deep descriptor transforming; Yasuki and
Taki 2024, "CAM Back Again", cut boxes from it). It needs no boxes and no class. Its sign is
arbitrary; the one kept is the one whose map agrees with the true class's CAM on the training
images. The graph outputs it as `foreground` (N, h, w); `pc1:` box rules cut it (app.cam).
Measured against the CAM's own box-free rules in BENCHMARKS.md ("Box-free").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from app.preprocess import Preprocessing
from models import ResNet

from .quantize import cam_correlation

log = logging.getLogger(__name__)

FIT_IMAGES = 2000  # training images whose feature maps the direction is fitted on, at most
SIGN_IMAGES = 256  # of them, those whose maps are kept to choose the sign (resnet50's are 0.4 MB each)


@dataclass(frozen=True)
class Foreground:
    direction: np.ndarray  # (channels,) unit length
    offset: float  # -direction . mean feature, so the map is direction . (f - mean)
    images: int
    explained: float  # the share of the feature variance along the direction
    cam_correlation: float  # mean per-image correlation with the true class's CAM (training images)

    def card(self) -> dict:
        return {"method": "pc1", "images": self.images, "explained": round(self.explained, 4),
                "cam_correlation": round(self.cam_correlation, 4)}

    def to_dict(self) -> dict:
        """For the checkpoint, which export reads it from."""
        return {**self.card(), "direction": self.direction.tolist(), "offset": self.offset}

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """The map (N, h, w) of a feature map (N, C, h, w), in its dtype and on its device: what the
        exported graph outputs and what evaluation cuts."""
        direction = torch.as_tensor(self.direction, dtype=features.dtype, device=features.device)
        return (features * direction.view(1, -1, 1, 1)).sum(dim=1) + self.offset

    @classmethod
    def from_dict(cls, d: dict) -> Foreground:
        return cls(np.asarray(d["direction"], dtype=np.float32), float(d["offset"]), int(d["images"]),
                   float(d["explained"]), float(d["cam_correlation"]))


@torch.no_grad()
def fit(model: ResNet, inputs: np.ndarray, labels: np.ndarray, batch: int = 128) -> Foreground:
    """The first principal component of the last feature map over every position of `inputs`
    (normalised training images without augmentation, their `labels`), in float64."""
    model = model.eval()
    device = next(model.parameters()).device
    channels = None
    total = np.zeros(0)
    gram = np.zeros((0, 0))
    count = 0
    maps, cams = [], []
    for start in range(0, len(inputs), batch):
        x = torch.from_numpy(np.ascontiguousarray(inputs[start:start + batch], dtype=np.float32)).to(device)
        f = model.forward_stages(x)[-1].float()
        y = torch.from_numpy(labels[start:start + batch]).long().to(device)
        cam = model.forward_cam(f)[torch.arange(len(y), device=device), y].cpu()
        f = f.double().cpu().numpy()
        if channels is None:
            channels = f.shape[1]
            total, gram = np.zeros(channels), np.zeros((channels, channels))
        positions = f.transpose(0, 2, 3, 1).reshape(-1, channels)
        total += positions.sum(0)
        gram += positions.T @ positions
        count += len(positions)
        if start < SIGN_IMAGES:
            maps.append(f[:SIGN_IMAGES - start])
            cams.append(cam.double().numpy()[:SIGN_IMAGES - start])
    mean = total / count
    covariance = gram / count - np.outer(mean, mean)
    values, vectors = np.linalg.eigh(covariance)
    direction = vectors[:, -1]
    feature_maps, class_maps = np.concatenate(maps), np.concatenate(cams)
    projected = np.einsum("c,nchw->nhw", direction, feature_maps - mean[None, :, None, None])
    agreement = cam_correlation(projected, class_maps)  # on the first SIGN_IMAGES
    if agreement.mean() < 0:
        direction, agreement = -direction, cam_correlation(-projected, class_maps)
    return Foreground(direction.astype(np.float32), float(-direction @ mean), len(inputs),
                      float(values[-1] / max(values.sum(), 1e-300)), float(agreement.mean()))


def fit_dataset(model: ResNet, train: Dataset, prep: Preprocessing, seed: int = 0) -> Foreground:
    """`fit` on up to FIT_IMAGES of a training set (a stable random choice), as evaluation sees them."""
    from .open_world import dataset_arrays, plain

    images, labels = dataset_arrays(plain(train), FIT_IMAGES, seed)
    found = fit(model, prep.normalize(images), labels)
    log.info("foreground: the first principal component of the last feature map over %d training images, "
             "%.0f%% of its variance, correlation with the true class's CAM %.2f", found.images,
             100 * found.explained, found.cam_correlation)
    return found
