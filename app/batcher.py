"""Dynamic batching: concurrent requests are grouped into one inference, up to a batch size or a
wait, whichever comes first. The model runs in a worker thread so the event loop keeps serving.

A request that waits past its deadline is answered with TimeoutError and its item is dropped if
it has not run yet; one request's bad input never reaches the batch (it fails in decoding).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

# a batch's outputs (app.engine.Outputs: logits, CAMs, and the optional features and foreground)
RunFn = Callable[[np.ndarray], tuple[np.ndarray | None, ...]]


@dataclass
class _Item:
    x: np.ndarray
    run: RunFn  # the model bound at submit time
    future: asyncio.Future
    wait: float  # seconds the batch this item starts may wait for company
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchResult:
    logits: np.ndarray  # (classes,)
    cams: np.ndarray  # (classes, h, w)
    features: np.ndarray | None  # (channels,) pooled; None for a graph exported without them
    foreground: np.ndarray | None  # (h, w) the pc1 map; None for a graph exported without it
    queue_ms: float
    inference_ms: float
    batch_size: int


def _row(outputs, k: int) -> tuple:
    """Item k of each of a batch's outputs (app.engine.Outputs), None where the graph has none."""
    return tuple(None if o is None else o[k] for o in outputs)


class Batcher:
    def __init__(self, max_batch: int, enabled: bool = True, on_batch: Callable[[int, float], None] | None = None
                 ) -> None:
        self.max_batch = max_batch if enabled else 1
        self.enabled = enabled
        self.on_batch = on_batch
        self.executor = ThreadPoolExecutor(max_workers=1 if enabled else 4, thread_name_prefix="infer")
        self.queue: asyncio.Queue[_Item] | None = None
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        if self.enabled and self.task is None:
            self.queue = asyncio.Queue()
            self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
            self.task = None
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, run: RunFn, x: np.ndarray, timeout: float, wait_s: float = 0.0) -> BatchResult:
        """x: one normalised input (3, H, W); run: the model to use (bound at submit time, so a
        model swap never changes the model a queued request gets); wait_s: how long a batch this
        item starts may wait for more (0: greedy, what queued while the last batch ran)."""
        loop = asyncio.get_running_loop()
        if not self.enabled:
            start = time.perf_counter()
            outputs = await asyncio.wait_for(loop.run_in_executor(self.executor, run, x[None]), timeout)
            ms = (time.perf_counter() - start) * 1000
            if self.on_batch:
                self.on_batch(1, ms)
            return BatchResult(*_row(outputs, 0), 0.0, ms, 1)
        item = _Item(np.ascontiguousarray(x), run, loop.create_future(), wait_s)
        assert self.queue is not None, "Batcher.start() was not called"
        await self.queue.put(item)
        try:
            return await asyncio.wait_for(asyncio.shield(item.future), timeout)
        except asyncio.TimeoutError:
            item.future.cancel()
            raise

    async def _loop(self) -> None:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        pending: list[_Item] = []
        while True:
            first = pending.pop(0) if pending else await self.queue.get()
            items = [first]
            deadline = time.perf_counter() + first.wait
            while len(items) < self.max_batch:
                remaining = deadline - time.perf_counter()
                if remaining <= 0 and self.queue.empty():
                    break
                try:
                    items.append(self.queue.get_nowait() if remaining <= 0
                                 else await asyncio.wait_for(self.queue.get(), remaining))
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
            items = [i for i in items if not i.future.done()]
            # Items bound to another model (a swap happened) wait for the next batch. Bound
            # methods are new objects at each access, so compare with ==, not `is`.
            run = items[0].run if items else None
            batch = [i for i in items if i.run == run]
            pending.extend(i for i in items if i.run != run)
            if not batch:
                continue
            started = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(self.executor, run, np.stack([i.x for i in batch]))
            except Exception as e:  # the model failed: every request of this batch gets the error
                for i in batch:
                    if not i.future.done():
                        i.future.set_exception(e)
                continue
            ms = (time.perf_counter() - started) * 1000
            if self.on_batch:
                self.on_batch(len(batch), ms)
            for k, i in enumerate(batch):
                if not i.future.done():
                    i.future.set_result(BatchResult(*_row(outputs, k), (started - i.enqueued) * 1000, ms, len(batch)))
