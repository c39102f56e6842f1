"""One named model's owner: which of its registry versions serves, and every change to that.

Loads a version into a fresh, smoke-tested Engine before it may serve; deploys, rolls back and
deletes through the registry; follows the model's DEPLOYED pointer so that every worker and
replica serves what another one deployed. A version that fails to load never serves, and the
one serving keeps serving. The set of models a service serves is app.live_models.LiveModels'.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from .engine import Engine, ModelLoadError
from .imaging import release_freed_memory
from .metrics import Metrics
from .registry import Registry, RegistryError
from .settings import Settings

log = logging.getLogger("rescam.models")


class NotDeployed(Exception):
    """A deploy or rollback that changed nothing; the message says why and what keeps serving."""


ModelState = Literal["serving", "loading", "standby", "failed", "undeployed"]


def resident_bytes() -> int:
    """This process's resident memory (Linux /proc; 0 where there is none)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class ModelManager:
    def __init__(self, settings: Settings, name: str | None = None, metrics: Metrics | None = None,
                 keep_scratch_in_data_root: bool = True, registry: Registry | None = None,
                 on_swap: Callable[[ModelManager], None] | None = None) -> None:
        self.settings = settings
        self.name = name or settings.default_model
        self.registry = registry or Registry(settings.registry)
        # optimized copies of models while they load: under the service's data root, or (a one-off
        # use that should leave no folder behind) the system's temporary folder
        self.scratch = Path(settings.data_root) / "tmp" if keep_scratch_in_data_root else None
        self.metrics = metrics
        self.engine: Engine | None = None
        self.load_error: str | None = None
        self.failed: dict[int, str] = {}  # versions that did not load, and why
        self.unloaded = False  # let go to keep within the loaded-model bound; loads again on demand
        self.memory_bytes = 0  # how much the process grew while the live engine loaded
        self.last_load_ms: float | None = None
        self.on_swap = on_swap  # LiveModels keeps its bound on loaded models through this
        # one change at a time: when a deploy call returns, this process serves what DEPLOYED names
        self.changing = threading.Lock()

    @property
    def state(self) -> ModelState:
        engine = self.engine
        if engine is not None:
            return "serving" if engine.warm else "loading"
        if self.registry.deployed(self.name) is None:
            return "undeployed"
        if self.unloaded:
            return "standby"
        return "failed" if self.load_error else "loading"

    def live(self) -> Engine:
        """The engine serving now; ModelLoadError (503) when none is."""
        engine = self.engine
        if engine is None:
            raise ModelLoadError(self.load_error or "no model is loaded yet")
        return engine

    def load_version(self, version: int, intra_op_threads: int | None = None) -> Engine:
        """A fresh, smoke-tested engine for `version` (ONNX Runtime's threads as the settings say
        unless given); raises ModelLoadError with the reason."""
        s = self.settings
        try:
            directory = self.registry.version_dir(self.name, version)
            card = self.registry.card(self.name, version)
        except RegistryError as e:
            raise ModelLoadError(str(e)) from e
        before, started = resident_bytes(), time.perf_counter()
        threads = s.intra_op_threads if intra_op_threads is None else intra_op_threads
        engine = Engine.load(directory, card, self.name, version, s.providers, threads,
                             s.inter_op_threads, s.graph_optimization, s.lean_cpu_session, self.scratch,
                             max_batch=s.max_batch_size if s.batching else 1, io_binding=s.io_binding)
        engine.memory_bytes = max(resident_bytes() - before, 0)  # approximate: other work may run meanwhile
        self.last_load_ms = (time.perf_counter() - started) * 1000
        return engine

    def swap(self, engine: Engine) -> None:
        """Make `engine` live. Requests already running keep the engine they started with."""
        old, self.engine, self.load_error, self.unloaded = self.engine, engine, None, False
        self.memory_bytes = engine.memory_bytes
        if self.metrics is not None:
            if old is not None:
                self._forget(old)
            self.metrics.model_version.labels(engine.name, engine.provider).set(engine.version)
            self.metrics.model_memory.labels(engine.name, str(engine.version)).set(self.memory_bytes)
        log.info("now serving %s v%d on %s", engine.name, engine.version, engine.provider)
        if self.on_swap is not None:
            self.on_swap(self)

    def _forget(self, engine: Engine) -> None:
        for gauge, labels in ((self.metrics.model_version, (engine.name, engine.provider)),
                              (self.metrics.model_memory, (engine.name, str(engine.version)))):
            try:
                gauge.remove(*labels)
            except KeyError:
                pass

    def unload(self) -> None:
        """Let the engine go (requests running keep it until they end); the next request loads it again."""
        with self.changing:
            engine, self.engine, self.unloaded, self.memory_bytes = self.engine, None, True, 0
        if engine is not None:
            if self.metrics is not None:
                self._forget(engine)
            log.info("unloaded %s v%d to keep within the loaded-model bound", engine.name, engine.version)
            del engine  # its session goes with the last request that holds it; this may be the last
            release_freed_memory()  # else glibc keeps the freed weights, and a bound would not bound memory

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

    def ensure_loaded(self) -> Engine:
        """The live engine, loading the deployed version first where it was unloaded (a request
        for a model in standby waits for that)."""
        if self.engine is None and self.unloaded:
            self.unloaded = False
            loaded = self.follow()
            if loaded is not None:  # another model's load may let it go again at once: this request keeps it
                return loaded
        elif self.engine is None and self.load_error is None:
            with self.changing:  # another thread is loading it: wait for that load
                pass
            engine = self.engine
            if engine is not None:
                return engine
        return self.live()

    def follow(self) -> Engine | None:
        """Serve the registry's live version; keep the current engine if the new one fails. Returns
        the engine this call made live, if it made one."""
        version = self.registry.deployed(self.name)
        if version is None:
            self.load_error = f"no version of model {self.name!r} is deployed in {self.settings.registry}"
            return None
        if (self.engine is not None and self.engine.version == version) or version in self.failed or self.unloaded:
            return None
        with self.changing:
            if self.registry.deployed(self.name) != version:
                return None  # changed while this look waited: the next look follows it
            try:
                engine = self.load_version(version)
                self.swap(engine)
                return engine
            except Exception as e:  # noqa: BLE001 - a bad model must never take the service down
                self.failed[version] = self.load_error = str(e)
                log.error("model %s v%s not loaded, %s: %s", self.name, version,
                          f"still serving v{self.engine.version}" if self.engine else "serving nothing", e)
                return None


async def cancel(task: asyncio.Task | None) -> None:
    """Cancel a background task and wait until it has stopped."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
