"""Shared fixtures: a tiny model trained, exported and registered in seconds."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from app.registry import Registry


@pytest.fixture(scope="session", autouse=True)
def data_root(tmp_path_factory) -> Path:
    """Services made by tests keep their data sets, runs and job database in a scratch folder."""
    import os

    root = tmp_path_factory.mktemp("data")
    os.environ["RESCAM_DATA_ROOT"] = str(root)
    return root


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> SimpleNamespace:
    """resnet8 on 32x32 synthetic shapes, one short epoch: real weights, real ONNX, real registry."""
    import torch

    from training.config import recipe
    from training.export import export_checkpoint
    from training.train import train

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("tiny")
    cfg = recipe("demo", model="resnet8", image_size=32, synthetic_train=512, synthetic_val=64, epochs=1,
                 batch_size=64, warmup_steps=0, lr=0.05)
    checkpoint = train(cfg, root / "run")
    export = export_checkpoint(checkpoint, root / "run" / "export")
    registry = Registry(root / "registry")
    version = registry.register("default", export)
    registry.deploy("default", version, actor="test")
    return SimpleNamespace(root=root, registry=root / "registry", checkpoint=checkpoint, export=export,
                           config=cfg, version=version, card=registry.card("default", version))


def image_bytes(fmt: str = "PNG", size=(64, 48), mode: str = "RGB", seed: int = 0, **save) -> bytes:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(array).convert(mode)
    buf = io.BytesIO()
    image.save(buf, fmt, **save)
    return buf.getvalue()


def shape_jpeg(tmp: Path | None = None, index: int = 0, size: int = 64) -> bytes:
    """A real JPEG of one synthetic shape."""
    from training.synthetic import render

    buf = io.BytesIO()
    Image.fromarray(render(7, "test", index, size).image).save(buf, "JPEG", quality=95)
    return buf.getvalue()


# What the default model must reach on its validation set (BENCHMARKS.md has the measured figures).
DEMO_TARGETS = {"top1": 0.85, "max_box_acc": 0.45}


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory) -> SimpleNamespace:
    """The default model, trained by `rescam train` with no training arguments, as a user's first run does."""
    import os
    import subprocess
    import sys

    reuse = os.environ.get("RESCAM_TEST_DEMO_REGISTRY")  # a registry holding a default model already
    if reuse:
        registry = Registry(reuse)
        return SimpleNamespace(registry=Path(reuse), card=registry.card("default", registry.deployed("default")),
                               targets=DEMO_TARGETS)
    root = tmp_path_factory.mktemp("demo")
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "training.cli", "train", "--registry", str(root / "registry"),
                          "--out", str(root / "run")], cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)},
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    registry = Registry(root / "registry")
    version = registry.deployed("default")
    return SimpleNamespace(registry=root / "registry", card=registry.card("default", version),
                           targets=DEMO_TARGETS)
