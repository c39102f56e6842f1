"""The set of models a service serves: one ModelManager per registry model, under a bound on how
many are loaded at once.

Which models serve: RESCAM_MODELS where set, else every registry model with a deployed version
(and the default model, which answers requests that name none). Models load at start, in that
order, while the bound allows; the others wait in standby and load on their first request (the
least recently used loaded model is unloaded to make room; requests it is answering keep its
engine until they end). One watcher follows every loaded model's DEPLOYED pointer and finds
models that a job or another replica deployed meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path

from .engine import Engine, remove_stale_scratch
from .metrics import Metrics
from .model_manager import ModelManager, cancel
from .registry import Registry, UnknownVersion, check_model_name
from .settings import Settings

log = logging.getLogger("rescam.models")


class UnknownModel(UnknownVersion):
    """No model of that name is here (404); the message names the ones there are."""


class LiveModels:
    def __init__(self, settings: Settings, metrics: Metrics | None = None, keep_scratch_in_data_root: bool = True
                 ) -> None:
        self.settings, self.metrics = settings, metrics
        self.registry = Registry(settings.registry)
        self.default = settings.default_model
        self.bound = settings.max_loaded_models
        self.scratch = Path(settings.data_root) / "tmp" if keep_scratch_in_data_root else None
        self.keep_scratch = keep_scratch_in_data_root
        self.managers: dict[str, ModelManager] = {}
        self.recent: OrderedDict[str, None] = OrderedDict()  # loaded models, least recently used first
        self.lock = threading.RLock()  # the two above
        self.watcher: asyncio.Task | None = None

    # --- which models -----------------------------------------------------------------------------

    def serving_names(self) -> list[str]:
        """The models that must serve, the default first."""
        if self.settings.models:
            return list(self.settings.models)
        deployed = [m for m in self.registry.models() if self.registry.deployed(m) is not None]
        return [self.default, *(m for m in deployed if m != self.default)]

    def known_names(self) -> list[str]:
        """Every model a request may name: those that serve, and (unless RESCAM_MODELS names the
        models) those with versions but none deployed."""
        serving = self.serving_names()
        if self.settings.models:
            return serving
        return serving + [m for m in self.registry.models() if m not in serving]

    def manager(self, name: str | None = None) -> ModelManager:
        """The owner of model `name` (the default when None); UnknownModel when there is none."""
        name = check_model_name(name or self.default)
        with self.lock:
            found = self.managers.get(name)
            if found is not None:
                return found
            if name not in self.known_names():
                there = ", ".join(repr(n) for n in self.known_names()) or "none"
                raise UnknownModel(f"no model {name!r} here; the models are {there}")
            return self._add(name)

    def _add(self, name: str) -> ModelManager:
        manager = ModelManager(self.settings, name, self.metrics, self.keep_scratch, self.registry,
                               on_swap=self._loaded)
        self.managers[name] = manager
        return manager

    def serving(self) -> list[ModelManager]:
        """The owners of the models that must serve, in serving_names' order."""
        names = self.serving_names()
        with self.lock:
            return [self.managers.get(n) or self._add(n) for n in names]

    def readiness(self) -> tuple[bool, dict[str, dict]]:
        """Ready when every model that must serve is serving or in standby (loads on demand); each
        model's state, version and why it does not serve."""
        states = {}
        for m in self.serving():
            engine = m.engine
            states[m.name] = {"state": m.state, "version": engine.version if engine else self.registry.deployed(m.name),
                              **({"reason": m.load_error} if m.load_error and engine is None else {})}
        return all(s["state"] in ("serving", "standby") for s in states.values()) and bool(states), states

    # --- engines -----------------------------------------------------------------------------------

    def live(self, name: str | None = None) -> Engine:
        """The engine serving `name` now, without loading; ModelLoadError (503) when none is."""
        return self.manager(name).live()

    async def engine(self, name: str | None = None) -> tuple[Engine, float | None]:
        """The engine that answers a request for `name`, and how long this request waited for it to
        load (None when it was loaded already)."""
        manager = self.manager(name)
        engine = manager.engine
        waited = None
        if engine is None and (manager.unloaded or manager.load_error is None):  # standby, or loading elsewhere
            started = time.perf_counter()
            engine = await asyncio.get_running_loop().run_in_executor(None, manager.ensure_loaded)
            waited = (time.perf_counter() - started) * 1000
            if self.metrics is not None:
                self.metrics.model_loads.labels(manager.name).observe(waited / 1000)
        elif engine is None:
            engine = manager.live()  # ModelLoadError: why it does not serve
        self._touch(manager.name)
        return engine, waited

    def _touch(self, name: str) -> None:
        with self.lock:
            if name in self.recent:
                self.recent.move_to_end(name)

    def _loaded(self, manager: ModelManager) -> None:
        """A model just went live here: it is the most recently used; unload the least recently used
        others beyond the bound."""
        with self.lock:
            self.recent[manager.name] = None
            self.recent.move_to_end(manager.name)
            evict = []
            while self.bound and len(self.recent) > self.bound:
                oldest = next(iter(self.recent))
                del self.recent[oldest]
                evict.append(self.managers[oldest])
            if self.metrics is not None:
                self.metrics.loaded_models.set(len(self.recent))
        for other in evict:
            other.unload()

    def deploy(self, name: str, version: int, actor: str, reason: str = "", **audit) -> Engine:
        """ModelManager.deploy for model `name`, which may be new (a job's first version of it)."""
        return self.manager(name).deploy(version, actor, reason, **audit)

    def room(self) -> bool:
        with self.lock:
            return not self.bound or len(self.recent) < self.bound

    # --- following the registry --------------------------------------------------------------------

    def follow(self) -> None:
        """Serve every model's live version: loaded ones follow their pointer; models not yet tried
        (new in the registry, or at start) load while the bound has room, else wait in standby."""
        for name in self.serving_names():
            with self.lock:
                manager = self.managers.get(name) or self._add(name)
                fresh = manager.engine is None and not manager.unloaded and manager.load_error is None \
                    and not manager.failed
            if fresh and not self.room():
                manager.unloaded = True  # standby: loads on its first request
                continue
            manager.follow()

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
