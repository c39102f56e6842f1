"""Shadow trials: a candidate version answers a share of its model's live requests beside the live
version, off the request's path, and the trial records how the two answers compare.

The user's answer never waits for the candidate nor comes from it: after the live answer is made,
`offer` draws the request with the trial's share and hands its decoded images to a background
task, which runs the candidate (its own preprocessing, scoring and box rule, as it would serve)
and records per image: top-1 agreement, the IoU of the two top-1 boxes of the live answer's label,
both inference times and both open-world verdicts. At most MAX_PENDING requests are in the
candidate's hands per worker; beyond that a drawn request is skipped (and counted), so a slow
candidate cannot pile work onto the live path. The figures are in app.trial_store; promoting is a
deploy (app.model_manager: the gate, the smoke test, the audit entry).
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from . import cam
from .engine import Engine, ModelLoadError
from .imaging import release_freed_memory
from .live_models import LiveModels
from .metrics import Metrics
from .predictor import NotFound
from .schemas import ImageAnswer
from .settings import Settings
from .store import StoredImage
from .trial_store import TrialStore

log = logging.getLogger("rescam.shadow")

class TrialRefused(Exception):
    """A trial that cannot start, stop or promote as asked (409); the message says why."""


MAX_PENDING = 2  # requests the candidate may be answering at once, per worker
# the candidate's ONNX Runtime session runs on one thread: beside the live session's pool it takes
# a core at most, not a share of every core the live answers run on (BENCHMARKS.md, shadow trials)
CANDIDATE_THREADS = 1
LOOK_EVERY_S = 1.0  # how stale this worker's view of a model's running trial may be


def first_box(cams: np.ndarray, index: int, image: StoredImage, window: cam.Geometry, rule: cam.BoxRule,
              foreground: np.ndarray | None = None) -> cam.Box | None:
    found = cam.class_boxes(cams, [index], window, image.width, image.height, rule, foreground=foreground)[0]
    return found[0] if found else None


class ShadowTrials:
    def __init__(self, settings: Settings, models: LiveModels, rule_for: Callable[..., tuple[cam.BoxRule, str]],
                 metrics: Metrics | None = None, rng: random.Random | None = None) -> None:
        self.settings, self.models, self.metrics = settings, models, metrics
        self.store = TrialStore(settings.data_root / "trials.sqlite")
        self.rule_for = rule_for  # Predictor.rule_for: each version's boxes by the rule it answers with
        self.rng = rng or random.Random()
        self.skipped: dict[str, int] = {}  # trial id -> drawn requests skipped, not yet written
        self.seen: dict[str, tuple[float, dict[str, Any] | None]] = {}  # model -> (when looked, running trial)
        self.candidates: dict[str, Engine] = {}  # trial id -> the candidate's engine in this worker
        self.pending: set[asyncio.Task] = set()
        self.lock = threading.Lock()  # candidates

    # --- which trial ---------------------------------------------------------------------------

    def running(self, model: str) -> dict[str, Any] | None:
        """The model's running trial as this worker last saw it (at most LOOK_EVERY_S old)."""
        now = time.monotonic()
        looked = self.seen.get(model)
        if looked is None or now - looked[0] > LOOK_EVERY_S:
            looked = (now, self.store.running(model))
            self.seen[model] = looked
            self._let_go(keep=looked[1]["id"] if looked[1] else None, model=model)
        return looked[1]

    def forget(self, model: str) -> None:
        """Look again at the next request (this worker just started or ended a trial)."""
        self.seen.pop(model, None)

    def _let_go(self, keep: str | None, model: str) -> None:
        with self.lock:
            gone = [t for t, e in self.candidates.items() if e.name == model and t != keep]
            for trial_id in gone:
                del self.candidates[trial_id]
        if gone:
            release_freed_memory()

    def candidate(self, trial: dict[str, Any]) -> Engine:
        """The trial's candidate engine in this worker, loaded and smoke-tested on first use."""
        with self.lock:
            engine = self.candidates.get(trial["id"])
        if engine is None:
            engine = self.models.manager(trial["model"]).load_version(trial["version"], CANDIDATE_THREADS)
            with self.lock:
                self.candidates[trial["id"]] = engine
        return engine

    # --- a trial's life (the admin routes) ----------------------------------------------------------

    def start(self, model: str, version: int, share: float, target: int, actor: str, reason: str = ""
              ) -> dict[str, Any]:
        """Open a trial of `version` beside the model's live one, once the candidate has loaded and
        passed its smoke test here. TrialRefused when it is live, cannot load or a trial is open."""
        manager = self.models.manager(model)
        manager.registry.version_dir(manager.name, version)  # UnknownVersion: 404
        live = manager.registry.deployed(manager.name)
        if version == live:
            raise TrialRefused(f"v{version} is the live version of {manager.name!r}; a trial needs another")
        try:
            engine = manager.load_version(version, CANDIDATE_THREADS)
        except ModelLoadError as e:
            raise TrialRefused(f"v{version} cannot be tried: {e}") from None
        trial = self.store.create(manager.name, version, live, share, target, actor, reason)
        if trial is None:
            running = self.store.running(manager.name)
            raise TrialRefused(f"trial {running['id'] if running else '?'} of {manager.name!r} is running; "
                               "stop it first")
        with self.lock:
            self.candidates[trial["id"]] = engine
        self.forget(manager.name)
        return trial

    def trial(self, model: str, trial_id: str) -> dict[str, Any]:
        trial = self.store.get(trial_id)
        if trial is None or trial["model"] != model:
            raise NotFound(f"model {model!r} has no trial {trial_id!r}")
        return trial

    def stop_trial(self, model: str, trial_id: str, actor: str) -> dict[str, Any]:
        trial = self.trial(model, trial_id)
        if not self.store.end(trial_id, "stopped", f"stopped by {actor}"):
            raise TrialRefused(f"trial {trial_id} has already ended ({trial['state']})")
        self.forget(model)
        return self.store.get(trial_id)

    def promote(self, model: str, trial_id: str, actor: str, reason: str = "") -> dict[str, Any]:
        """Deploy the trial's candidate (the one deploy: gate, smoke test, audit entry naming the
        trial and its figures) and end the trial; NotDeployed leaves both as they were."""
        trial = self.trial(model, trial_id)
        if trial["state"] == "promoted":
            raise TrialRefused(f"trial {trial_id} has already promoted v{trial['version']}")
        figures = self.store.figures(trial_id)
        self.models.manager(model).deploy(trial["version"], actor, reason or f"shadow trial {trial_id}",
                                          via=f"shadow trial {trial_id}", trial=trial_id, figures=figures)
        self.store.end(trial_id, "promoted", f"promoted by {actor}", from_states=("running", "complete", "stopped",
                                                                                   "failed"))
        self.forget(model)
        return self.store.get(trial_id)

    # --- on the live path: only a draw and a task ----------------------------------------------

    def offer(self, live: Engine, answered: list[tuple[ImageAnswer, StoredImage]],
              asked: cam.BoxRule | None = None) -> None:
        """After a live answer: maybe hand its images to the trial's candidate (`asked`: the box
        rule the request named, which the candidate answers with too)."""
        trial = self.running(live.name)
        if trial is None or not answered or self.rng.random() >= trial["share"]:
            return
        if live.version == trial["version"]:  # the candidate went live by another path
            self.store.end(trial["id"], "stopped", f"v{live.version} went live outside the trial")
            self.forget(live.name)
            return
        if len(self.pending) >= MAX_PENDING:  # counted here, written with a pending task's samples
            self.skipped[trial["id"]] = self.skipped.get(trial["id"], 0) + 1
            self._count(trial, "skipped", len(answered))
            return
        task = asyncio.get_running_loop().create_task(self._shadow(trial, live, answered, asked))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _shadow(self, trial: dict[str, Any], live: Engine, answered: list[tuple[ImageAnswer, StoredImage]],
                      asked: cam.BoxRule | None) -> None:
        loop = asyncio.get_running_loop()
        try:
            samples = await loop.run_in_executor(None, self.compare, trial, live, answered, asked)
            skipped, self.skipped = self.skipped, {}  # every trial's skips since the last write
            await loop.run_in_executor(None, self.store.add, trial["id"], samples, skipped)
        except ModelLoadError as e:
            log.error("shadow trial %s: v%d does not load: %s", trial["id"], trial["version"], e)
            self.store.end(trial["id"], "failed", f"the candidate does not load: {e}")
            self.forget(trial["model"])
        except Exception:  # noqa: BLE001 - a shadow must never disturb the live service
            log.exception("shadow trial %s failed on a request", trial["id"])

    # --- off the live path -----------------------------------------------------------------------

    def compare(self, trial: dict[str, Any], live: Engine, answered: list[tuple[ImageAnswer, StoredImage]],
                asked: cam.BoxRule | None = None) -> list[dict[str, Any]]:
        """The candidate's answer to each image, compared with the live one's."""
        candidate = self.candidate(trial)
        samples = []
        for answer, image in answered:
            sample: dict[str, Any] = {"live_version": live.version}
            try:
                sample.update(self.compare_one(live, candidate, answer, image, asked))
                self._count(trial, "agree" if sample["agree"] else "differ")
            except Exception as e:  # noqa: BLE001 - recorded: a candidate that fails on real input
                sample["error"] = f"{type(e).__name__}: {e}"[:500]
                self._count(trial, "failed")
            samples.append(sample)
        return samples

    def compare_one(self, live: Engine, candidate: Engine, answer: ImageAnswer, image: StoredImage,
                    asked: cam.BoxRule | None = None) -> dict[str, Any]:
        x, window = candidate.prep.network_input(image.image)
        started = time.perf_counter()
        out = candidate.run(x[None])
        candidate_ms = (time.perf_counter() - started) * 1000
        verdict = candidate.scorer.verdict(out.logits[0], None if out.features is None else out.features[0])
        live_top = answer.predictions[0]
        agree = candidate.labels[verdict.predicted] == live_top.label
        iou = None
        if live_top.label in candidate.labels:  # both sides' box of the label the user was given
            if live_top.boxes is not None:  # the box the user was given
                mine = live_top.boxes[0] if live_top.boxes else None
            else:  # the request asked for no boxes: the one it would have had
                mine = first_box(image.cams, live_top.index, image, image.geometry, self.rule_for(live, asked)[0],
                                 image.foreground)
            theirs = first_box(out.cams[0], candidate.labels.index(live_top.label), image, window,
                              self.rule_for(candidate, asked)[0], None if out.foreground is None else out.foreground[0])
            if mine is not None and theirs is not None:
                iou = cam.iou([mine.x0, mine.y0, mine.x1, mine.y1], [theirs.x0, theirs.y0, theirs.x1, theirs.y1])
        t = answer.timings
        unknown = answer.open_world.unknown if answer.open_world else None
        return {"agree": int(agree), "iou": iou, "candidate_ms": candidate_ms,
                "live_ms": t.inference_ms / max(t.batch_size, 1) if t else None,
                "live_unknown": None if unknown is None else int(unknown),
                "candidate_unknown": None if verdict.unknown is None else int(verdict.unknown)}

    def _count(self, trial: dict[str, Any], outcome: str, n: int = 1) -> None:
        if self.metrics is not None:
            self.metrics.shadow_images.labels(trial["model"], str(trial["version"]), outcome).inc(n)

    async def stop(self) -> None:
        """Let the candidates' tasks end (a stopping service does not wait for them)."""
        for task in list(self.pending):
            task.cancel()
        await asyncio.gather(*self.pending, return_exceptions=True)
        with self.lock:
            self.candidates.clear()
