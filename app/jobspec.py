"""The training-job contract: what a job is asked to do (JobSpec) and what it did (JobResult).

The job runner (app/jobs.py) writes a JobSpec as `spec.json` in the run folder and starts
`rescam run-job spec.json` in its own process; `training.job.run_job` trains, exports, measures
the live model on the same validation images, registers, applies the promotion gate and writes
a JobResult as `result.json`. `rescam train` and `rescam bootstrap --train` call the same function.
Both sides round-trip through these two classes, never through flags or hand-read JSON keys.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPEC_FILE, RESULT_FILE = "spec.json", "result.json"

# Training settings a job may set (TrainConfig fields). Where the data, the starting weights and the
# device come from is the runner's to decide (a job names a data set and `init`, never a path).
# "model" and "model_kwargs" are the architecture's older names, still accepted (training/config.py).
JOB_SETTINGS = frozenset({
    "architecture", "architecture_kwargs", "model", "model_kwargs", "image_size", "resize", "synthetic_train",
    "synthetic_val", "val_fraction", "mean", "std", "augment", "epochs", "max_steps", "min_steps", "time_budget_s",
    "time_budget_max_s",
    "fill_budget", "keep_best", "adapt", "batch_size", "lr", "momentum", "weight_decay", "nesterov", "schedule",
    "warmup_steps", "milestones", "label_smoothing", "cutmix", "ema", "flip", "test_time_flip", "test_time_zoom",
    "logit_norm", "outlier_exposure", "outliers", "box_loss", "freeze_bn", "shapes_start", "seed", "precision",
    "channels_last", "compile", "log_every",
})

# a job's `init` besides file:NAME and torchvision:NAME: where its weights begin. auto: as the recipe
# says (scratch today); shapes: the shipped shapes model's weights where the network is the same
STARTS = ("auto", "scratch", "shapes", "live")


class JobFileError(ValueError):
    """A spec or result file that cannot be read; the message says why."""


@dataclass(frozen=True)
class JobSpec:
    run_dir: str  # checkpoint, metrics.jsonl, log, export, spec.json and result.json go here
    data: str = "synthetic"  # synthetic | folder:PATH | cifar10:PATH | cifar100:PATH
    boxes_csv: str | None = None
    recipe: str | None = None  # None: demo for the synthetic set, auto for a user's data
    settings: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides
    init: str | None = None  # a weights file to start from (training.weights resolves names)
    resume: bool = False  # continue from the run folder's checkpoint
    export: bool = True  # False: stop after training (the checkpoint is the result)
    export_precision: str = "float32"  # float32 | int8 (kept only where it passes its parity check)
    registry: str | None = None  # None: register nothing
    model_name: str = "default"
    gate_margin: float = 0.02  # how far localization may drop below the live model's
    threads: int = 0  # torch CPU threads (0: torch's default)

    def to_json(self) -> str:
        return json.dumps({"format": "rescam.job/1", **dataclasses.asdict(self)}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        return cls(**_fields(cls, text))

    def save(self) -> Path:
        path = Path(self.run_dir) / SPEC_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, self.to_json())
        return path

    @classmethod
    def load(cls, path: str | Path) -> JobSpec:
        return cls.from_json(_read(path))


@dataclass(frozen=True)
class JobResult:
    checkpoint: str
    finished: bool  # False: the run stopped early (stop_after_epochs); a later resume continues
    seconds: float
    metrics: dict[str, Any]  # the trained model's validation figures (training.evaluate)
    labels: list[str]
    export: str | None = None  # the exported folder (model.onnx, card.json, weights.pth)
    version: int | None = None  # the registered version
    live_version: int | None = None  # the version that was live when the job measured it
    live_metrics: dict[str, Any] | None = None  # the live model's figures on the same images
    gate: dict[str, Any] | None = None  # the promotion decision (training.gate)
    precision: str | None = None  # the exported graph's arithmetic
    int8_refused: str | None = None  # why an int8 export that was asked for was not kept
    int8_near_ties: float | None = None  # the share of validation images an int8 version answers in float32

    def to_json(self) -> str:
        return json.dumps({"format": "rescam.job-result/1", **dataclasses.asdict(self)}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> JobResult:
        return cls(**_fields(cls, text))

    def save(self, run_dir: str | Path) -> Path:
        path = Path(run_dir) / RESULT_FILE
        _write_atomic(path, self.to_json())
        return path

    @classmethod
    def load(cls, path: str | Path) -> JobResult:
        return cls.from_json(_read(path))


def _read(path: str | Path) -> str:
    try:
        return Path(path).read_text()
    except OSError as e:
        raise JobFileError(f"{path}: {e.strerror or e}") from None


def _fields(cls: type, text: str) -> dict[str, Any]:
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise JobFileError(f"not JSON: {e}") from None
    if not isinstance(d, dict):
        raise JobFileError("a job file holds one JSON object")
    names = {f.name for f in dataclasses.fields(cls)}
    missing = {f.name for f in dataclasses.fields(cls)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING} - set(d)
    if missing:
        raise JobFileError(f"{cls.__name__} lacks {sorted(missing)}")
    return {k: v for k, v in d.items() if k in names}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
