"""One training job, start to end: train -> export (with its report) -> measure the live model on
the same images -> register -> the promotion gate. `rescam train`, `rescam bootstrap --train` and the service's job
runner (through `rescam run-job SPEC`) all run jobs here; deploying is the caller's."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import torch

from app.card import ModelCard
from app.jobspec import JobResult, JobSpec
from app.registry import CARD_FILE, GATE_FILE, Registry

from .config import IMAGENET_MEAN, IMAGENET_STD, TrainConfig, current_names, recipe
from .weights import InitError, resolve

log = logging.getLogger(__name__)


# fine-tuning torchvision's ImageNet weights: its mean and std, a tenth of the scratch learning
# rate, and inputs of at least 160 px (its stem divides by 32: a 5x5 CAM; 96 px would give 3x3)
IMAGENET_PLAN = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "lr": 0.01, "image_size": 160, "architecture_kwargs": {}}


def default_recipe(data: str | None) -> str:
    """The demo recipe for the embedded synthetic set (the default model), else `auto`: a user's
    data decide the image size and the number of steps (training/plan.py)."""
    return "demo" if data in (None, "synthetic") else "auto"


def config_for(spec: JobSpec) -> TrainConfig:
    """The run's TrainConfig: the recipe, then the spec's settings. Epochs a user gives are what
    runs (the auto recipe's step floor is for when the data decide); ImageNet starting weights bring
    ImageNet's mean and std unless the settings name others."""
    overrides = {**current_names(spec.settings), "data": spec.data}
    if spec.boxes_csv:
        overrides["boxes_csv"] = spec.boxes_csv
    if "epochs" in spec.settings:
        overrides.setdefault("min_steps", 0)
    if {"epochs", "min_steps", "max_steps"} & set(spec.settings):
        overrides.setdefault("fill_budget", False)  # the steps a user names are the steps that run
    if {"epochs", "min_steps", "max_steps", "time_budget_s"} & set(spec.settings):
        overrides.setdefault("time_budget_max_s", None)  # and a budget a user names is the budget
    if spec.init:
        overrides["init"], imagenet = resolve(spec.init)
        if imagenet:  # the plan adapts to torchvision's ImageNet weights (README, "Starting weights")
            name = spec.init.removeprefix("torchvision:")
            overrides.setdefault("architecture", name)
            if overrides["architecture"] != name:
                raise InitError(f"--init {spec.init} holds {name}'s weights, not {overrides['architecture']}'s: "
                                "weights of another architecture")
            for key, value in IMAGENET_PLAN.items():
                overrides.setdefault(key, value)
    return recipe(spec.recipe or default_recipe(spec.data), **overrides)


def run_job(spec: JobSpec) -> JobResult | None:
    """Run the job; its JobResult (also written to run_dir/result.json) on rank 0, None elsewhere."""
    from .compare import evaluate_onnx
    from .export import SERVED_FIGURES, export_checkpoint
    from .gate import gate
    from .report import Baseline, write_report
    from .train import METRICS, train

    cfg = config_for(spec)
    if spec.threads and not torch.cuda.is_available():
        torch.set_num_threads(spec.threads)
    run_dir = Path(spec.run_dir)
    start = time.time()
    checkpoint = train(cfg, run_dir, resume=spec.resume)
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    metrics = {k: v for k, v in ckpt.get("metrics", {}).items() if k != "confusion"}
    result = JobResult(str(checkpoint), bool(ckpt.get("finished")), round(time.time() - start, 1), metrics,
                       list(ckpt["classes"]))
    if not result.finished or not spec.export:
        return _saved(result, run_dir)
    export = export_checkpoint(checkpoint, run_dir / "export", spec.export_precision, int8_fallback=True)
    card = json.loads((export / CARD_FILE).read_text())
    ood = card.get("ood") or {}
    metrics["ood_auroc"], metrics["ood_battery"] = ood.get("battery_auroc"), ood.get("battery")
    if "top1_one_pass" in card["metrics"]:  # the export measured the graph as it serves (mirror, second look)
        metrics.update({k: v for k, v in card["metrics"].items() if k in (*SERVED_FIGURES, "top1_one_pass")})
    version = live = live_metrics = baseline = None
    if spec.registry is not None:
        registry = Registry(spec.registry)
        live = registry.deployed(spec.model_name)
        if live is not None:  # judged on this run's own validation images, through ONNX Runtime
            live_dir = registry.version_dir(spec.model_name, live)
            live_metrics = evaluate_onnx(live_dir, cfg)
            baseline = Baseline(f"v{live} (live)", live_metrics, json.loads((live_dir / CARD_FILE).read_text()))
    write_report(export, cfg, run_dir / METRICS, baseline=baseline)  # registered with the version: the page shows it
    decision = gate(metrics, live_metrics, spec.gate_margin, result.labels)
    (export / GATE_FILE).write_text(json.dumps(decision, indent=2) + "\n")  # registered with the version
    if spec.registry is not None:
        version = registry.register(spec.model_name, export)
    return _saved(dataclasses.replace(result, seconds=round(time.time() - start, 1), export=str(export),
                                      version=version, live_version=live, live_metrics=live_metrics, gate=decision,
                                      precision=card.get("precision"),
                                      int8_refused=(card.get("quantization") or {}).get("refused"),
                                      int8_near_ties=near_tie_share(card)),
                  run_dir)


def near_tie_share(card: dict) -> float | None:
    """The share of validation images an int8 version answers in float32 (training/quantize.py)."""
    near = ModelCard.from_dict(card).near_ties
    return None if near is None else near.get("share")


def _saved(result: JobResult, run_dir: Path) -> JobResult:
    result.save(run_dir)
    return result
