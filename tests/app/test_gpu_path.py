"""The engine's GPU path (padded batch shapes, I/O binding) and the batch wait, run here on the CPU:
an engine told it serves on CUDA takes every GPU branch, with the CPU session doing the arithmetic."""

import asyncio
import dataclasses
import time

import numpy as np
import pytest

from app.batcher import Batcher
from app.engine import Engine, padded_size
from app.predictor import GPU_BATCH_WAIT_MS, batch_wait_s
from app.registry import Registry
from app.settings import Settings


@pytest.mark.parametrize(("n", "limit", "size"), [(1, 16, 1), (2, 16, 2), (3, 16, 4), (5, 16, 8), (9, 16, 16),
                                                  (16, 16, 16), (5, 6, 6), (7, 6, 7), (3, 1, 3)])
def test_padded_size_is_the_next_power_of_two_within_the_limit(n, limit, size):
    assert padded_size(n, limit) == size


@pytest.fixture(scope="module")
def cpu_engine(tiny_model):
    registry = Registry(tiny_model.registry)
    directory = registry.version_dir("default", tiny_model.version)
    card = registry.card("default", tiny_model.version)
    return Engine.load(directory, card, "default", tiny_model.version, ["CPUExecutionProvider"])


@pytest.mark.parametrize("io_binding", [True, False])
def test_the_gpu_path_answers_as_the_cpu_path(cpu_engine, io_binding):
    gpu_like = dataclasses.replace(cpu_engine, provider="CUDAExecutionProvider", max_batch=8, io_binding=io_binding)
    assert gpu_like.on_gpu and not cpu_engine.on_gpu
    assert gpu_like.batch_shapes() == [1, 2, 4, 8] and cpu_engine.batch_shapes() == [1]
    gpu_like.check()  # runs every shape
    crop = cpu_engine.prep.crop
    x = np.random.default_rng(0).normal(size=(5, 3, crop, crop)).astype(np.float32)
    got = gpu_like.run(x)  # padded to 8, cut back to 5
    want = cpu_engine.run(x)
    assert got.logits.shape == want.logits.shape and got.cams.shape == want.cams.shape
    assert got.features.shape == want.features.shape == (5, cpu_engine.scorer.feature_size)
    assert got.foreground.shape == want.foreground.shape == (5, *cpu_engine.card.cam_size)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_batch_wait_defaults_to_greedy_on_the_cpu_and_waits_on_a_gpu(cpu_engine):
    gpu_like = dataclasses.replace(cpu_engine, provider="CUDAExecutionProvider")
    unset = Settings().max_batch_wait_ms
    assert batch_wait_s(unset, cpu_engine) == 0.0
    assert batch_wait_s(unset, gpu_like) == GPU_BATCH_WAIT_MS / 1000 > 0
    assert batch_wait_s(7, gpu_like) == batch_wait_s(7, cpu_engine) == 0.007


def test_a_batch_waits_as_long_as_its_first_item_says():
    """Two requests 30 ms apart: batched together when the first may wait 500 ms, apart when it may
    wait nothing (the batcher's default: greedy)."""
    def model(x):
        return x.reshape(len(x), -1)[:, :2], x[:, :1], None, None  # logits, cams; no features, no foreground

    async def pair(wait_s: float):
        batcher = Batcher(max_batch=8)
        batcher.start()
        try:
            first = asyncio.create_task(batcher.submit(model, np.zeros((1, 2, 2), np.float32), 5.0, wait_s))
            await asyncio.sleep(0.03)
            second = await batcher.submit(model, np.ones((1, 2, 2), np.float32), 5.0, wait_s)
            return (await first).batch_size, second.batch_size
        finally:
            await batcher.stop()

    started = time.perf_counter()
    assert asyncio.run(pair(0.5)) == (2, 2)
    assert time.perf_counter() - started < 3.0  # the wait, not the 5 s timeout
    assert asyncio.run(pair(0.0)) == (1, 1)
