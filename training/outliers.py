"""Made-up outliers for outlier exposure (Hendrycks et al. 2019): images of none of a model's classes,
which the loss teaches it to give uniform scores. Nothing is downloaded; two sources:

- `tiles`: the batch's own images cut in 4x4 tiles and put back shuffled, so the colours and
  textures stay and the objects are gone;
- `shapes`: the embedded synthetic shapes (training/synthetic.py, a split no data set uses), drawn
  marks on textured canvases: for a model of other data, the nearest kind of picture the project
  can make;
- `mixed`: half of each.
"""

from __future__ import annotations

import logging

import torch

from . import synthetic
from .evaluate import normalize_batch
from .plan import augment_batch

log = logging.getLogger(__name__)

SOURCES = ("tiles", "shapes", "mixed")
SHAPES_POOL = 2048  # drawn once per training run, at the batch's size


def shuffled_tiles(x: torch.Tensor, generator: torch.Generator, grid: int = 4) -> torch.Tensor:
    """Outliers made of in-distribution images: each cut in grid x grid tiles put back in a random
    order, so the colours and textures stay and the objects are gone (the side a multiple of grid)."""
    n, c, h, w = x.shape
    th, tw = h // grid, w // grid
    tiles = x[:, :, : th * grid, : tw * grid].reshape(n, c, grid, th, grid, tw).permute(0, 2, 4, 1, 3, 5)
    tiles = tiles.reshape(n, grid * grid, c, th, tw)
    order = torch.argsort(torch.rand(n, grid * grid, generator=generator), dim=1).to(x.device)
    tiles = tiles[torch.arange(n, device=x.device)[:, None], order]
    out = tiles.reshape(n, grid, grid, c, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(n, c, th * grid, tw * grid)
    return torch.nn.functional.pad(out, (0, w - tw * grid, 0, h - th * grid))


def shapes_may_be_its_own(cfg, classes: list[str]) -> bool:
    """Whether the synthetic shapes may be images of the model's own classes: the synthetic data, or a
    data set with a class named as one of the shapes (a model must not learn its classes unknown)."""
    return cfg.data == "synthetic" or bool(set(classes) & set(synthetic.CLASSES))


def outlier_source(cfg, classes: list[str]) -> str:
    """cfg.outliers, or `tiles` where the shapes may be the model's own."""
    if cfg.outliers == "tiles" or not shapes_may_be_its_own(cfg, classes):
        return cfg.outliers
    log.info("outliers: tiles, not %s: this model's classes include the synthetic shapes'", cfg.outliers)
    return "tiles"


class Outliers:
    """A batch's outliers from `source`, a quarter of the batch's size, normalised and augmented as
    the batch was."""

    def __init__(self, source: str, augment: str, flip: bool, mean: torch.Tensor, std: torch.Tensor,
                 seed: int = 0) -> None:
        if source not in SOURCES:
            raise ValueError(f"unknown outlier source {source!r}; use one of {', '.join(SOURCES)}")
        self.source, self.augment, self.flip, self.mean, self.std, self.seed = source, augment, flip, mean, std, seed
        self.pool: torch.Tensor | None = None  # uint8 (N, 3, size, size)

    def shapes(self, n: int, size: int, generator: torch.Generator) -> torch.Tensor:
        if self.pool is None or self.pool.shape[-1] != size:
            images = synthetic.generate(self.seed, "outliers", SHAPES_POOL, size, workers=1)[0]
            self.pool = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        pick = torch.randint(len(self.pool), (n,), generator=generator)
        x = normalize_batch(self.pool[pick].to(self.mean.device), self.mean, self.std)
        return augment_batch(x, self.augment, generator, flip=self.flip)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = max(1, len(x) // 4)
        if self.source == "tiles":
            return shuffled_tiles(x[:n], generator)
        if self.source == "shapes":
            return self.shapes(n, x.shape[-1], generator).to(x.dtype)
        half = max(1, n // 2)
        drawn = self.shapes(n - half, x.shape[-1], generator).to(x.dtype)
        return torch.cat([shuffled_tiles(x[:half], generator), drawn])
