"""A live uvicorn on loopback, started as a user would, and the rule that serving never imports torch."""

import json
import os
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from tests.conftest import shape_jpeg
from tests.live import ROOT, live_server


@pytest.fixture(scope="module")
def server(tiny_model):
    with live_server(tiny_model.registry) as url:
        yield url


def test_live_predict_and_overlay(server):
    req = urllib.request.Request(server + "/v1/predict", data=shape_jpeg(), headers={"Content-Type": "image/jpeg"})
    with urllib.request.urlopen(req, timeout=10) as r:
        body = json.loads(r.read())
    url = body["results"][0]["predictions"][0]["cam_url"]
    with urllib.request.urlopen(server + url, timeout=10) as r:
        assert r.headers["content-type"] == "image/png" and r.read()[:8] == b"\x89PNG\r\n\x1a\n"
    with urllib.request.urlopen(server + "/docs", timeout=10) as r:
        assert b"swagger" in r.read().lower()


def test_serving_never_imports_torch(tiny_model):
    code = f"""
import asyncio, sys
from fastapi.testclient import TestClient
from app.main import create_app
from app.settings import Settings
with TestClient(create_app(Settings(registry={str(tiny_model.registry)!r}))) as c:
    r = c.post('/v1/predict', content=open({str(tiny_model.root / 'shape.jpg')!r}, 'rb').read(),
               headers={{'content-type': 'image/jpeg'}})
    assert r.status_code == 200, r.text
    assert c.get(r.json()['results'][0]['predictions'][0]['cam_url']).status_code == 200
print('torch' in sys.modules)
"""
    (tiny_model.root / "shape.jpg").write_bytes(shape_jpeg())
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_starting_service_leaves_the_cores_to_onnxruntime(tiny_model):
    """numpy's OpenBLAS threads spin after each matrix product on the cores ONNX Runtime computes
    on (the inference after an overlay was about 50% slower); a starting service caps them at one.
    In a fresh process, as in a server: threadpoolctl lets the first thread that sets a limit keep it."""
    code = f"""
import json
from threadpoolctl import threadpool_info
from fastapi.testclient import TestClient
from app.main import create_app
from app.settings import Settings
blas = lambda: [lib['num_threads'] for lib in threadpool_info() if lib['user_api'] == 'blas']
before = blas()
with TestClient(create_app(Settings(registry={str(tiny_model.registry)!r}, run_jobs=False))):
    print(json.dumps([before, blas()]))
"""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "2"}  # what a fresh process has on two cores
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    before, running = json.loads(out.stdout)
    assert before and set(before) == {2}
    assert running == [1] * len(before)


def test_two_uvicorn_workers_both_follow_a_deploy(tiny_model, tmp_path):
    import shutil

    from app.registry import Registry

    shutil.copytree(tiny_model.registry, tmp_path / "registry")
    registry = Registry(tmp_path / "registry")
    registry.register("default", tiny_model.export)  # v2: the same files, a new version
    with live_server(tmp_path / "registry", workers=2, env={"RESCAM_REGISTRY_POLL_S": "0.2",
                                                            "RESCAM_DATA_ROOT": str(tmp_path / "data")}) as base:
        follows_a_deploy(registry, base)


def follows_a_deploy(registry, base: str) -> None:
    def seen(version: int, timeout: float) -> set[int]:
        pids, deadline = set(), time.time() + timeout
        while len(pids) < 2 and time.time() < deadline:
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=2) as r:  # a new connection each time
                    body = json.loads(r.read())
                if body["model"] and body["model"]["version"] == version:
                    pids.add(body["pid"])
            except OSError:
                time.sleep(0.1)
        return pids

    assert len(seen(1, 60)) == 2, "two workers did not both serve v1"
    registry.deploy("default", 2, actor="test")
    assert len(seen(2, 30)) == 2, "both workers did not switch to v2"
    # an overlay URL answers on whichever worker the connection reaches
    req = urllib.request.Request(base + "/v1/predict", data=shape_jpeg(), headers={"Content-Type": "image/jpeg"})
    with urllib.request.urlopen(req, timeout=10) as r:
        cam_url = json.loads(r.read())["results"][0]["predictions"][0]["cam_url"]
    for _ in range(12):
        with urllib.request.urlopen(base + cam_url, timeout=10) as r:
            assert r.status == 200 and r.read()[:4] == b"\x89PNG"
    # a scrape of either worker counts both workers' images (Prometheus multiprocess mode)
    for _ in range(11):
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
    for _ in range(4):  # new connections: either worker answers
        with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
            text = r.read().decode()
        answered = [float(line.split()[-1]) for line in text.splitlines()
                    if line.startswith('rescam_images_total{outcome="answered"}')]
        assert answered == [12.0], answered



def test_a_stock_tritonclient_call_works(server, tiny_model):
    """Triton's own HTTP client with its defaults: binary tensors in and out (the binary tensor data
    extension), the versionless and the versioned routes."""
    import onnxruntime as ort
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(url=server.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("default")
    assert client.get_model_metadata("default")["versions"] == [str(tiny_model.version)]
    x = np.random.default_rng(3).normal(size=(2, 3, 32, 32)).astype(np.float32)
    given = triton.InferInput("input", list(x.shape), "FP32")
    given.set_data_from_numpy(x)  # binary_data=True: the client's default
    result = client.infer("default", [given])
    session = ort.InferenceSession(str(tiny_model.export / "model.onnx"), providers=["CPUExecutionProvider"])
    logits, cams = session.run(["logits", "cam"], {"input": x})
    np.testing.assert_allclose(result.as_numpy("logits"), logits, rtol=0, atol=1e-4)
    np.testing.assert_allclose(result.as_numpy("cam"), cams, rtol=0, atol=1e-4)
    versioned = client.infer("default", [given], model_version=str(tiny_model.version),
                             outputs=[triton.InferRequestedOutput("logits", binary_data=False)])
    np.testing.assert_allclose(versioned.as_numpy("logits"), logits, rtol=0, atol=1e-4)
    assert versioned.as_numpy("cam") is None
    with pytest.raises(InferenceServerException, match="version 9 is not loaded"):
        client.infer("default", [given], model_version="9")
