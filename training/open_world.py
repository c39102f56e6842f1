"""Open world at export: the temperature, the OOD bank and threshold, and the battery of images of
none of the model's classes that every version is measured on (its card, its report, the gate).

All through ONNX Runtime on the exported graph, with the card's preprocessing: the figures are
those of what the service serves. The scoring itself is app.scoring's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image
from torch.utils.data import Dataset

from app import scoring
from app.engine import NearTieSession
from app.preprocess import Preprocessing
from app.registry import FLOAT32_FILE

from . import synthetic
from .config import TrainConfig
from .data import FolderSet, load_data
from .outliers import shapes_may_be_its_own, shuffled_tiles

log = logging.getLogger(__name__)

# training images whose features the KNN score compares with, at most: the similarity reads the
# whole bank per image, so its size is the verdict's cost (the shipped model's 20,000 took 0.45 ms
# of a 6 ms answer; a 5,000 share, 0.12 ms, at most 0.0006 AUROC less; BENCHMARKS.md, "Open world")
BANK_IMAGES = 5_000
# and at most this much file (float16): resnet20's 112 features keep 5,000 images, resnet50's 3,840 keep 1,092
BANK_MAX_BYTES = 8 * 2**20
# Over a whole training set, the k-th nearest for one k per 1,000 images (Sun et al. 2022: k=50
# of CIFAR-10's 50,000), at most 5: a small set's 5th neighbour is far into other writers' and
# drawings' ground (three digits models, 1,149 images: FPR@95 against the shapes 0.32/0.34/0.34
# at k=5, 0.24/0.29/0.35 at k=1; BENCHMARKS.md, "k for small training sets"). A bank of a share
# of the set takes that share of k, so the k-th neighbour stays as far away (the shipped model:
# 5,000 of 100,000, k = 1).
K = 5
IMAGES_PER_NEIGHBOUR = 1_000


def neighbours(bank: int, training: int) -> int:
    """k for a bank of `bank` of the `training` images."""
    whole = min(K, training / IMAGES_PER_NEIGHBOUR)
    return max(1, round(whole * bank / max(training, bank)))


# Made-up outliers in the bank, for a model of other data than the shapes: half the embedded shapes
# (a split nothing else uses), half shuffled tiles of training images. On three digits models,
# FPR@95 against new shapes 0.24/0.29/0.35 -> 0.11/0.17/0.19; photographs, real objects and noise,
# kinds no outlier shows, within 0.03 either way; the real-object models level (BENCHMARKS.md,
# "Made-up outliers in the bank"). At most a third of the file's budget.
OUTLIER_IMAGES = 2_000

BATTERY_SIZE = 200  # images per battery set


def plain(dataset: Dataset) -> Dataset:
    """The training set as evaluation sees it: no random crop or flip."""
    if isinstance(dataset, FolderSet) and dataset.augment != "none":
        return FolderSet(dataset.files, dataset.prep, "none", dataset.boxes)
    return dataset


def session_outputs(path: Path, near_tie_margin: float | None = None) -> tuple[ort.InferenceSession, list[str]]:
    """A CPU session of the graph at `path` and the outputs it has; with `near_tie_margin` (an int8
    graph), its near-ties answered by the float32 graph beside it, as the service answers them."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    if near_tie_margin is not None:
        float32 = ort.InferenceSession(str(path.with_name(FLOAT32_FILE)), providers=["CPUExecutionProvider"])
        session = NearTieSession(session, float32, near_tie_margin)
    return session, [n for n in ("logits", "cam", "features", "foreground") if n in names]


def batched_outputs(session: ort.InferenceSession, wanted: list[str], x: np.ndarray, batch: int = 128
                    ) -> list[np.ndarray]:
    """The outputs `wanted` of normalised inputs, run `batch` at a time, each joined whole."""
    parts = [session.run(wanted, {"input": x[i:i + batch]}) for i in range(0, len(x), batch)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(wanted))]


def run_batches(session: ort.InferenceSession, names: list[str], x: np.ndarray, batch: int = 128
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits and pooled features (None for a graph without them) of normalised inputs."""
    wanted = [n for n in ("logits", "features") if n in names]
    out = batched_outputs(session, wanted, x, batch)
    return out[0], out[1] if len(out) > 1 else None


def prepared_shapes(seed: int, split: str, count: int, prep: Preprocessing) -> np.ndarray:
    """`count` embedded shapes of a split, drawn at least 64 px wide, through the card's preprocessing."""
    drawn = synthetic.generate(seed, split, count, max(64, prep.crop))[0]
    return np.stack([prep.crop_resize(Image.fromarray(a))[0] for a in drawn])


def made_up_outliers(cfg: TrainConfig, classes: list[str], prep: Preprocessing, training: np.ndarray, count: int
                     ) -> np.ndarray | None:
    """`count` images of none of the model's classes, uint8 (N, crop, crop, 3) through the card's
    preprocessing: half new shapes, half shuffled tiles of `training` (the bank's own images, the
    same preprocessing). None for a model whose classes may be the shapes (the synthetic data, or a
    set with a class named as one): there the tiles alone gave nothing and cost the digits' shapes."""
    if count < 2 or shapes_may_be_its_own(cfg, classes):
        return None
    drawn = prepared_shapes(cfg.seed, "outliers", count // 2, prep)
    generator = torch.Generator().manual_seed(cfg.seed)
    pick = torch.randint(len(training), (count - count // 2,), generator=generator)
    tiles = shuffled_tiles(torch.from_numpy(training[pick.numpy()]).permute(0, 3, 1, 2), generator)
    return np.concatenate([drawn, tiles.permute(0, 2, 3, 1).numpy()])


def dataset_arrays(dataset: Dataset, limit: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Up to `limit` (a stable random choice) of the data set's images (N, H, W, 3) and labels."""
    n = len(dataset)
    pick = np.arange(n) if n <= limit else np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))
    images, labels = [], []
    for i in pick.tolist():
        image, label, *_ = dataset[i]
        images.append(image.numpy().transpose(1, 2, 0))
        labels.append(int(label))
    return np.stack(images), np.asarray(labels)


# --- the battery: images of none of the model's classes that need no download -------------------

def _noise(rng: np.random.Generator, side: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))


def _blobs(rng: np.random.Generator, side: int) -> Image.Image:
    """A smooth colour field: 4x4 to 8x8 random colours blown up bilinearly."""
    cells = int(rng.integers(4, 9))
    small = Image.fromarray(rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8))
    return small.resize((side, side), Image.Resampling.BILINEAR)


PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "coins", "moon", "hubble_deep_field",
          "immunohistochemistry", "stereo_motorcycle", "clock", "brick", "grass", "gravel", "retina")


def photo(name: str) -> np.ndarray:
    """One of the photographs scikit-image ships, as RGB uint8 (H, W, 3)."""
    import skimage.data as d

    im = getattr(d, name)()
    im = im[0] if isinstance(im, tuple) else im
    return np.repeat(im[..., None], 3, axis=2) if im.ndim == 2 else im[..., :3]


def _photos() -> list[np.ndarray]:
    """The PHOTOS, where scikit-image is installed (those the installed version has)."""
    out = []
    for name in PHOTOS:
        try:
            out.append(photo(name))
        except ImportError:
            return []
        except Exception:  # noqa: BLE001 - a file the installed version lacks
            continue
    return out


def _crop(rng: np.random.Generator, photo: np.ndarray) -> Image.Image:
    side = int(min(photo.shape[:2]) * rng.uniform(0.2, 1.0))
    y, x = rng.integers(0, photo.shape[0] - side + 1), rng.integers(0, photo.shape[1] - side + 1)
    return Image.fromarray(photo[y:y + side, x:x + side])


def battery(cfg: TrainConfig, classes: list[str], prep: Preprocessing, size: int = BATTERY_SIZE, seed: int = 0
            ) -> Iterator[tuple[str, np.ndarray]]:
    """(name, uint8 (N, crop, crop, 3)) sets of images of none of the model's `classes`: the embedded
    shapes (unless they may be its own, as for the made-up outliers), uniform noise, smooth colour
    fields, and the photographs scikit-image ships (where installed), each through the card's
    preprocessing."""
    def prepared(images) -> np.ndarray:
        return np.stack([prep.crop_resize(im)[0] for im in images])

    if not shapes_may_be_its_own(cfg, classes):
        yield "shapes", prepared_shapes(seed, "test", size, prep)
    rng = np.random.default_rng(seed)
    yield "noise", prepared(_noise(rng, 96) for _ in range(size))
    yield "colour fields", prepared(_blobs(rng, 96) for _ in range(size))
    photos = _photos()
    if photos:
        yield "photographs", prepared(_crop(rng, photos[i % len(photos)]) for i in range(size))


def battery_figures(scorer: scoring.Scorer, session: ort.InferenceSession, names: list[str], cfg: TrainConfig,
                    classes: list[str], prep: Preprocessing, known: np.ndarray
                    ) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """AUROC, FPR at 95% TPR and the share called unknown of each battery set against `known` (the
    validation images' OOD scores); and each set's scores (the report's histograms)."""
    figures, scores = {}, {}
    for name, images in battery(cfg, classes, prep):
        logits, features = run_batches(session, names, prep.normalize(images))
        unknown = scores[name] = scorer.ood_scores(logits, features)
        figures[name] = {"auroc": round(scoring.auroc(known, unknown), 4),
                         "fpr_at_95": round(scoring.fpr_at_tpr(known, unknown), 4), "images": len(images)}
        if scorer.threshold is not None:
            figures[name]["called_unknown"] = round(float((unknown > scorer.threshold).mean()), 4)
    return figures, scores


def mean_auroc(figures: dict[str, dict[str, float]]) -> float | None:
    values = [f["auroc"] for f in figures.values()]
    return round(float(np.mean(values)), 4) if values else None


def fit(onnx_path: Path, cfg: TrainConfig, prep: Preprocessing, near_tie_margin: float | None = None
        ) -> tuple[dict, dict, bytes]:
    """(the card's `calibration`, its `ood`, the OOD file's bytes) for an exported graph with a
    `features` output (as it serves: see session_outputs): the bank from the training images, the
    temperature and threshold from the validation images, the battery's figures against them."""
    session, names = session_outputs(onnx_path, near_tie_margin)
    data = load_data(cfg.replace(synthetic_train=min(cfg.synthetic_train, BANK_IMAGES), image_size=prep.crop))
    val_images, val_labels = dataset_arrays(data.val, 10_000)
    val_logits, val_features = run_batches(session, names, prep.normalize(val_images))
    width = val_features.shape[1]
    room = BANK_MAX_BYTES // (2 * width)
    made_up = 0 if shapes_may_be_its_own(cfg, data.classes) else min(OUTLIER_IMAGES, room // 3)
    train_images, _ = dataset_arrays(plain(data.train), min(BANK_IMAGES, room - made_up), cfg.seed)
    _, train_features = run_batches(session, names, prep.normalize(train_images))
    bank = scoring.l2_normalised(train_features).astype(np.float16)
    outlier_images = made_up_outliers(cfg, data.classes, prep, train_images, made_up)
    outliers = None
    if outlier_images is not None:
        outliers = scoring.l2_normalised(run_batches(session, names, prep.normalize(outlier_images))[1])
        outliers = outliers.astype(np.float16)
    blob = scoring.bank_bytes(bank, outliers)
    # the synthetic set was generated only as far as the bank needs; its training set is all of it
    training = cfg.synthetic_train if cfg.data == "synthetic" else len(data.train)
    k = neighbours(len(bank), training)

    temperature = scoring.fit_temperature(val_logits, val_labels)
    before, after = scoring.softmax(val_logits), scoring.softmax(val_logits, temperature)
    calibration = {"temperature": round(temperature, 5), "images": len(val_labels), "bins": scoring.ECE_BINS,
                   "ece_before": round(scoring.ece(before, val_labels), 5),
                   "ece_after": round(scoring.ece(after, val_labels), 5),
                   "ece_by_chance": round(scoring.chance_ece(after.max(axis=1)), 5),
                   "nll_before": round(scoring.nll(val_logits, val_labels), 5),
                   "nll_after": round(scoring.nll(val_logits, val_labels, temperature), 5),
                   "reliability_before": scoring.reliability(before, val_labels),
                   "reliability_after": scoring.reliability(after, val_labels)}
    ood = {"method": "knn", "k": k, "file": scoring.OOD_FILE, "sha256": scoring.file_digest(blob), "bytes": len(blob),
           "threshold": None, "tpr": scoring.TPR, "confidence": scoring.CONFIDENCE, "fit_images": len(bank),
           "training_images": training, "features": width, "val_images": len(val_labels)}
    if outliers is not None:
        # the battery's shapes are then a kind of image the score was fitted against (another split)
        ood |= {"outliers": len(outliers), "outlier_kinds": ["shapes", "shuffled tiles"]}
    unthresholded = scoring.Scorer(None, scoring.OodSpec.from_card(ood | {"threshold": 0.0}), bank, outliers)
    known = unthresholded.ood_scores(val_logits, val_features)
    threshold, above = scoring.tolerance_threshold(known)
    ood |= {"threshold": round(threshold, 6), "val_above_threshold": above}
    scorer = scoring.Scorer(temperature, scoring.OodSpec.from_card(ood), bank, outliers)
    ood["battery"], _ = battery_figures(scorer, session, names, cfg, data.classes, prep, known)
    ood["battery_auroc"] = mean_auroc(ood["battery"])
    log.info("open world: T=%.3f (ECE %.4f -> %.4f; %.4f by chance alone on %d images), KNN threshold %.4f on %d "
             "training images (%d of %d validation images above it); battery AUROC %s", temperature,
             calibration["ece_before"], calibration["ece_after"], calibration["ece_by_chance"], len(val_labels),
             threshold, len(bank), above, len(val_labels),
             {k: v["auroc"] for k, v in ood["battery"].items()})
    return calibration, ood, blob
