"""Retrain jobs: their state in SQLite, and a runner that trains each job in its own OS process
(`rescam train`, never inside an API worker), registers the result and applies the promotion gate.

States: queued -> running -> succeeded | failed | cancelled | interrupted (the service stopped
while it ran; `resume` queues it again from its last checkpoint). The registry changes only after
the training process has finished well, so a failed or cancelled job leaves it as it was.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .datasets import BOXES_FILE
from .registry import WEIGHTS_FILE, Registry

log = logging.getLogger("rescam.jobs")
CANCEL_REQUESTED = "cancel requested"  # the error a running job carries until its process is stopped
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, state TEXT NOT NULL, created REAL NOT NULL, started REAL, finished REAL,
    request TEXT NOT NULL, run_dir TEXT NOT NULL, pid INTEGER, worker TEXT, resume INTEGER DEFAULT 0,
    progress TEXT, result TEXT, error TEXT
)"""


class JobStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        return db

    @staticmethod
    def _row(row: sqlite3.Row | None) -> dict[str, Any] | None:
        if row is None:
            return None
        job = dict(row)
        for key in ("request", "progress", "result"):
            job[key] = json.loads(job[key]) if job[key] else None
        job["resume"] = bool(job["resume"])
        return job

    def create(self, request: dict[str, Any], runs_root: Path) -> dict[str, Any]:
        job_id = uuid.uuid4().hex[:12]
        with self._db() as db:
            db.execute("INSERT INTO jobs (id, state, created, request, run_dir) VALUES (?, 'queued', ?, ?, ?)",
                       (job_id, time.time(), json.dumps(request), str(runs_root / job_id)))
        return self.get(job_id)

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._db() as db:
            return self._row(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def list(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM jobs ORDER BY created DESC LIMIT ?", (limit,)).fetchall()
        return [self._row(r) for r in rows]

    def update(self, job_id: str, **fields: Any) -> None:
        for key in ("progress", "result"):
            if key in fields and fields[key] is not None:
                fields[key] = json.dumps(fields[key])
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._db() as db:
            db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*fields.values(), job_id))

    def claim(self, worker: str) -> dict[str, Any] | None:
        """Take the oldest queued job for this worker; several workers never take the same one."""
        with self._db() as db:
            row = db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY created LIMIT 1").fetchone()
            if row is None:
                return None
            taken = db.execute("UPDATE jobs SET state = 'running', started = ?, worker = ? "
                               "WHERE id = ? AND state = 'queued'", (time.time(), worker, row["id"])).rowcount
        return self.get(row["id"]) if taken else None

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        with self._db() as db:
            db.execute("UPDATE jobs SET state = 'cancelled', finished = ? WHERE id = ? AND state = 'queued'",
                       (time.time(), job_id))
            db.execute("UPDATE jobs SET error = ? WHERE id = ? AND state = 'running'", (CANCEL_REQUESTED, job_id))
        return self.get(job_id)

    def mark_interrupted(self, worker: str) -> int:
        """Jobs of this worker (host) marked running whose training process is gone: the service
        stopped while they ran."""
        gone = [job["id"] for job in self.list(1000)
                if job["state"] == "running" and job["worker"] == worker and not _alive(job["pid"])]
        for job_id in gone:
            self.update(job_id, state="interrupted", finished=time.time(), pid=None)
        return len(gone)

    def requeue(self, job_id: str) -> bool:
        with self._db() as db:
            return db.execute("UPDATE jobs SET state = 'queued', resume = 1, error = NULL, finished = NULL "
                              "WHERE id = ? AND state = 'interrupted'", (job_id,)).rowcount == 1


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def read_progress(run_dir: Path) -> dict[str, Any] | None:
    """The trainer's latest step and epoch lines from its metrics.jsonl."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return None
    latest: dict[str, Any] = {}
    for line in lines[-50:]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written
        if record.get("event") == "step":
            latest.update({k: record.get(k) for k in ("epoch", "step", "total_steps", "loss", "lr",
                                                       "images_per_s", "eta_s")})
        elif record.get("event") in ("epoch", "done"):
            latest.update({k: v for k, v in record.items()
                           if k.startswith("val_") or k in ("top1", "gt_known_loc", "max_box_acc", "box_rule")})
        elif record.get("event") == "plan":
            latest["plan"] = {k: v for k, v in record.items() if k not in ("event", "time", "eta_s", "total_steps")}
    return latest or None


FLOOR_P_VALUE = 1e-3  # top-1 must beat chance at this one-sided binomial significance


def above_chance(top1: float, images: int, chance: float) -> tuple[bool, float]:
    """Whether `top1` on `images` validation images clears `chance` (the rate of always answering
    the most common class) by a statistically clear margin: the one-sided binomial p-value of so
    many right answers from a model at chance is below FLOOR_P_VALUE."""
    from scipy.stats import binom

    if images <= 0:
        return False, 1.0
    p_value = float(binom.sf(round(top1 * images) - 1, images, min(max(chance, 1e-9), 1.0)))
    return p_value < FLOOR_P_VALUE, p_value


def gate(new: dict[str, Any], live: dict[str, Any] | None, margin: float, new_labels: list[str] | None = None,
         ) -> dict[str, Any]:
    """The promotion decision for a retrained model, both models scored by one code path (ONNX
    Runtime, each with its card's preprocessing and box rule) on the same validation images:

    - `deployable` is False, even with force, for a run that diverged or whose top-1 does not
      clear chance by a clear margin: such a model must never serve;
    - `passed` (deploy without force) also needs the live model's labels (other labels make a new
      task, deployed only when forced), top-1 at least the live model's, and, where both have
      boxes, localization at each model's own rule no more than `margin` below the live one's."""
    blockers, reasons = [], []
    chance = new.get("chance_top1")
    if new.get("diverged") or not _finite(new.get("loss", 0.0)):
        blockers.append(f"training diverged (validation loss {new.get('loss')})")
    if chance is not None:
        clear, p_value = above_chance(new["top1"], new.get("images", 0), chance)
        if not clear:
            blockers.append(f"top-1 {new['top1']:.4f} does not clear chance ({chance:.4f}, always the most common "
                            f"class) on {new.get('images', 0)} validation images (p = {p_value:.2g})")
    shown = ("top1", "gt_known_loc", "box_rule", "images_with_boxes")
    decision = {"new": {k: new.get(k) for k in (*shown, "chance_top1")},
                "live": {k: live.get(k) for k in shown} if live else None}
    if live and new_labels is not None and live.get("labels") is not None and \
            set(new_labels) != set(live["labels"]):
        added, gone = sorted(set(new_labels) - set(live["labels"])), sorted(set(live["labels"]) - set(new_labels))
        reasons.append(f"a new task: its labels differ from the live model's (new {added[:5]}, missing {gone[:5]}); "
                       "deploy it with force")
    elif live:
        if new["top1"] < live["top1"]:
            reasons.append(f"top-1 {new['top1']:.4f} < live {live['top1']:.4f}")
        if new.get("images_with_boxes") and live.get("images_with_boxes") and "gt_known_loc" in new \
                and "gt_known_loc" in live and new["gt_known_loc"] < live["gt_known_loc"] - margin:
            reasons.append(f"localization (GT-known at {new.get('box_rule')}) {new['gt_known_loc']:.4f} < live "
                           f"{live['gt_known_loc']:.4f} (at {live.get('box_rule')}) - {margin}")
    passed = not blockers and not reasons
    if passed:
        reason = "as good as the live model" if live else "no live model to compare with; clears chance"
    else:
        reason = "; ".join(blockers + reasons)
    return {**decision, "passed": passed, "deployable": not blockers, "reason": reason}


def _finite(x: Any) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


class JobRunner:
    """Runs queued jobs, at most `slots` at once. `deploy(version, audit)` makes a version live
    after its smoke test and raises with the reason when it cannot."""

    def __init__(self, store: JobStore, registry: Registry, model_name: str, data_root: Path, slots: int,
                 gate_margin: float, deploy: Callable[[int, dict[str, Any]], None], worker: str | None = None,
                 poll_s: float = 0.5, processes: int = 1) -> None:
        self.store, self.registry, self.model_name = store, registry, model_name
        self.data_root, self.slots, self.gate_margin, self.deploy = Path(data_root), slots, gate_margin, deploy
        self.worker = worker or os.uname().nodename
        self.poll_s, self.processes = poll_s, processes
        self.running: dict[str, subprocess.Popen] = {}

    def command(self, job: dict[str, Any]) -> list[str]:
        r, run_dir = job["request"], Path(job["run_dir"])
        launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={self.processes}"] \
            if self.processes > 1 else [sys.executable]
        args = [*launcher, "-m", "training.cli", "train", "--out", str(run_dir), "--export-only",
                "--result-file", str(run_dir / "result.json")]
        if r.get("recipe"):
            args += ["--recipe", r["recipe"]]
        if r["dataset"] != "synthetic":
            folder = self.data_root / "datasets" / r["dataset"]
            args += ["--data", f"folder:{folder}"]
            if (folder / BOXES_FILE).is_file():
                args += ["--boxes-csv", str(folder / BOXES_FILE)]
        for key, flag in (("architecture", "--model"), ("epochs", "--epochs"), ("batch_size", "--batch-size"),
                          ("lr", "--lr"), ("image_size", "--image-size"), ("seed", "--seed"),
                          ("time_budget_s", "--time-budget")):
            if r.get(key) is not None:
                args += [flag, str(r[key])]
        for key, value in (r.get("options") or {}).items():
            args += ["--set", f"{key}={json.dumps(value)}"]
        live = self.registry.deployed(self.model_name)
        if live is not None:
            live_dir = self.registry.version_dir(self.model_name, live)
            args += ["--compare-with", str(live_dir)]
            if r.get("init") == "live" and (live_dir / WEIGHTS_FILE).exists():
                args += ["--init", str(live_dir / WEIGHTS_FILE)]
        if str(r.get("init", "")).startswith("file:"):
            args += ["--init", str(self.data_root / "weights" / r["init"].split(":", 1)[1])]
        if job["resume"]:
            args.append("--resume")
        return args

    def start(self, job: dict[str, Any]) -> None:
        run_dir = Path(job["run_dir"])
        run_dir.mkdir(parents=True, exist_ok=True)
        root = Path(__file__).resolve().parents[1]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
        with open(run_dir / "log.txt", "a") as logfile:
            proc = subprocess.Popen(self.command(job), stdout=logfile, stderr=subprocess.STDOUT, cwd=root, env=env,
                                    start_new_session=True)
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

    def finish(self, job_id: str, proc: subprocess.Popen) -> None:
        job = self.store.get(job_id)
        run_dir = Path(job["run_dir"])
        progress = read_progress(run_dir)
        if job["error"] == CANCEL_REQUESTED:
            self.store.update(job_id, state="cancelled", finished=time.time(), progress=progress)
            return
        if proc.returncode != 0:
            tail = (run_dir / "log.txt").read_text()[-2000:] if (run_dir / "log.txt").exists() else ""
            self.store.update(job_id, state="failed", finished=time.time(), progress=progress,
                              error=f"training exited with {proc.returncode}: {tail}")
            return
        try:
            result = json.loads((run_dir / "result.json").read_text())
            version = self.registry.register(self.model_name, result["export"])
            decision = gate(result["metrics"], result.get("live_metrics"), self.gate_margin, result.get("labels"))
            request = job["request"]
            deployed, why = False, None
            if not request.get("deploy", True):
                why = "the job asked not to deploy"
            elif not decision["deployable"]:
                why = f"never deployed, even with force: {decision['reason']}"
            elif decision["passed"] or request.get("force"):
                forced = not decision["passed"]
                self.deploy(version, {"job": job_id, "gate": decision, "forced": forced,
                                      "reason": f"forced over the gate: {decision['reason']}" if forced
                                      else decision["reason"]})
                deployed = True
            else:
                why = f"the gate did not pass: {decision['reason']}"
            self.store.update(job_id, state="succeeded", finished=time.time(), progress=progress,
                              result={"version": version, "deployed": deployed, "not_deployed_because": why,
                                      "gate": decision, "metrics": result["metrics"],
                                      "live_metrics": result.get("live_metrics")})
        except Exception as e:  # noqa: BLE001 - the job fails, the runner goes on
            self.store.update(job_id, state="failed", finished=time.time(), progress=progress, error=str(e))

    def tick(self) -> None:
        for job_id, proc in list(self.running.items()):
            job = self.store.get(job_id)
            if job["error"] == CANCEL_REQUESTED:
                self.stop_process(job_id)
            if proc.poll() is None:
                self.store.update(job_id, progress=read_progress(Path(job["run_dir"])))
                continue
            del self.running[job_id]
            self.finish(job_id, proc)
        while len(self.running) < self.slots:
            job = self.store.claim(self.worker)
            if job is None:
                break
            self.start(job)

    async def run(self) -> None:
        self.store.mark_interrupted(self.worker)
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
                self.store.update(job_id, state="interrupted", finished=time.time(), pid=None)
            self.running.clear()
