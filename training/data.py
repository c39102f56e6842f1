"""Data sets for training: the embedded synthetic shapes, image folders, CIFAR in its python format.

Every item is (image uint8 [3, H, W], label, box [4] in original pixels or NaN, window [6]): the
window says where the network's input lies in the original image (app.cam.Geometry), so that
CAM boxes can be compared with ground truth in original coordinates.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from app.cam import Geometry
from app.datasets import read_boxes
from app.imaging import to_rgb
from app.preprocess import Preprocessing

from . import synthetic
from .config import TrainConfig

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
NO_BOX = (float("nan"),) * 4
# decoded images kept in memory up to this size (uint8 at the network's input side: 2,400 images of
# 96 px are 66 MB, 20,000 of 128 px 983 MB); a larger folder is decoded at every epoch again
CACHE_MAX_BYTES = 2 * 1024**3
CACHE_DECODE_BATCH = 64


def geometry_vector(g: Geometry) -> torch.Tensor:
    return torch.tensor([g.image_width, g.image_height, g.left, g.top, g.width, g.height], dtype=torch.float64)


def geometry_from_vector(v) -> Geometry:
    w, h, left, top, width, height = (float(x) for x in v)
    return Geometry(int(w), int(h), left, top, width, height)


class ArraySet(Dataset):
    """Images already in memory: uint8 (N, H, W, 3), labels, boxes."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, boxes: np.ndarray | None = None) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
        self.labels = torch.from_numpy(labels.astype(np.int64))
        n, _, h, w = self.images.shape
        self.boxes = torch.full((n, 4), float("nan")) if boxes is None else torch.from_numpy(boxes).float()
        self.window = geometry_vector(Geometry.full(w, h))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i], self.boxes[i], self.window


class DecodedSet(Dataset):
    """A data set's items decoded once and held as tensors: the same items, without opening and
    resizing each file again at every epoch (on 2 CPU cores that was 12% of a training step)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor, windows: torch.Tensor) -> None:
        self.images, self.labels, self.boxes, self.windows = images, labels, boxes, windows

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i], self.boxes[i], self.windows[i]


def decoded(dataset: Dataset, side: int, max_bytes: int | None = None) -> Dataset:
    """`dataset` decoded into memory where its items are the same at every epoch (a FolderSet
    without per-image augmentation) and fit in max_bytes (CACHE_MAX_BYTES when None); otherwise
    `dataset` itself."""
    max_bytes = CACHE_MAX_BYTES if max_bytes is None else max_bytes
    if not isinstance(dataset, FolderSet) or dataset.augment == "imagenet" or not len(dataset):
        return dataset
    if len(dataset) * 3 * side * side > max_bytes:
        log.info("%d images of %d px exceed the decode cache (%d MiB): decoded at every epoch", len(dataset),
                 side, max_bytes >> 20)
        return dataset
    parts = list(zip(*DataLoader(dataset, batch_size=CACHE_DECODE_BATCH)))
    return DecodedSet(*(torch.cat(p) for p in parts))


def boxed_images(dataset: Dataset) -> int:
    """How many of the data set's images have a box."""
    if isinstance(dataset, FolderSet):
        return sum(str(p.resolve()) in dataset.boxes for p, _ in dataset.files)
    return int(torch.isfinite(dataset.boxes).all(dim=1).sum())


class FolderSet(Dataset):
    """`root/<class>/*.jpg` and the like; unreadable files are logged and skipped."""

    def __init__(self, files: list[tuple[Path, int]], prep: Preprocessing, train_augment: str,
                 boxes: dict[str, tuple[float, float, float, float]]) -> None:
        self.files, self.prep, self.augment, self.boxes = files, prep, train_augment, boxes

    def __len__(self) -> int:
        return len(self.files)

    def _train_view(self, image: Image.Image) -> np.ndarray:
        # Sec. 3.4 scale augmentation: shorter side sampled in [256, 480], a random crop, a flip.
        shorter = random.randint(256, 480)
        w, h = image.size
        s = shorter / min(w, h)
        image = image.resize((max(self.prep.crop, round(w * s)), max(self.prep.crop, round(h * s))),
                             Image.Resampling.BILINEAR)
        x = random.randint(0, image.width - self.prep.crop)
        y = random.randint(0, image.height - self.prep.crop)
        out = np.asarray(image.crop((x, y, x + self.prep.crop, y + self.prep.crop)))
        return out[:, ::-1] if random.random() < 0.5 else out

    def __getitem__(self, i: int):
        path, label = self.files[i]
        with Image.open(path) as im:  # oriented and converted as the service does it, so boxes and pixels agree
            image = to_rgb(ImageOps.exif_transpose(im))
        if self.augment == "imagenet":  # the other augmentations act on the batch (training/plan.py)
            array, window = self._train_view(image), Geometry.full(*image.size)
        else:
            array, window = self.prep.crop_resize(image)
        box = self.boxes.get(str(path.resolve()), NO_BOX)
        return (torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))), torch.tensor(label),
                torch.tensor(box, dtype=torch.float32), geometry_vector(window))


@dataclass
class DataBundle:
    train: Dataset
    val: Dataset
    classes: list[str]
    fingerprint: str  # identifies the data a model was trained on (the card records it)


def _readable(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        log.warning("skipping unreadable image %s: %s", path, e)
        return False


def _class_files(root: Path, classes: list[str]) -> list[tuple[Path, int]]:
    out = []
    for label, name in enumerate(classes):
        for p in sorted((root / name).rglob("*")):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and _readable(p):
                out.append((p, label))
    return out


def read_boxes_csv(path: str | None, base: Path) -> dict[str, tuple[float, float, float, float]]:
    if not path:
        return {}
    boxes = {}
    for written, (_, box) in read_boxes(path).items():
        p = Path(written)
        boxes[str((p if p.is_absolute() else base / p).resolve())] = box
    return boxes


def _folder(cfg: TrainConfig, root: Path, prep: Preprocessing) -> DataBundle:
    split_dirs = (root / "train").is_dir() and (root / "val").is_dir()
    train_root = root / "train" if split_dirs else root
    classes = sorted(p.name for p in train_root.iterdir() if p.is_dir() and p.name != "val")
    if not classes:
        raise ValueError(f"no class folders under {train_root}")
    files = _class_files(train_root, classes)
    if split_dirs:
        train_files, val_files = files, _class_files(root / "val", classes)
    else:  # a stable split: a file's side depends on its name alone
        def in_val(p: Path) -> bool:
            return int(hashlib.sha1(p.name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < cfg.val_fraction
        train_files = [f for f in files if not in_val(f[0])]
        val_files = [f for f in files if in_val(f[0])]
    boxes = read_boxes_csv(cfg.boxes_csv, root)
    digest = hashlib.sha256()
    for p, label in files:
        digest.update(f"{p.relative_to(root)}:{label}:{p.stat().st_size}\n".encode())
    return DataBundle(FolderSet(train_files, prep, cfg.augment if cfg.augment != "cifar" else "none", boxes),
                      FolderSet(val_files, prep, "none", boxes), classes, "folder:" + digest.hexdigest()[:16])


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _cifar(cfg: TrainConfig, root: Path, fine: bool) -> DataBundle:
    if fine:
        train = _unpickle(root / "train")
        classes = _unpickle(root / "meta")["fine_label_names"]
        images, labels = train["data"], np.asarray(train["fine_labels"])
    else:
        batches = [_unpickle(root / f"data_batch_{i}") for i in range(1, 6)]
        classes = _unpickle(root / "batches.meta")["label_names"]
        images = np.concatenate([b["data"] for b in batches])
        labels = np.concatenate([np.asarray(b["labels"]) for b in batches])
    images = images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    n_val = round(len(labels) * cfg.val_fraction)  # the paper's 45k/5k split at 0.1
    order = np.random.default_rng(cfg.seed).permutation(len(labels))
    val, train = order[:n_val], order[n_val:]
    digest = hashlib.sha256(images.tobytes()).hexdigest()[:16]
    return DataBundle(ArraySet(images[train], labels[train]), ArraySet(images[val], labels[val]),
                      list(classes), f"cifar:{digest}")


def load_data(cfg: TrainConfig) -> DataBundle:
    kind, _, where = cfg.data.partition(":")
    prep = preprocessing(cfg)
    if kind == "synthetic":
        tr = synthetic.generate(cfg.seed, "train", cfg.synthetic_train, cfg.image_size)
        va = synthetic.generate(cfg.seed, "val", cfg.synthetic_val, cfg.image_size)
        fp = f"synthetic:v1:seed={cfg.seed}:n={cfg.synthetic_train}:size={cfg.image_size}"
        return DataBundle(ArraySet(*tr), ArraySet(*va), list(synthetic.CLASSES), fp)
    if kind == "folder":
        return _folder(cfg, Path(where), prep)
    if kind in ("cifar10", "cifar100"):
        return _cifar(cfg, Path(where), fine=kind == "cifar100")
    raise ValueError(f"unknown data {cfg.data!r}: use synthetic, folder:PATH, cifar10:PATH or cifar100:PATH")


def preprocessing(cfg: TrainConfig) -> Preprocessing:
    return Preprocessing(cfg.image_size, cfg.resize or cfg.image_size, tuple(cfg.mean), tuple(cfg.std))


def cifar_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Sec. 4.2: pad 4 pixels, take a random 32x32 crop, flip half of the images. x: (N, C, H, W)."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    dx = torch.randint(0, 9, (n,), generator=generator)
    dy = torch.randint(0, 9, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None]).to(x.device)
    cols = (dx[:, None] + torch.arange(w)[None]).to(x.device)
    out = padded[torch.arange(n, device=x.device)[:, None, None, None], torch.arange(x.shape[1], device=x.device)[None, :, None, None],
                 rows[:, None, :, None], cols[:, None, None, :]]
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def shift_scale_augment(x: torch.Tensor, generator: torch.Generator, shift: float = 0.15,
                        scale: tuple[float, float] = (0.8, 1.25), jitter: float = 0.25, erase: bool = False,
                        colour: bool = False, masks: torch.Tensor | None = None, flip: bool = False):
    """For small data sets of any kind: each image zoomed by a factor in `scale` and moved by up to
    `shift` of its side (what lies outside becomes the mean colour, 0 after normalisation), and its
    contrast and brightness jittered by up to `jitter`; with `flip`, half of them mirrored left to
    right (off by default: mirroring changes digits and text).
    x: normalised (N, C, H, W). With `masks` (N, 1, H, W), returns (images, masks moved alike)."""
    n = x.shape[0]
    zoom = torch.empty(n).uniform_(*scale, generator=generator)
    move = torch.empty(n, 2).uniform_(-shift, shift, generator=generator) * 2  # grid units span [-1, 1]
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / zoom
    if flip:  # a mirror is a negative x scale in the same sampling grid, so masks follow it
        theta[:, 0, 0] *= torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    theta[:, :, 2] = move
    grid = torch.nn.functional.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    out = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if masks is not None:
        masks = torch.nn.functional.grid_sample(masks.to(x.dtype), grid, mode="bilinear", padding_mode="zeros",
                                                align_corners=False)
    contrast = torch.empty(n, 1, 1, 1).uniform_(1 - jitter, 1 + jitter, generator=generator).to(x.device, x.dtype)
    brightness = torch.empty(n, 1, 1, 1).uniform_(-jitter, jitter, generator=generator).to(x.device, x.dtype)
    out = out * contrast + brightness
    if colour:  # the channels in a random order, and half of the images in negative
        order = torch.stack([torch.randperm(x.shape[1], generator=generator) for _ in range(n)]).to(x.device)
        out = out.gather(1, order[:, :, None, None].expand_as(out))
        sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0).to(x.device, x.dtype)
        out = out * sign[:, None, None, None]
    if erase:  # hide-and-seek / random erasing: a patch of the mean colour on half of the images
        side = (torch.empty(n, 2).uniform_(0.2, 0.5, generator=generator) * torch.tensor(x.shape[-2:])).long()
        corner = (torch.rand(n, 2, generator=generator) * (torch.tensor(x.shape[-2:]) - side + 1)).long()
        keep = torch.rand(n, generator=generator) < 0.5
        rows = torch.arange(x.shape[-2])[None, :]
        cols = torch.arange(x.shape[-1])[None, :]
        in_rows = (rows >= corner[:, :1]) & (rows < corner[:, :1] + side[:, :1])
        in_cols = (cols >= corner[:, 1:]) & (cols < corner[:, 1:] + side[:, 1:])
        hole = (in_rows[:, :, None] & in_cols[:, None, :] & keep[:, None, None]).to(x.device)
        out = out.masked_fill(hole[:, None], 0.0)
    return out if masks is None else (out, masks)


def box_masks(boxes: torch.Tensor, windows: torch.Tensor, side: int) -> torch.Tensor:
    """(N, 1, side, side): 1 on the network-input pixels whose centre lies in the item's box, 0
    elsewhere and on items without one. boxes (N, 4) in original pixels, NaN where unknown;
    windows (N, 6) as geometry_vector gives them."""
    w = windows.to(torch.float32)
    left, top, width, height = w[:, 2:3], w[:, 3:4], w[:, 4:5], w[:, 5:6]
    known = torch.isfinite(boxes).all(dim=1, keepdim=True)
    b = torch.nan_to_num(boxes.to(torch.float32))
    x0, x1 = (b[:, 0:1] - left) / width * side, (b[:, 2:3] - left) / width * side
    y0, y1 = (b[:, 1:2] - top) / height * side, (b[:, 3:4] - top) / height * side
    centres = torch.arange(side, dtype=torch.float32)[None, :] + 0.5
    cols = (centres >= x0) & (centres < x1) & known
    rows = (centres >= y0) & (centres < y1) & known
    return (rows[:, :, None] & cols[:, None, :]).float()[:, None]
