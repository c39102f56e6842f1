"""One dataclass configures a training run; named recipes are sets of overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@dataclass
class TrainConfig:
    # what to train: the network (models/registry.py) and its options (widths, stem_stride, ...);
    # "model" is the registry's word for a served name (README, "Many models")
    architecture: str = "resnet8"
    architecture_kwargs: dict[str, Any] = field(default_factory=dict)
    data: str = "synthetic"  # synthetic | folder:PATH | cifar10:PATH | cifar100:PATH
    boxes_csv: str | None = None  # path,label,x0,y0,x1,y1 for localization on image folders
    val_fraction: float = 0.1  # for folders without a val/ subfolder
    image_size: int = 48  # the network's input side, pixels; 0: from the images (training/plan.py)
    resize: int | None = None  # shorter side before the centre crop at evaluation; None = image_size
    synthetic_train: int = 8000  # images
    synthetic_val: int = 1000  # images
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    # none | cifar (4-px pad, crop, flip) | imagenet (scale [256, 480], crop, flip) | shift-scale (zoom,
    # shift, contrast: for small data sets of any kind) | shift-scale-colour (also channels permuted and
    # images inverted: where colour is a nuisance; `auto` chooses it when colour does not tell classes apart)
    augment: str = "none"
    # shift-scale*: half of the images mirrored left to right as well (photographs of things; not for
    # glyphs such as digits and text, which mirroring changes)
    flip: bool = False
    # the exported graph averages each image with its mirror (twice the inference); None: on where
    # the validation images say it pays (training/export.py)
    test_time_flip: bool | None = False
    # the exported graph takes a second look around the object its CAM finds (twice the inference);
    # None: on where the validation images say it pays (training/zoom.py)
    test_time_zoom: bool | None = False
    # optimisation
    epochs: int = 6
    max_steps: int | None = None  # stop after this many optimizer steps (the paper counts iterations)
    min_steps: int = 0  # at least this many optimizer steps, however small the data set
    time_budget_s: float | None = None  # steps are cut so that training and evaluation fit, seconds
    # where time_budget_s would cut a plan short of its epochs, the budget stretches as far as the
    # plan needs, up to this many seconds (training/plan.py::stretched_budget); None: it never stretches
    time_budget_max_s: float | None = None
    keep_best: bool = False  # the final model is the epoch with the best validation top-1
    adapt: bool = False  # image size (when 0) and the CIFAR stem's stride chosen from the data
    # where the time budget holds several times the planned steps (a GPU), a wider network and the
    # steps that fill the budget (training/plan.py::scale_to_budget); off once a user names the steps
    fill_budget: bool = False
    batch_size: int = 128  # global, across all processes
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "cosine"  # cosine | step | plateau
    warmup_steps: int = 0
    milestones: tuple[int, ...] = ()  # steps at which "step" divides the lr by 10
    label_smoothing: float = 0.0
    cutmix: float = 0.0  # the share of batches (without box masks) trained on CutMix images (train.cutmix)
    # an exponential moving average of the weights and BatchNorm statistics (Polyak averaging),
    # evaluated, kept and exported instead of the last weights; its decay, ramped up from the first
    # steps as (1 + n) / (10 + n) so the average forgets the random start (0 = off)
    ema: float = 0.0
    # open world (BENCHMARKS.md, "Open world"): LogitNorm's temperature (Wei et al. 2022: the loss
    # sees logits / (tau * |logits|); 0 = off) and outlier exposure's weight (Hendrycks et al. 2019:
    # uniform scores on made-up outliers, a quarter of each batch; 0 = off) and where the outliers come
    # from (training/outliers.py: tiles of the batch's images, the synthetic shapes, or both)
    logit_norm: float = 0.0
    outlier_exposure: float = 0.0
    outliers: str = "tiles"
    # boxes (BENCHMARKS.md, "Boxes from boxes"): the weight of training/losses.py's box-fit loss on
    # the images that have a box (0 = off; a data set without boxes trains as before)
    box_loss: float = 0.0
    freeze_bn: bool = False  # BatchNorm keeps its running statistics (small per-device batches)
    # machinery
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # bf16 autocast: "auto" takes it on CUDA, and on a CPU when the plan's probe measures it at
    # least CPU_BF16_MIN_GAIN faster (CPUs with native bf16: 1.8x on 2 AVX-512 cores; an AVX2 CPU
    # emulates it and stays float32); a run with no probe (no time budget, no `adapt`) stays float32 there
    precision: str = "auto"  # auto | float32 | bfloat16
    channels_last: bool = True
    compile: bool = False
    workers: int = 0  # DataLoader workers for image folders
    init: str | None = None  # torchvision-format state_dict to start from
    # without `init`: start from the shipped shapes model's weights (all but the head) where the
    # network is the same (training.weights.start_from_shapes; a job's "init": "shapes")
    shapes_start: bool = False
    log_every: int = 10  # steps between metric lines
    stop_after_epochs: int | None = None  # end this invocation early (a later --resume continues)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: (tuple(v) if isinstance(v, list) else v) for k, v in current_names(d).items() if k in known}
        return cls(**d)


# settings' older names, still read from old run configs, job specs, `--set` and job options
RENAMED = {"model": "architecture", "model_kwargs": "architecture_kwargs"}


def current_names(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings under today's names; where both names are given, today's wins."""
    out = {RENAMED.get(k, k): v for k, v in settings.items() if k in RENAMED}
    out.update({k: v for k, v in settings.items() if k not in RENAMED})
    return out


RECIPES: dict[str, dict[str, Any]] = {
    # The default for a user's data (`--data folder:...`, `POST /v1/jobs`): the image size from the
    # images, at least 1,500 optimizer steps (a 1,500-image set is 11 steps an epoch: one epoch
    # learns nothing; 1,000 left the digits 1.4 points lower, BENCHMARKS.md), zoom/shift/contrast
    # augmentation (small sets overfit without it), colours permuted and inverted too where they do
    # not tell the classes apart (training/plan.py), the best epoch kept, 8 minutes of training on
    # whatever machine runs it, stretched up to 16 where 8 would show each image fewer than 160 times
    # (both real sets were still learning there; on 2 CPU cores real photographs at 96 px got 80 of the
    # 160 passes in 8 minutes, and twice the steps gave +3 to +4 points of top-1, BENCHMARKS.md), and,
    # on the images that have a box, the CAM fitted to it (box_loss 12: on the objects set boxes that
    # fit 34% at 0 -> 69% at 3 -> 85-86% at 12, top-1 +2 to +3 points over 3, the digits' top-1 too;
    # BENCHMARKS.md, "A box-fit weight of 12"). It starts from scratch: the shipped shapes model's
    # weights as a start (shapes_start) moved the boxes +2.8 and the labels -1.0 / +1.9 points over
    # three seeds, inside their spread (BENCHMARKS.md, "The shapes model's weights as a start").
    "auto": dict(architecture="resnet20", data="synthetic", image_size=0, adapt=True, epochs=160, min_steps=1500,
                 time_budget_s=480, time_budget_max_s=960, batch_size=128, lr=0.1, nesterov=True, weight_decay=5e-4,
                 schedule="cosine", warmup_steps=50, augment="shift-scale", keep_best=True, box_loss=12.0,
                 test_time_flip=None, test_time_zoom=None, fill_budget=True),
    # The default model the repository ships (app/default_model): about 4 minutes on 2 CPU cores
    # (BENCHMARKS.md). resnet20 with a strided stem sees 64x64 images at the cost of 32x32 ones
    # (small shapes need the pixels; its 8x8 CAM localizes better than a 16x16 one); one pass over
    # 100k unique synthetic images beats several passes over fewer (36k: top-1 94%, MaxBoxAcc 50%;
    # 100k: 99%, 62%). Training sits on a plateau near ln(8) before it finds the shapes; batch 128
    # leaves it sooner and more reliably than batch 64. Every image has its box, and the box-fit loss
    # fits the CAM to it: MaxBoxAcc 62.1% (no loss) -> 89.5% (weight 1) -> 99.6% (weight 12), top-1 99.3%
    # -> 99.5% -> 99.8% on 5,000 validation images (BENCHMARKS.md, "Boxes from boxes", "A box-fit weight of 12").
    # 5,000 validation images: the open-world threshold and the temperature are fitted on them, and
    # drawing them costs seconds (on 1,000 the threshold's share of new shapes called unknown moved
    # by 0.7 points from draw to draw; the shipped model's came out at 5.8%, BENCHMARKS.md).
    "demo": dict(architecture="resnet20", architecture_kwargs={"stem_stride": 2}, data="synthetic", image_size=64,
                 synthetic_train=100_000, synthetic_val=5000, epochs=1, batch_size=128, lr=0.1, nesterov=True,
                 weight_decay=5e-4, schedule="cosine", warmup_steps=56, box_loss=12.0),
    # Sec. 4.2: 45k/5k split, batch 128, lr 0.1 / 10 at 32k and 48k iterations, stop at 64k,
    # weight decay 1e-4, momentum 0.9, 4-pixel pad + 32x32 crop + flip.
    "paper-cifar": dict(architecture="resnet20", image_size=32, batch_size=128, lr=0.1, momentum=0.9,
                        weight_decay=1e-4, schedule="step", milestones=(32_000, 48_000), max_steps=64_000,
                        epochs=200, augment="cifar", mean=CIFAR_MEAN, std=CIFAR_STD, val_fraction=0.1),
    # Sec. 3.4: batch 256, lr 0.1 / 10 when the error plateaus, weight decay 1e-4, momentum 0.9,
    # shorter side sampled in [256, 480], 224 crop + flip; up to 60e4 iterations.
    "paper-imagenet": dict(architecture="resnet50", image_size=224, resize=256, batch_size=256, lr=0.1,
                           momentum=0.9, weight_decay=1e-4, schedule="plateau", max_steps=600_000,
                           epochs=120, augment="imagenet", mean=IMAGENET_MEAN, std=IMAGENET_STD),
}


def recipe(name: str, **overrides: Any) -> TrainConfig:
    try:
        base = RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}") from None
    overrides = current_names(overrides)
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise ValueError(f"unknown training settings {unknown}; TrainConfig (training/config.py) has none of them")
    base = dict(base)
    if (overrides.get("architecture", base.get("architecture")) != base.get("architecture")
            and "architecture_kwargs" not in overrides):
        base.pop("architecture_kwargs", None)  # the recipe's network options belong to the recipe's network
    return TrainConfig(**{**base, **overrides})
