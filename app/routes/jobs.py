"""Retrain jobs: start, watch, read logs, cancel, resume (admin token required)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response

from ..curves import read_curves
from ..schemas import Curves, ErrorAnswer, JobAnswer, JobList, JobRequest
from .deps import AdminDep, RetrainingDep

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses={s: {"model": ErrorAnswer} for s in (401, 403, 404)})
PRIVATE = ("pid", "worker", "run_dir")  # where and how a job runs is the server's business


def view(job: dict[str, Any]) -> JobAnswer:
    return JobAnswer(**{k: v for k, v in job.items() if k not in PRIVATE})


def get_job(retraining: RetrainingDep, job_id: str) -> dict[str, Any]:
    job = retraining.jobs.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r}")
    return job


@router.post("", status_code=202, response_model=JobAnswer, responses={s: {"model": ErrorAnswer} for s in (413, 422)})
def create_job(body: JobRequest, retraining: RetrainingDep, actor: AdminDep) -> JobAnswer:
    return view(retraining.create_job(body))


@router.get("", response_model=JobList)
def list_jobs(retraining: RetrainingDep, actor: AdminDep) -> JobList:
    return JobList(jobs=[view(j) for j in retraining.jobs.list()])


@router.get("/{job_id}", response_model=JobAnswer)
def show_job(job_id: str, retraining: RetrainingDep, actor: AdminDep) -> JobAnswer:
    return view(get_job(retraining, job_id))


@router.get("/{job_id}/logs", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def job_logs(job_id: str, retraining: RetrainingDep, actor: AdminDep,
             tail: Annotated[int, Query(ge=0, le=1_000_000, description="the last this many characters")] = 20_000
             ) -> Response:
    path = Path(get_job(retraining, job_id)["run_dir"]) / "log.txt"
    text = path.read_text(errors="replace")[-tail:] if path.exists() and tail else ""
    return Response(text, media_type="text/plain")


@router.get("/{job_id}/curves", response_model=Curves)
def job_curves(job_id: str, retraining: RetrainingDep, actor: AdminDep) -> dict[str, list]:
    """Training loss and top-1 at each logged step, validation loss and top-1 at each epoch's end,
    so far: the page draws them while the job runs."""
    return read_curves(Path(get_job(retraining, job_id)["run_dir"]) / "metrics.jsonl")


@router.delete("/{job_id}", response_model=JobAnswer, responses={409: {"model": ErrorAnswer}})
def cancel_job(job_id: str, retraining: RetrainingDep, actor: AdminDep) -> JobAnswer:
    job = get_job(retraining, job_id)
    if job["state"] not in ("queued", "running"):
        raise HTTPException(409, f"job {job_id} is {job['state']}; only queued or running jobs can be cancelled")
    return view(retraining.jobs.cancel(job_id))


@router.post("/{job_id}/resume", status_code=202, response_model=JobAnswer, responses={409: {"model": ErrorAnswer}})
def resume_job(job_id: str, retraining: RetrainingDep, actor: AdminDep) -> JobAnswer:
    job = get_job(retraining, job_id)
    if not retraining.jobs.requeue(job_id):
        raise HTTPException(409, f"job {job_id} is {job['state']}; only interrupted jobs can be resumed")
    return view(retraining.jobs.get(job_id))
