"""The training plan, chosen from the data: image size, the CIFAR stem's stride, and how many
optimizer steps fit, so that a user's first `rescam train --data folder:...` or `POST /v1/jobs`
with nothing but a data set trains long enough to learn and no longer than its time budget.

A plan is made once, before the first step, printed, written to metrics.jsonl (the job shows it)
and kept in the checkpoint, so a resumed run follows the same schedule.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models import is_cifar_model

from .config import TrainConfig

log = logging.getLogger(__name__)
SIZE_STEP = 16  # the network's input side is a multiple of this
SIZE_RANGE = (32, 128)  # on a CPU a larger side costs more steps than it gains; a GPU may go higher
SIZE_RANGE_GPU = (32, 224)
SAMPLED_FILES = 200  # image headers read to choose the size
COLOUR_CHECK_IMAGES = (1000, 500)  # training and validation images read to test what colour tells
COLOUR_CHECK_MIN_VAL = 30
# a plan grows where its time budget holds at least SCALE_HEADROOM times its steps (a GPU does;
# 2 CPU cores spend the whole default budget on the real sets): the CIFAR family's stage widths times
# the largest of WIDTH_FACTORS that still leaves that headroom, then the steps that fill the budget,
# at most MAX_STEPS_SCALE times those planned (scale_to_budget)
SCALE_HEADROOM = 4
WIDTH_FACTORS = (2, 4)
MAX_STEPS_SCALE = 50
CPU_BF16_MIN_GAIN = 1.25  # bf16 on a CPU only where its steps are at least this much faster
# the end of training is "still learning" where validation top-1 over the last fifth of the epochs
# beats the fifth before by at least a point (one epoch's figure on 500 images moves by ~2 points)
LATE_SHARE, STILL_LEARNING_GAIN, LATE_MIN_EPOCHS = 0.2, 0.01, 10


@dataclass(frozen=True)
class Plan:
    steps: int
    epochs: int
    steps_per_epoch: int
    batch_size: int
    image_size: int
    augment: str
    seconds_per_step: float | None  # measured before training; None when nothing was timed
    expected_s: float | None
    limited_by: str  # "epochs", "min_steps" or "time_budget"
    device: str = "cpu"  # the device the steps were planned (and timed) on: "cpu" or "cuda"
    precision: str = "float32"  # "float32" or "bfloat16" (autocast)
    architecture: str = ""  # e.g. "resnet20 16/32/64": the network and its stage widths
    boxes_fitted: int = 0  # training images whose CAM the box-fit loss fits to their box
    stretched_budget_s: float | None = None  # the time budget as stretched for these steps; None: as set
    start: str = "scratch"  # where the weights began: scratch, "the shapes model's weights", or the init file

    def describe(self, train_images: int) -> str:
        eta = f", about {self.expected_s / 60:.1f} min" if self.expected_s else ""
        boxes = f", CAMs fitted to {self.boxes_fitted} boxes" if self.boxes_fitted else ""
        stretched = (f" (the time budget stretched to {self.stretched_budget_s / 60:.1f} min for them)"
                     if self.stretched_budget_s else "")
        start = f" from {self.start}" if self.start != "scratch" else ""
        return (f"plan: {self.architecture or 'the network'}{start}, {self.steps} optimizer steps ({self.epochs} "
                f"epochs of {train_images} images, batch {self.batch_size}), {self.image_size} px, "
                f"augmentation {self.augment}{boxes}, {self.device} {self.precision}{eta}; steps set by "
                f"{self.limited_by}{stretched}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _folder_sizes(root: Path) -> list[tuple[int, int]]:
    from PIL import Image

    from .data import IMAGE_SUFFIXES

    # os.walk follows linked folders as the data loader does (pathlib's rglob does not before 3.13)
    files = sorted(Path(folder) / name for folder, _, names in os.walk(root, followlinks=True) for name in names
                   if Path(name).suffix.lower() in IMAGE_SUFFIXES)
    step = max(1, len(files) // SAMPLED_FILES)
    sizes = []
    for p in files[::step][:SAMPLED_FILES]:
        try:
            with Image.open(p) as im:  # reads the header only
                sizes.append(im.size)
        except OSError:
            continue
    return sizes


def image_size_for(cfg: TrainConfig, on_gpu: bool) -> int:
    """The median shorter side of the images, rounded down to a multiple of SIZE_STEP and kept
    within SIZE_RANGE: a network that reads the images near their own resolution."""
    kind, _, where = cfg.data.partition(":")
    if kind == "synthetic":
        return 64
    if kind.startswith("cifar"):
        return 32
    sizes = _folder_sizes(Path(where))
    if not sizes:
        return 64
    low, high = SIZE_RANGE_GPU if on_gpu else SIZE_RANGE
    side = statistics.median(min(w, h) for w, h in sizes)
    return int(min(high, max(low, side // SIZE_STEP * SIZE_STEP)))


def adapt_to_data(cfg: TrainConfig, on_gpu: bool) -> TrainConfig:
    """cfg with what `adapt` leaves to the data filled in: the image size (when 0) and, for the
    CIFAR family, a stride-2 stem from 64 px up (64 px at the cost of 32, an 8x8 CAM)."""
    if not cfg.adapt:
        return cfg if cfg.image_size else cfg.replace(image_size=image_size_for(cfg, on_gpu))
    size = cfg.image_size or image_size_for(cfg, on_gpu)
    kwargs = dict(cfg.architecture_kwargs)
    if is_cifar_model(cfg.architecture):
        kwargs.setdefault("stem_stride", 2 if size >= 64 else 1)
    return cfg.replace(image_size=size, architecture_kwargs=kwargs)


def colour_features(dataset, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Each image's colour alone: the mean and the spread of each channel, for up to `limit`
    images spread over the data set; and their labels."""
    picks = np.linspace(0, len(dataset) - 1, num=min(limit, len(dataset))).round().astype(int)
    features, labels = [], []
    for i in dict.fromkeys(picks.tolist()):
        image, label = dataset[i][:2]
        pixels = image.reshape(image.shape[0], -1).float()
        features.append(torch.cat([pixels.mean(1), pixels.std(1)]).numpy())
        labels.append(int(label))
    return np.array(features), np.array(labels)


def colour_tells_classes(train, val) -> bool:
    """Whether the images' colours alone name their classes better than chance: a 5-nearest-
    neighbour vote on colour_features, trained on the training images and scored on the validation
    images, beats always answering the most common class with z > 2.33 (one-sided 1%). When colour
    does not, it is a nuisance the network should learn to ignore, and the `auto` recipe permutes
    and inverts colours in training; when it does, or the check cannot tell (few validation images),
    colours are left alone (a ripe and an unripe fruit differ by colour)."""
    if len(val) < COLOUR_CHECK_MIN_VAL:
        return True
    x_train, y_train = colour_features(train, COLOUR_CHECK_IMAGES[0])
    x_val, y_val = colour_features(val, COLOUR_CHECK_IMAGES[1])
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    distances = ((x_val[:, None, :] - x_train[None, :, :]) ** 2).sum(-1)
    nearest = y_train[np.argsort(distances, axis=1)[:, :5]]
    votes = np.array([np.bincount(row, minlength=y_train.max() + 1).argmax() for row in nearest])
    n, hits = len(y_val), int((votes == y_val).sum())
    chance = np.bincount(y_val).max() / n
    z = (hits - n * chance) / math.sqrt(max(n * chance * (1 - chance), 1e-9))
    log.info("colour alone: %d of %d validation images right, chance %.3f, z %.1f", hits, n, chance, z)
    return z > 2.33


def adapt_augmentation(cfg: TrainConfig, train, val) -> TrainConfig:
    """The `auto` recipe's augmentation fitted to the data: colours permuted and inverted too
    when they do not tell the classes apart (colour_tells_classes)."""
    if cfg.adapt and cfg.augment == "shift-scale" and not colour_tells_classes(train, val):
        return cfg.replace(augment="shift-scale-colour")
    return cfg


def time_steps(model: torch.nn.Module, loader, cfg: TrainConfig, device: torch.device, steps: int = 3,
               bf16: bool = False, limit_s: float | None = None) -> float:
    """Seconds per optimizer step, measured on a copy of the model with one batch from the loader
    (its loading included), without touching the run's model, optimizer or random state; in bf16
    autocast when `bf16`. Infinity once the steps have taken more than limit_s in all (a precision
    this CPU only emulates need not be timed to the end)."""
    from .evaluate import channel_stats, normalize_batch

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        probe = copy.deepcopy(model).train()
        optimizer = torch.optim.SGD(probe.parameters(), lr=0.0)
        mean, std = channel_stats(cfg, device)
        t0 = time.perf_counter()
        images, labels, _, _ = next(iter(loader))
        load_s = time.perf_counter() - t0
        x = normalize_batch(images.to(device), mean, std)
        y = labels.to(device)
        elapsed = []
        for _ in range(steps + 1):  # the first step warms up the allocator and kernels
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(probe(augment_batch(x, cfg.augment, torch.Generator().manual_seed(0))), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed.append(time.perf_counter() - t0)
            if limit_s is not None and sum(elapsed) > limit_s:
                return math.inf
    return load_s + statistics.median(elapsed[1:])


def cpu_may_run_bf16() -> bool:
    """Whether bf16 on this CPU is worth timing: oneDNN's bf16 needs AVX-512 (natively with
    AVX-512 BF16 or AMX, emulated without; an AVX2 CPU has neither: measured 17x slower there)."""
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512") and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def choose_precision(cfg: TrainConfig, device: torch.device, timed: bool, timer,
                     bf16_possible: bool | None = None) -> tuple[str, float | None]:
    """The training precision and the seconds per step it runs at (None when nothing was timed).
    timer(bf16, limit_s) times a step. cfg.precision "float32" or "bfloat16" is kept as asked; "auto"
    is bf16 on CUDA and, on a CPU that may run it (cpu_may_run_bf16, unless bf16_possible says),
    bf16 only where both were timed and bf16 came out CPU_BF16_MIN_GAIN faster: whether the CPU
    runs bf16 natively (AVX-512 BF16, AMX) or emulates it is measured, not guessed."""
    if cfg.precision not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"precision {cfg.precision!r}: use auto, float32 or bfloat16")
    if cfg.precision != "auto":
        return cfg.precision, timer(cfg.precision == "bfloat16", None) if timed else None
    if device.type == "cuda":
        return "bfloat16", timer(True, None) if timed else None
    if not timed:
        return "float32", None
    fp32 = timer(False, None)
    if not (cpu_may_run_bf16() if bf16_possible is None else bf16_possible):
        return "float32", fp32
    # given up once bf16 is clearly slower: 4 steps (one warm-up) at the speed that would just win, twice over
    bf16 = timer(True, 2 * 4 * fp32 / CPU_BF16_MIN_GAIN + 1.0)
    log.info("a training step on the CPU: %.3f s in fp32, %.3f s in bf16", fp32, bf16)
    return ("bfloat16", bf16) if fp32 >= CPU_BF16_MIN_GAIN * bf16 else ("float32", fp32)


MASKED_AUGMENTATIONS = ("none", "shift-scale", "shift-scale-colour")  # those that move box masks along


def augment_batch(x: torch.Tensor, augment: str, generator: torch.Generator, masks: torch.Tensor | None = None,
                  flip: bool = False):
    """The batch augmented; with `masks` (only for MASKED_AUGMENTATIONS), (images, masks moved alike);
    `flip` mirrors half of the images too (shift-scale augmentations)."""
    from .data import cifar_augment, shift_scale_augment

    if masks is not None and augment not in MASKED_AUGMENTATIONS:
        raise ValueError(f"augmentation {augment!r} cannot move box masks; use one of {MASKED_AUGMENTATIONS}")
    if augment == "cifar":
        return cifar_augment(x, generator)
    if augment == "shift-scale":
        return shift_scale_augment(x, generator, masks=masks, flip=flip)
    if augment == "shift-scale-colour":
        return shift_scale_augment(x, generator, colour=True, masks=masks, flip=flip)
    if augment == "shift-scale-erase":
        return shift_scale_augment(x, generator, erase=True, flip=flip)
    return x if masks is None else (x, masks)


def make_plan(cfg: TrainConfig, steps_per_epoch: int, batch_size: int, train_images: int, val_images: int,
              seconds_per_step: float | None, device: str = "cpu", precision: str = "float32",
              boxes_fitted: int = 0) -> Plan:
    """Steps: cfg.epochs passes, at least cfg.min_steps (a small data set still gets enough updates
    to learn), at most cfg.max_steps, and no more than fit cfg.time_budget_s with the evaluation
    after every epoch."""
    steps, limited_by = cfg.epochs * steps_per_epoch, "epochs"
    if cfg.min_steps and steps < cfg.min_steps:
        steps, limited_by = cfg.min_steps, "min_steps"
    if cfg.max_steps and steps > cfg.max_steps:
        steps, limited_by = cfg.max_steps, "max_steps"
    expected = stretched = None
    if seconds_per_step:
        # evaluation runs the forward pass only (about a third of a training step per image)
        eval_per_epoch = seconds_per_step / 3 * val_images / max(batch_size, 1)
        per_step = seconds_per_step + eval_per_epoch / steps_per_epoch
        final = 4 * eval_per_epoch  # the closing evaluation also draws boxes at every threshold
        budget = stretched_budget(cfg, steps * per_step + final)
        if budget != cfg.time_budget_s:
            stretched = round(budget, 1)
        if budget and steps * per_step + final > budget:
            steps = max(1, int((budget - final) / per_step))
            limited_by = "time_budget"
        expected = round(steps * per_step + final, 1)
    return Plan(steps, math.ceil(steps / steps_per_epoch), steps_per_epoch, batch_size, cfg.image_size, cfg.augment,
                round(seconds_per_step, 4) if seconds_per_step else None, expected, limited_by, device, precision,
                architecture(cfg), boxes_fitted, stretched)


def stretched_budget(cfg: TrainConfig, needed_s: float) -> float | None:
    """The seconds a plan that needs `needed_s` may take: cfg.time_budget_s, or, where that would cut
    the plan short and cfg.time_budget_max_s is set, as much more as it needs up to that. A model that
    would see each image only a few times in the budget is still learning when it ends (the auto
    recipe's real photographs: 80 of its 160 epochs in 8 minutes on 2 cores), and a longer run
    buys it more than a shorter one buys a model that has seen its images enough."""
    budget, most = cfg.time_budget_s, cfg.time_budget_max_s
    if not budget or needed_s <= budget or not most or most <= budget:
        return budget
    return min(most, needed_s)


def scale_to_budget(cfg: TrainConfig, plan: Plan, seconds_per_step: Callable[[TrainConfig], float]
                    ) -> tuple[TrainConfig, float | None]:
    """Where cfg.fill_budget is set and the budget holds SCALE_HEADROOM times the plan's steps, the
    run's config grown to use it, and its seconds per step: a wider network (CIFAR family, no widths
    given, no starting weights; each width timed with seconds_per_step(config)) as long as the budget
    still holds that headroom at its speed, then as many steps as fit (at most MAX_STEPS_SCALE times
    the plan's). From scratch on a GPU the same plan buys tens of times the CPU's steps, and the
    network that was right for 2 cores would leave most of them to a model too small to use them."""
    budget, spent = cfg.time_budget_s, plan.seconds_per_step
    if not (cfg.fill_budget and budget and spent and budget >= SCALE_HEADROOM * plan.steps * spent):
        return cfg, spent
    grown = cfg
    if is_cifar_model(cfg.architecture) and "widths" not in cfg.architecture_kwargs and not cfg.init:
        base = stage_widths(cfg)
        for factor in WIDTH_FACTORS:
            wider = cfg.replace(architecture_kwargs={**cfg.architecture_kwargs, "widths": [w * factor for w in base]})
            seconds = seconds_per_step(wider)
            if budget < SCALE_HEADROOM * plan.steps * seconds:
                break
            grown, spent = wider, seconds
    most = MAX_STEPS_SCALE * plan.steps
    # the budget is filled as it is (it held SCALE_HEADROOM times the plan): it does not stretch
    return grown.replace(epochs=max(grown.epochs, math.ceil(most / plan.steps_per_epoch)), max_steps=most,
                         time_budget_max_s=None), spent


def stage_widths(cfg: TrainConfig) -> list[int]:
    """The network's stage widths: the config's, else the family's own, read off a model built on the
    meta device (no memory)."""
    from models import create_model

    widths = cfg.architecture_kwargs.get("widths")
    if widths is None:
        with torch.device("meta"):
            net = create_model(cfg.architecture, num_classes=2, **cfg.architecture_kwargs)
        widths = [stage[-1].bn1.num_features for stage in net.stages]
    return list(widths)


def architecture(cfg: TrainConfig) -> str:
    """The network a run trains, with its stage widths: "resnet20 16/32/64"."""
    return f"{cfg.architecture} {'/'.join(str(w) for w in stage_widths(cfg))}"


def learning_at_the_end(val_top1: list[float]) -> dict | None:
    """Whether the model was still learning when its steps ran out, from the validation top-1 of
    each epoch: the mean of the last fifth of the epochs against the fifth before. A user whose
    model was still learning gains from a longer time budget; one on a plateau does not. None with
    fewer than LATE_MIN_EPOCHS epochs."""
    if len(val_top1) < LATE_MIN_EPOCHS:
        return None
    n = max(2, round(len(val_top1) * LATE_SHARE))
    gain = statistics.fmean(val_top1[-n:]) - statistics.fmean(val_top1[-2 * n:-n])
    return {"late_gain": round(gain, 4), "late_epochs": n, "still_learning": gain >= STILL_LEARNING_GAIN}
