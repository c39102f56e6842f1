"""The job runner: each queued job (app/job_store.py) runs in its own OS process (`rescam run-job`,
never inside an API worker), which trains, exports, registers and decides the gate
(training.job.run_job, through app.jobspec's JobSpec and JobResult); the runner deploys what the
gate passed. The registry gains a version only after training has finished well, so a failed or
cancelled job leaves it as it was. A service that stops interrupts its jobs (`resume` continues
from the last checkpoint); a trainer outlives a killed service (its own process group): the next
runner on the host adopts it, or promotes the result it wrote meanwhile, exactly once.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .curves import metrics_records
from .datasets import BOXES_FILE
from .deploy_policy import decide
from .job_store import ACTIVE, JobStore
from .jobspec import JobFileError, JobResult, JobSpec
from .registry import WEIGHTS_FILE, Registry

log = logging.getLogger("rescam.jobs")
def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def trainer_of(job: dict[str, Any]) -> bool:
    """Whether the job's recorded pid is still its trainer (a pid can be reused by another program:
    its command line must name the job)."""
    if not _alive(job["pid"]):
        return False
    try:  # the command line names the spec in the job's run folder, which is named by the job's id
        return job["id"].encode() in Path(f"/proc/{job['pid']}/cmdline").read_bytes()
    except OSError:  # no /proc (not Linux): the pid is alive, trust it
        return True


def result_written(job: dict[str, Any]) -> bool:
    """Whether the job's trainer wrote its result after the job started."""
    try:
        return (Path(job["run_dir"]) / "result.json").stat().st_mtime >= (job["started"] or 0)
    except FileNotFoundError:
        return False


# what a job shows of its trainer's epoch and done lines besides val_*: the figures, and whether
# the model was still learning when its steps ran out (training.plan.learning_at_the_end)
PROGRESS_FIGURES = ("top1", "gt_known_loc", "max_box_acc", "box_rule", "still_learning", "late_gain", "late_epochs")


def read_progress(run_dir: Path) -> dict[str, Any] | None:
    """The trainer's latest step and epoch lines from its metrics.jsonl."""
    latest: dict[str, Any] = {}
    for record in metrics_records(run_dir / "metrics.jsonl", last=50, keep_events=("plan",)):
        if record.get("event") == "step":
            latest.update({k: record.get(k) for k in ("epoch", "step", "total_steps", "loss", "lr",
                                                       "images_per_s", "eta_s")})
        elif record.get("event") in ("epoch", "done"):
            latest.update({k: v for k, v in record.items() if k.startswith("val_") or k in PROGRESS_FIGURES})
        elif record.get("event") == "plan":
            latest["plan"] = {k: v for k, v in record.items() if k not in ("event", "time", "eta_s", "total_steps")}
    return latest or None


class JobRunner:
    """Runs queued jobs, at most `slots` at once, each as `rescam run-job SPEC` in its own process
    group. `deploy(model, version, actor, reason, **audit)` makes a version live after its smoke
    test and raises with the reason when it cannot (app.live_models.LiveModels.deploy). A job trains
    a candidate for the model its request names (app.retraining names it), or `default_model` for a
    job queued before jobs named their model."""

    def __init__(self, store: JobStore, registry: Registry, default_model: str, data_root: Path, slots: int,
                 gate_margin: float, deploy: Callable[..., Any], worker: str | None = None,
                 poll_s: float = 0.5, processes: int = 1) -> None:
        self.store, self.registry, self.default_model = store, registry, default_model
        # absolute: a job's process runs in its own run folder
        self.data_root, self.slots = Path(data_root).resolve(), slots
        self.gate_margin, self.deploy = gate_margin, deploy
        self.worker = worker or os.uname().nodename
        self.poll_s, self.processes = poll_s, processes
        self.running: dict[str, subprocess.Popen] = {}
        self.adopted: dict[str, int] = {}  # trainers started by an earlier runner on this host, by pid

    def model_of(self, job: dict[str, Any]) -> str:
        return job["request"].get("model") or self.default_model

    def spec_for(self, job: dict[str, Any]) -> JobSpec:
        """The job's request as a JobSpec: its model, its data set's folder and boxes, its starting weights."""
        r, model = job["request"], self.model_of(job)
        settings = dict(r.get("options") or {})  # allow-listed when the job was created (app.retraining)
        for key, name in (("architecture", "architecture"), ("epochs", "epochs"), ("batch_size", "batch_size"),
                          ("lr", "lr"), ("image_size", "image_size"), ("seed", "seed"),
                          ("time_budget_s", "time_budget_s")):
            if r.get(key) is not None:
                settings[name] = r[key]
        data, boxes = "synthetic", None
        if r["dataset"] != "synthetic":
            folder = self.data_root / "datasets" / r["dataset"]
            data = f"folder:{folder}"
            boxes = str(folder / BOXES_FILE) if (folder / BOXES_FILE).is_file() else None
        init, live = None, self.registry.deployed(model)
        if r.get("init") in ("scratch", "shapes"):
            settings["shapes_start"] = r["init"] == "shapes"
        elif r.get("init") == "live" and live is not None:
            weights = self.registry.version_dir(model, live).resolve() / WEIGHTS_FILE
            init = str(weights) if weights.exists() else None
        elif str(r.get("init", "")).startswith("file:"):
            init = str(self.data_root / "weights" / r["init"].split(":", 1)[1])
        elif str(r.get("init", "")).startswith("torchvision:"):
            init = r["init"]  # found in the torch hub cache or downloaded by the trainer (training/weights.py)
        return JobSpec(run_dir=str(Path(job["run_dir"]).resolve()), data=data, boxes_csv=boxes,
                       recipe=r.get("recipe"), settings=settings, init=init, resume=bool(job["resume"]),
                       registry=str(self.registry.root.resolve()),
                       model_name=model, gate_margin=self.gate_margin,
                       export_precision=r.get("precision") or "float32")

    def command(self, spec_path: Path) -> list[str]:
        launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={self.processes}"] \
            if self.processes > 1 else [sys.executable]
        return [*launcher, "-m", "training.cli", "run-job", str(spec_path)]

    def start(self, job: dict[str, Any]) -> None:
        spec = self.spec_for(job)
        spec_path = spec.save()
        found = importlib.util.find_spec("training")
        if found is None or found.origin is None:
            self.store.update(job["id"], state="failed", finished=time.time(),
                              error="training is not installed here: pip install 'rescam[train]', or run jobs "
                                    "with `rescam worker` where it is")
            return
        package_root = str(Path(found.origin).resolve().parents[1])  # a checkout or site-packages
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        with open(Path(spec.run_dir) / "log.txt", "a") as logfile:
            proc = subprocess.Popen(self.command(spec_path), stdout=logfile, stderr=subprocess.STDOUT,
                                    cwd=spec.run_dir, env=env, start_new_session=True)
        self.running[job["id"]] = proc
        self.store.update(job["id"], pid=proc.pid)
        log.info("job %s started (pid %d)", job["id"], proc.pid)

    def stop_process(self, job_id: str) -> None:
        proc = self.running.get(job_id)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if job_id in self.adopted and _alive(self.adopted[job_id]):
            os.killpg(self.adopted[job_id], signal.SIGTERM)  # its own process group (start_new_session)

    def recover(self) -> None:
        """After a restart (or a crash), the jobs this host left running: a trainer still at work is
        adopted (watched, its slot counted, its result promoted when it ends); a trainer that ended
        unwatched with its result written is promoted now (its version was registered once, by the
        trainer); one that ended without a result is interrupted (resumable), or cancelled if it was
        being cancelled."""
        for job in self.store.list(1000):
            if job["state"] not in ACTIVE or job["worker"] != self.worker or job["id"] in self.running:
                continue
            if trainer_of(job):
                self.adopted[job["id"]] = job["pid"]
                log.info("job %s: adopted its running trainer (pid %d)", job["id"], job["pid"])
            elif job["state"] == "running" and result_written(job):
                self.finish(job["id"], 0)
            else:
                state = "cancelled" if job["state"] == "cancelling" else "interrupted"
                self.store.update(job["id"], state=state, finished=time.time(), pid=None)

    def finish(self, job_id: str, returncode: int | None) -> None:
        """Record how a job's trainer ended: `returncode` None for an adopted trainer (no exit status
        reaches a runner that did not start it: its result file decides)."""
        prior = self.store.begin_finish(job_id)
        if prior is None:
            return  # another runner ended it
        job = self.store.get(job_id)
        run_dir = Path(job["run_dir"])
        progress = read_progress(run_dir)
        if prior == "cancelling":
            self.store.update(job_id, state="cancelled", finished=time.time(), progress=progress)
            return
        if returncode is None and not result_written(job):
            returncode = -1
        if returncode:
            tail = (run_dir / "log.txt").read_text()[-2000:] if (run_dir / "log.txt").exists() else ""
            self.store.update(job_id, state="failed", finished=time.time(), progress=progress,
                              error=f"training exited with {returncode}: {tail}")
            return
        try:
            result = JobResult.load(run_dir / "result.json")
            summary = self.promote(job, result)
        except (JobFileError, KeyError, TypeError) as e:
            self.store.update(job_id, state="failed", finished=time.time(), progress=progress,
                              error=f"the job's result cannot be used: {e}")
            return
        self.store.update(job_id, state="succeeded", finished=time.time(), progress=progress, result=summary)

    def promote(self, job: dict[str, Any], result: JobResult) -> dict[str, Any]:
        """Deploy the job's registered version when the gate passed (or the job forced it and the
        gate allows force); what happened and why, for the job's record."""
        decision, request = result.gate, job["request"]
        deployed, why = False, None
        if result.version is None or decision is None:
            why = "the job registered no version"
        elif not request.get("deploy", True):
            why = "the job asked not to deploy"
        else:
            policy = decide("always" if request.get("force") else "gate", decision, result.live_version is None)
            if policy.deploy:
                try:
                    self.deploy(self.model_of(job), result.version, "job", policy.reason, via="POST /v1/jobs",
                                job=job["id"], gate=decision, forced=policy.forced)
                    deployed = True
                except Exception as e:  # noqa: BLE001 - the version stays registered; the live one keeps serving
                    why = str(e)
            else:
                why = policy.reason
        return {"model": self.model_of(job), "version": result.version, "deployed": deployed,
                "not_deployed_because": why, "gate": decision,
                "metrics": result.metrics, "live_metrics": result.live_metrics, "precision": result.precision,
                **({"int8_refused": result.int8_refused} if result.int8_refused else {}),
                **({"int8_near_ties": result.int8_near_ties} if result.int8_near_ties is not None else {})}

    def tick(self) -> None:
        for job_id, proc in [*self.running.items(), *self.adopted.items()]:
            job = self.store.get(job_id)
            if job_id in self.adopted and job["state"] not in ACTIVE:
                del self.adopted[job_id]  # another worker of this host ended it
                continue
            if job["state"] == "cancelling":
                self.stop_process(job_id)
            alive = proc.poll() is None if isinstance(proc, subprocess.Popen) else trainer_of(job)
            if alive:
                self.store.update(job_id, progress=read_progress(Path(job["run_dir"])))
                continue
            self.running.pop(job_id, None)
            self.adopted.pop(job_id, None)
            self.finish(job_id, proc.returncode if isinstance(proc, subprocess.Popen) else None)
        while len(self.running) + len(self.adopted) < self.slots:
            job = self.store.claim(self.worker)
            if job is None:
                break
            self.start(job)

    async def run(self) -> None:
        self.recover()
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    await loop.run_in_executor(None, self.tick)
                except Exception:  # noqa: BLE001
                    log.exception("job runner tick failed")
                await asyncio.sleep(self.poll_s)
        finally:
            for job_id in list(self.running):  # a stopping service interrupts its jobs
                self.stop_process(job_id)
                state = "cancelled" if self.store.get(job_id)["state"] == "cancelling" else "interrupted"
                self.store.update(job_id, state=state, finished=time.time(), pid=None)
            self.running.clear()
