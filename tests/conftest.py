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
    cfg = recipe("demo", architecture="resnet8", image_size=32, synthetic_train=512, synthetic_val=64, epochs=1,
                 batch_size=64, warmup_steps=0, lr=0.05)
    checkpoint = train(cfg, root / "run")
    export = export_checkpoint(checkpoint, root / "run" / "export")
    registry = Registry(root / "registry")
    version = registry.register("default", export)
    registry.deploy("default", version, actor="test")
    return SimpleNamespace(root=root, registry=root / "registry", checkpoint=checkpoint, export=export,
                           config=cfg, version=version, card=registry.card("default", version).to_dict())


@pytest.fixture(scope="session")
def two_versions(tiny_model, tmp_path_factory) -> Path:
    """A registry with v1 (live) and v2, both with reports: what a user has after one retrain. Copy
    its `registry` folder before changing it."""
    import shutil

    from training.report import write_report

    root = tmp_path_factory.mktemp("two-versions")
    shutil.copytree(tiny_model.export, root / "export")
    write_report(root / "export", metrics_jsonl=tiny_model.root / "run" / "metrics.jsonl")
    registry = Registry(root / "registry")
    registry.deploy("default", registry.register("default", root / "export"))
    registry.register("default", root / "export")
    return root


def image_bytes(fmt: str = "PNG", size=(64, 48), mode: str = "RGB", seed: int = 0, **save) -> bytes:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(array).convert(mode)
    buf = io.BytesIO()
    image.save(buf, fmt, **save)
    return buf.getvalue()


def client_for(registry: Registry, token: str):
    """A test client of the service on `registry` (CPU, no watcher), `token` its admin token."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    return TestClient(create_app(Settings(registry=registry.root, admin_token=token, registry_poll_s=0,
                                          providers=["CPUExecutionProvider"])))


def shape_jpeg(tmp: Path | None = None, index: int = 0, size: int = 64) -> bytes:
    """A real JPEG of one synthetic shape."""
    from training.synthetic import render

    buf = io.BytesIO()
    Image.fromarray(render(7, "test", index, size).image).save(buf, "JPEG", quality=95)
    return buf.getvalue()


# The slow tests train the default model's recipe on 36k instead of 100k synthetic images (about 2
# minutes on 2 CPU cores instead of 4-5), and compare smaller figures: a 36k run must come this close
# to the shipped card's (99.3% top-1, 62.1% MaxBoxAcc). 36k-image runs measured 90.5-94.1% top-1 and
# 49.5-53.1% MaxBoxAcc on two machines (BENCHMARKS.md); these margins leave 3-4 points below both.
SHORT_RUN = ["--set", "synthetic_train=36000"]
SHORT_RUN_MARGIN = {"top1": 0.15, "max_box_acc": 0.20}


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory) -> SimpleNamespace:
    """The default model's recipe (`rescam train`), trained on fewer images (SHORT_RUN)."""
    import os
    import subprocess
    import sys

    reuse = os.environ.get("RESCAM_TEST_DEMO_REGISTRY")  # a registry holding a default model already
    if reuse:
        registry = Registry(reuse)
        return SimpleNamespace(registry=Path(reuse), card=registry.card("default", registry.deployed("default")).to_dict())
    root = tmp_path_factory.mktemp("demo")
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "training.cli", "train", *SHORT_RUN, "--registry",
                          str(root / "registry"), "--out", str(root / "run")], cwd=repo,
                         env={**os.environ, "PYTHONPATH": str(repo)},
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    registry = Registry(root / "registry")
    version = registry.deployed("default")
    return SimpleNamespace(registry=root / "registry", card=registry.card("default", version).to_dict())
