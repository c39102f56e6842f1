"""Test-time zoom: a second look at the object, inside the exported graph.

The first pass's CAM says where the object is; a square around it is cropped, resized to the input
size and passed again; the crop's CAM is put back where the crop came from and averaged with the
first. Small objects gain most: on the real-object set, objects under a fifth of the canvas went
32% -> 44% top-1, all held-out composites +2 points over two models (BENCHMARKS.md, "Test-time
zoom"). The served logits stay the spatial mean of the served CAM, so the CAM still explains the
score: the crop's map, less the bias, is scaled by the share of the image the crop covers, so its
mean over the whole image is its mean over the crop. Costs a second pass for every image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SPREAD = 3.0  # the crop's side: this many times the CAM's spread (2.5-3.5 measured alike; 3 the best)
SIDE = (0.4, 1.0)  # the crop's side, as a share of the image's side
# the most the put-back scales the crop's CAM (and its rounding): the smallest window's share, inverted
MOST_SCALE = 1.0 / SIDE[0] ** 2
MIN_GAIN = 0.01  # validation top-1 a second pass must add to be kept: it doubles the inference


def _centres(n: int, like: torch.Tensor) -> torch.Tensor:
    """The centres of n cells across [-1, 1] (grid_sample's coordinates, align_corners=False)."""
    # counted in integers and cast: ONNX's Range takes no float16 (a GPU's half-precision graph)
    return (torch.arange(n, device=like.device).to(like.dtype) + 0.5) * (2.0 / n) - 1.0


def window(logits: torch.Tensor, cam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(centre x, centre y, half side) of the square to look at again, in [-1, 1] image coordinates,
    each (N,): centred on the mass of the classes' CAMs weighted by their softmax scores (a near-tie
    moves the square a little, not across the image, so ONNX Runtime and torch crop alike), its side
    SPREAD times the heat's spread, within SIDE of the image's, and inside the image."""
    h, w = cam.shape[-2:]
    heat = (cam * logits.softmax(1)[:, :, None, None]).sum(1).relu()
    mass = heat.sum((1, 2)).clamp_min(1e-12)
    rows, cols = heat.sum(2), heat.sum(1)  # (N, h), (N, w)
    gy, gx = _centres(h, cam), _centres(w, cam)
    cy, cx = (rows * gy).sum(1) / mass, (cols * gx).sum(1) / mass
    var_y = (rows * (gy[None] - cy[:, None]) ** 2).sum(1) / mass
    var_x = (cols * (gx[None] - cx[:, None]) ** 2).sum(1) / mass
    # a side of k spreads is k * spread / 2 of the image's side (which spans 2), and so the half side
    half = (SPREAD / 2 * torch.maximum(var_x, var_y).sqrt()).clamp(*SIDE)
    def inside(c: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(c, 1 - half), half - 1)

    return inside(cx), inside(cy), half


def _grid(cx: torch.Tensor, cy: torch.Tensor, scale: torch.Tensor, h: int, w: int, like: torch.Tensor
          ) -> torch.Tensor:
    """(N, h, w, 2) sampling points: an h x w grid's cell centres, scaled by `scale` about (cx, cy)."""
    xs = cx[:, None] + scale[:, None] * _centres(w, like)[None]  # (N, w)
    ys = cy[:, None] + scale[:, None] * _centres(h, like)[None]  # (N, h)
    return torch.stack([xs[:, None, :].expand(-1, h, -1), ys[:, :, None].expand(-1, -1, w)], dim=-1)


def crop(x: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    """The window of each image, resized (bilinear) to the image's own size."""
    grid = _grid(cx, cy, half, x.shape[-2], x.shape[-1], x)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def put_back(cam: torch.Tensor, bias: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, half: torch.Tensor
             ) -> torch.Tensor:
    """The crop's CAM (N, K, h, w) on the whole image's grid: its evidence (the map less the bias)
    where the crop lay and none elsewhere, scaled so that its mean over the whole grid is its mean
    over the crop; the bias everywhere. So its spatial mean is the crop's logits, as a CAM's is."""
    h, w = cam.shape[-2:]
    # the whole grid's cell centres, in the crop's own coordinates
    grid = _grid(-cx / half, -cy / half, 1 / half, h, w, cam)
    evidence = F.grid_sample(cam - bias[None, :, None, None], grid, mode="bilinear", padding_mode="zeros",
                             align_corners=False)
    ones = cam[:, :1] * 0 + 1  # not ones_like: the ONNX exporter folds that into the example's batch size
    covered = F.grid_sample(ones, grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)
    scale = (h * w) / covered.sum((2, 3), keepdim=True).clamp_min(1e-6)
    return evidence * scale + bias[None, :, None, None]
