"""Retrain jobs: start, watch, read logs, cancel, resume."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel, Field

from ..datasets import DatasetError, check_name
from .deps import AdminDep, ServiceDep

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


class JobRequest(BaseModel):
    dataset: str = Field(description="a data set under the server's data root, or 'synthetic'")
    architecture: str | None = Field(None, description="e.g. resnet20, resnet50; the recipe's by default")
    recipe: Literal["auto", "demo", "paper-cifar", "paper-imagenet"] | None = Field(
        None, description="default: auto for a data set (steps, image size and augmentation chosen from the data, "
                          "the best epoch kept), demo for 'synthetic'")
    epochs: int | None = Field(None, ge=1, le=10_000)
    batch_size: int | None = Field(None, ge=1, le=65_536)
    lr: float | None = Field(None, gt=0, le=10)
    image_size: int | None = Field(None, ge=8, le=1024)
    seed: int | None = None
    time_budget_s: float | None = Field(None, gt=0, le=7 * 24 * 3600,
                                        description="bound on the training time; auto's default is 480 s")
    init: str = Field("scratch", description="scratch | live (the live version's weights) | file:NAME (a "
                                             "torchvision-format state_dict in the data root's weights/ folder)")
    deploy: bool = Field(True, description="deploy when done, if it passes the promotion gate")
    force: bool = Field(False, description="deploy even if it fails the gate (recorded in the audit log)")
    options: dict[str, Any] | None = Field(None, description="other training settings, e.g. synthetic_train")


def _job_view(job: dict) -> dict:
    return {k: v for k, v in job.items() if k not in ("pid", "worker", "run_dir")}


def _get(service, job_id: str) -> dict:
    job = service.jobs.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r}")
    return job


@router.post("", status_code=202)
def create_job(body: JobRequest, service: ServiceDep, actor: AdminDep) -> dict:
    if body.dataset != "synthetic":
        if not service.datasets.path(body.dataset).is_dir():  # path() refuses unsafe names (422)
            raise HTTPException(404, f"no dataset {body.dataset!r}; upload one with POST /v1/datasets")
    if body.architecture is not None and not re.fullmatch(r"(resnet|plain)\d{1,4}", body.architecture):
        raise HTTPException(422, f"unknown architecture {body.architecture!r}: resnet18, resnet50, resnet20, ...")
    if body.init not in ("scratch", "live"):
        kind, _, name = body.init.partition(":")
        try:
            check_name(name, "weights file")
        except DatasetError as e:
            raise HTTPException(422, f"init must be scratch, live or file:NAME; {e.message}") from None
        if kind != "file" or not (Path(service.settings.data_root) / "weights" / name).is_file():
            raise HTTPException(404 if kind == "file" else 422,
                                f"init {body.init!r}: no such file in {service.settings.data_root}/weights")
    forbidden = {"init", "data", "boxes_csv", "device"} & set(body.options or {})
    if forbidden:
        raise HTTPException(422, f"options may not set {sorted(forbidden)}")
    job = service.jobs.create(body.model_dump(), Path(service.settings.data_root) / "runs")
    return _job_view(job)


@router.get("")
def list_jobs(service: ServiceDep, actor: AdminDep) -> dict:
    return {"jobs": [_job_view(j) for j in service.jobs.list()]}


@router.get("/{job_id}")
def show_job(job_id: str, service: ServiceDep, actor: AdminDep) -> dict:
    return _job_view(_get(service, job_id))


@router.get("/{job_id}/logs")
def job_logs(job_id: str, service: ServiceDep, actor: AdminDep, tail: int = 20_000) -> Response:
    path = Path(_get(service, job_id)["run_dir"]) / "log.txt"
    text = path.read_text(errors="replace")[-tail:] if path.exists() else ""
    return Response(text, media_type="text/plain")


@router.delete("/{job_id}")
def cancel_job(job_id: str, service: ServiceDep, actor: AdminDep) -> dict:
    job = _get(service, job_id)
    if job["state"] not in ("queued", "running"):
        raise HTTPException(409, f"job {job_id} is {job['state']}; only queued or running jobs can be cancelled")
    return _job_view(service.jobs.cancel(job_id))


@router.post("/{job_id}/resume", status_code=202)
def resume_job(job_id: str, service: ServiceDep, actor: AdminDep) -> dict:
    job = _get(service, job_id)
    if not service.jobs.requeue(job_id):
        raise HTTPException(409, f"job {job_id} is {job['state']}; only interrupted jobs can be resumed")
    return _job_view(service.jobs.get(job_id))
