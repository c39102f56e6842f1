"""The live model's owner: which registry version serves, and every change to that.

Loads a version into a fresh, smoke-tested Engine before it may serve; deploys, rolls back and
deletes through the registry; follows the registry's DEPLOYED pointer so that every worker and
replica serves what another one deployed. A version that fails to load never serves, and the
one serving keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

from .engine import Engine, ModelLoadError, remove_stale_scratch
from .metrics import Metrics
from .registry import Registry, RegistryError
from .settings import Settings

log = logging.getLogger("rescam.models")


class NotDeployed(Exception):
    """A deploy or rollback that changed nothing; the message says why and what keeps serving."""


class ModelManager:
    def __init__(self, settings: Settings, metrics: Metrics | None = None, keep_scratch_in_data_root: bool = True
                 ) -> None:
        self.settings = settings
        self.name = settings.model_name
        self.registry = Registry(settings.registry)
        # optimized copies of models while they load: under the service's data root, or (a one-off
        # use that should leave no folder behind) the system's temporary folder
        self.scratch = Path(settings.data_root) / "tmp" if keep_scratch_in_data_root else None
        self.metrics = metrics
        self.engine: Engine | None = None
        self.load_error: str | None = None
        self.failed: dict[int, str] = {}  # versions that did not load, and why
        self.watcher: asyncio.Task | None = None
        # one change at a time: when a deploy call returns, this process serves what DEPLOYED names
        self.changing = threading.Lock()

    def live(self) -> Engine:
        """The engine serving now; ModelLoadError (503) when none is."""
        engine = self.engine
        if engine is None:
            raise ModelLoadError(self.load_error or "no model is loaded yet")
        return engine

    def load_version(self, version: int) -> Engine:
        """A fresh, smoke-tested engine for `version`; raises ModelLoadError with the reason."""
        s = self.settings
        try:
            directory = self.registry.version_dir(self.name, version)
            card = self.registry.card(self.name, version)
        except RegistryError as e:
            raise ModelLoadError(str(e)) from e
        return Engine.load(directory, card, self.name, version, s.providers, s.intra_op_threads,
                           s.inter_op_threads, s.graph_optimization, s.lean_cpu_session, self.scratch,
                           max_batch=s.max_batch_size if s.batching else 1, io_binding=s.io_binding)

    def swap(self, engine: Engine) -> None:
        """Make `engine` live. Requests already running keep the engine they started with."""
        old, self.engine, self.load_error = self.engine, engine, None
        if self.metrics is not None:
            if old is not None:
                self.metrics.model_version.remove(old.name, old.provider)
            self.metrics.model_version.labels(engine.name, engine.provider).set(engine.version)
        log.info("now serving %s v%d on %s", engine.name, engine.version, engine.provider)

    def deploy(self, version: int, actor: str, reason: str = "", **audit: Any) -> Engine:
        """Load and smoke-test `version`, then move the live pointer and swap. NotDeployed (and no
        change) when the promotion gate recorded with it marked it never deployable (diverged, or at
        chance) or it cannot load; UnknownVersion when there is no such version. Every path that
        deploys comes here; `audit` says from which (via=...)."""
        self.registry.version_dir(self.name, version)
        gate = self.registry.gate(self.name, version)
        if gate is not None and not gate.get("deployable", True):
            raise NotDeployed(f"v{version} is never deployed, v{self.registry.deployed(self.name)} keeps serving: "
                              f"{gate.get('reason')}")
        with self.changing:
            engine = self._load_or_refuse(version)
            self.registry.deploy(self.name, version, actor=actor, reason=reason, **audit)
            self.failed.pop(version, None)
            self.swap(engine)
        return engine

    def rollback(self, actor: str, reason: str = "") -> tuple[int, int]:
        """Back to the deployment before the live one: (the version now live, the one left)."""
        with self.changing:
            pointer = self.registry.pointer(self.name)
            if pointer is None or not pointer["history"]:
                raise NotDeployed(f"model {self.name!r} has no earlier deployment to roll back to")
            engine = self._load_or_refuse(pointer["history"][-1])
            version = self.registry.rollback(self.name, actor=actor, reason=reason)
            self.swap(engine)
        return version, int(pointer["version"])

    def delete(self, version: int, actor: str) -> None:
        with self.changing:
            self.registry.delete(self.name, version, actor=actor)

    def _load_or_refuse(self, version: int) -> Engine:
        try:
            return self.load_version(version)
        except ModelLoadError as e:
            live = self.registry.deployed(self.name)
            raise NotDeployed(f"v{version} was not deployed, v{live} keeps serving: {e}") from None

    def follow(self) -> None:
        """Serve the registry's live version; keep the current engine if the new one fails."""
        version = self.registry.deployed(self.name)
        if version is None:
            self.load_error = f"no version of model {self.name!r} is deployed in {self.settings.registry}"
            return
        if (self.engine is not None and self.engine.version == version) or version in self.failed:
            return
        with self.changing:
            if self.registry.deployed(self.name) != version:
                return  # changed while this look waited: the next look follows it
            try:
                self.swap(self.load_version(version))
            except Exception as e:  # noqa: BLE001 - a bad model must never take the service down
                self.failed[version] = self.load_error = str(e)
                log.error("model %s v%s not loaded, %s: %s", self.name, version,
                          f"still serving v{self.engine.version}" if self.engine else "serving nothing", e)

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settings.registry_poll_s)
            try:
                await loop.run_in_executor(None, self.follow)
            except Exception:  # noqa: BLE001 - keep watching whatever one look found
                log.exception("registry check failed")

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for folder in remove_stale_scratch(self.scratch):
            log.info("removed %s, left by a load that did not finish", folder)
        await loop.run_in_executor(None, self.follow)
        if self.settings.registry_poll_s > 0:
            self.watcher = loop.create_task(self._watch())

    async def stop(self) -> None:
        await cancel(self.watcher)
        self.watcher = None


async def cancel(task: asyncio.Task | None) -> None:
    """Cancel a background task and wait until it has stopped."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
