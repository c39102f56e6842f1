"""The retrain loop's owner: data sets, the job queue and the runner that works it.

`create_job` checks a request against what is on disk (the data set, the starting weights, the
allowed settings) and names the model it trains a candidate for (`target_model`) before it is
queued; the runner trains it in another process and asks LiveModels to deploy what passed the
promotion gate.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

from models.names import TORCHVISION_WEIGHTS

from .datasets import DatasetError, Datasets, check_name
from .job_store import ACTIVE, JobStore
from .jobs import JobRunner
from .jobspec import JOB_SETTINGS, STARTS
from .live_models import LiveModels
from .model_manager import cancel
from .registry import RegistryError, check_model_name
from .schemas import JobRequest
from .settings import Settings

MAX_OPTIONS_BYTES = 16 * 1024


class JobRefused(Exception):
    """A job request that cannot run; `status` says which 4xx, the message why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class Retraining:
    def __init__(self, settings: Settings, models: LiveModels) -> None:
        self.settings, self.models = settings, models
        self.data_root = Path(settings.data_root)
        self.datasets = Datasets(self.data_root / "datasets")
        self.jobs = JobStore(self.data_root / "jobs.sqlite")
        self.runner = JobRunner(self.jobs, models.registry, settings.default_model, self.data_root,
                                settings.max_concurrent_jobs, settings.gate_margin, models.deploy,
                                processes=settings.train_processes)
        self.task: asyncio.Task | None = None

    def target_model(self, body: JobRequest) -> str:
        """The model a job trains a candidate for: the one it names; else the model whose live labels
        are the data set's classes; else (labels no model has) a new model named after the data set.
        The synthetic shapes train the default model."""
        if body.model is not None:
            return body.model
        if body.dataset == "synthetic":
            return self.models.default
        classes = set(self.datasets.describe(body.dataset)["classes"])
        registry = self.models.registry
        for name in self.models.known_names():
            live = registry.deployed(name)
            try:
                if live is not None and set(registry.card(name, live).labels) == classes:
                    return name
            except RegistryError:
                continue  # a broken version matches nothing
        return check_model_name(re.sub(r"[^A-Za-z0-9_-]", "-", body.dataset)[:64])

    def jobs_for(self, model: str) -> list[str]:
        """The jobs queued or training a candidate for `model`."""
        return [j["id"] for j in self.jobs.list(1000) if j["state"] in ("queued", *ACTIVE)
                and (j["request"].get("model") or self.models.default) == model]

    def create_job(self, body: JobRequest) -> dict[str, Any]:
        if body.dataset != "synthetic" and not self.datasets.path(body.dataset).is_dir():  # path() refuses bad names
            raise JobRefused(404, f"no dataset {body.dataset!r}; upload one with POST /v1/datasets")
        if body.architecture is not None and not re.fullmatch(r"(resnet|plain)\d{1,4}", body.architecture):
            raise JobRefused(422, f"unknown architecture {body.architecture!r}: resnet18, resnet50, resnet20, ...")
        self._check_init(body.init)
        options = body.options or {}
        unknown = sorted(set(options) - JOB_SETTINGS)
        if unknown:
            raise JobRefused(422, f"options may not set {unknown}; they may set {sorted(JOB_SETTINGS)}")
        if len(json.dumps(options)) > MAX_OPTIONS_BYTES:
            raise JobRefused(413, f"options are longer than {MAX_OPTIONS_BYTES} bytes of JSON")
        return self.jobs.create({**body.model_dump(), "model": self.target_model(body)}, self.data_root / "runs")

    def _check_init(self, init: str) -> None:
        if init in STARTS:
            return
        kind, _, name = init.partition(":")
        if kind == "torchvision":
            if name not in TORCHVISION_WEIGHTS:
                raise JobRefused(422, f"init {init!r}: torchvision has ImageNet weights for "
                                      f"{', '.join(TORCHVISION_WEIGHTS)}")
            return
        try:
            check_name(name, "weights file")
        except DatasetError as e:
            raise JobRefused(422, f"init must be {', '.join(STARTS)}, file:NAME or torchvision:NAME; "
                                  f"{e.message}") from None
        if kind != "file" or not (self.data_root / "weights" / name).is_file():
            raise JobRefused(404 if kind == "file" else 422,
                             f"init {init!r}: no such file in {self.data_root}/weights")

    async def start(self) -> None:
        if self.settings.run_jobs:
            self.task = asyncio.get_running_loop().create_task(self.runner.run())

    async def stop(self) -> None:
        await cancel(self.task)
        self.task = None
