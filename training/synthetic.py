"""The embedded data set: one shape per image on a cluttered background, with its exact box.

Every image is a pure function of (seed, split, index), so any split is reproducible anywhere
without a download. The box is the extent of the pixels the object covers, so CAM localization
can be measured exactly.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle", "star", "cross", "ring", "hexagon", "arrow")
SPLITS = {"train": 0, "val": 1, "test": 2, "outliers": 3}  # outliers: training/outliers.py


@dataclass(frozen=True)
class Sample:
    image: np.ndarray  # (H, W, 3) uint8
    label: int
    box: tuple[int, int, int, int]  # x0, y0, x1, y1; x1/y1 exclusive
    mask: np.ndarray  # (H, W) bool, the pixels the object covers


def _polygon(kind: str, n: int, outer: float, inner: float) -> list[tuple[float, float]]:
    """Unit-free outline around (0, 0), radius 1 at its farthest point."""
    if kind == "star":
        return [((outer if i % 2 == 0 else inner) * math.cos(math.pi * i / n),
                 (outer if i % 2 == 0 else inner) * math.sin(math.pi * i / n)) for i in range(2 * n)]
    return [(math.cos(2 * math.pi * i / n), math.sin(2 * math.pi * i / n)) for i in range(n)]


_OUTLINES = {
    "square": [(-1, -1), (1, -1), (1, 1), (-1, 1)],
    "triangle": _polygon("regular", 3, 1, 1),
    "star": _polygon("star", 5, 1.0, 0.45),
    "cross": [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1), (-0.3, 1),
              (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)],
    "hexagon": _polygon("regular", 6, 1, 1),
    "arrow": [(-1, -0.25), (0.2, -0.25), (0.2, -0.7), (1, 0), (0.2, 0.7), (0.2, 0.25), (-1, 0.25)],
}


def _draw_object(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, radius: float, angle: float,
                 fill: int | tuple[int, int, int]) -> None:
    if kind in ("circle", "ring"):
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
        if kind == "ring":
            r = radius * 0.55
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=0)
        return
    outline = _OUTLINES[kind]
    scale = radius / (math.sqrt(2) if kind == "square" else 1.0)
    c, s = math.cos(angle), math.sin(angle)
    points = [(cx + scale * (x * c - y * s), cy + scale * (x * s + y * c)) for x, y in outline]
    draw.polygon(points, fill=fill)


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=3).astype(np.float32)


LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    return yy, xx


def _background(rng: np.random.Generator, size: int, avoid: np.ndarray) -> np.ndarray:
    """A linear gradient between two colours, both lighter or both darker than the object by a
    clear margin (so its outline is visible in brightness alone), plus distractor strokes."""
    target = float(avoid @ LUMA)
    candidates = rng.integers(0, 256, size=(32, 3)).astype(np.float32)
    margin = target - candidates @ LUMA if target > 127.5 else candidates @ LUMA - target
    good = candidates[margin > 60]
    if len(good) < 2:  # rare: fall back to black or white
        good = np.zeros((2, 3), np.float32) + (0.0 if target > 127.5 else 255.0)
    a, b = good[0], good[1]
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = _grid(size)
    t = (math.cos(theta) * xx + math.sin(theta) * yy)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    image = a + (b - a) * t[..., None]
    canvas = Image.fromarray(image.astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(1, 4))):  # short thin strokes that belong to no class
        x0, y0 = rng.uniform(0, size, size=2)
        length, direction = rng.uniform(0.1, 0.4) * size, rng.uniform(0, 2 * math.pi)
        x1, y1 = x0 + length * math.cos(direction), y0 + length * math.sin(direction)
        # near the background's own colours: visible clutter that never outshines the object
        tone = np.clip(a + (b - a) * rng.uniform() + rng.uniform(-45, 45, size=3), 0, 255)
        draw.line([(x0, y0), (x1, y1)], fill=tuple(int(v) for v in tone), width=1)
    return np.asarray(canvas, dtype=np.float32)


def render(seed: int, split: str, index: int, size: int = 64, with_object: bool = True) -> Sample:
    """Image `index` of `split`. with_object=False renders the same image without its object."""
    rng = np.random.default_rng([seed, SPLITS[split], index])
    label = int(rng.integers(len(CLASSES)))
    kind = CLASSES[label]
    colour = _colour(rng)
    radius = rng.uniform(0.15, 0.7) * size / 2
    cx, cy = rng.uniform(radius, size - radius, size=2)
    angle = rng.uniform(0, 2 * math.pi)
    background = _background(rng, size, colour)
    noise = rng.normal(0, 6, size=(size, size, 3)).astype(np.float32)

    mask_image = Image.new("L", (size, size), 0)
    _draw_object(ImageDraw.Draw(mask_image), kind, cx, cy, radius, angle, fill=255)
    mask = np.asarray(mask_image) > 0
    image = background
    if with_object:
        image = np.where(mask[..., None], colour, background)
    image = np.clip(image + noise, 0, 255).astype(np.uint8)
    ys, xs = np.nonzero(mask)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return Sample(image, label, box, mask)


# Fewer images are generated in this process (1,000 take about a second), where starting workers
# would cost more than it saves.
PARALLEL_FROM = 5000


def worker_context() -> multiprocessing.context.BaseContext:
    """How worker processes start: never a plain fork. Forked from a process whose ONNX Runtime or
    BLAS threads hold a lock, a child waits on it for ever (a test process hung so, scoring the
    shipped model's validation images after other tests had run sessions). A fork server is a
    fresh single-threaded process; spawn where there is none."""
    return multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                                       else "spawn")


def _generate_serial(seed: int, split: str, count: int, size: int, start: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    labels = np.empty(count, dtype=np.int64)
    boxes = np.empty((count, 4), dtype=np.float32)
    for i in range(count):
        s = render(seed, split, start + i, size)
        images[i], labels[i], boxes[i] = s.image, s.label, s.box
    return images, labels, boxes


def generate(seed: int, split: str, count: int, size: int = 64, start: int = 0, workers: int | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`count` images of a split: uint8 (N, H, W, 3), labels (N,), boxes (N, 4).

    Large requests are spread over `workers` processes (default: every core this process may
    use); since each image depends only on its index, the result is the same either way."""
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if workers <= 1 or count < PARALLEL_FROM:
        return _generate_serial(seed, split, count, size, start)
    bounds = np.linspace(0, count, workers * 4 + 1).astype(int)
    jobs = [(seed, split, int(b - a), size, start + int(a)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    with ProcessPoolExecutor(workers, mp_context=worker_context()) as pool:
        parts = list(pool.map(_generate_serial, *zip(*jobs)))
    return tuple(np.concatenate(arrays) for arrays in zip(*parts))
