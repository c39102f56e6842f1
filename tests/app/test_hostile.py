"""Issue 13's reproductions, each answered with a 4xx and a JSON body, never a 500; and one auth
rule on every route, checked route by route from the OpenAPI."""

import json
import re
import shutil

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.conftest import shape_jpeg

ADMIN, PREDICT = "admin-secret", "predict-secret"
PUBLIC = {("get", p) for p in ("/healthz", "/readyz", "/metrics", "/v1/models", "/v1/models/{name}",
                                "/v1/models/{name}/versions", "/v1/models/{name}/versions/{version}",
                                "/v2/health/live", "/v2/health/ready", "/v2")}


@pytest.fixture(scope="module")
def client(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    shutil.copytree(tiny_model.registry, root / "registry")
    settings = Settings(registry=root / "registry", data_root=root / "data", admin_token=ADMIN,
                        predict_token=PREDICT, run_jobs=False)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c, root


def predicted(c) -> str:
    r = c.post("/v1/predict", content=shape_jpeg(), headers={"content-type": "image/jpeg",
                                                             "authorization": f"Bearer {PREDICT}"})
    assert r.status_code == 200, r.text
    return r.json()["id"]


@pytest.mark.parametrize("query, status", [
    ("label=%C2%B2", 404),  # a superscript two: str.isdigit says yes, int() says no
    ("label=7&threshold=0.99&max_side=16", 200),  # a box thinner than a pixel at a small size
    ("label=0&threshold=0.99&max_side=17", 200),
])
def test_overlay_reproductions(client, query, status):
    c, _ = client
    pid = predicted(c)
    r = c.get(f"/v1/predictions/{pid}/cam?{query}", headers={"authorization": f"Bearer {PREDICT}"})
    assert r.status_code == status, r.text
    if status != 200:
        assert "error" in r.json()


def test_every_label_and_small_size_draws(client, tiny_model):
    c, _ = client
    pid = predicted(c)
    for label in range(len(tiny_model.card["labels"])):
        for side in (16, 23, 64, 255):
            r = c.get(f"/v1/predictions/{pid}/cam?label={label}&threshold=0.99&max_side={side}",
                      headers={"authorization": f"Bearer {PREDICT}"})
            assert r.status_code == 200, (label, side, r.text)


@pytest.mark.parametrize("datatype, value", [("UINT8", 256), ("UINT8", -1), ("INT64", 10**30),
                                             ("FP32", "NaN"), ("FP32", "Infinity"), ("FP64", 1e300)])
def test_v2_out_of_range_and_non_finite_inputs_are_400(client, datatype, value):
    c, _ = client
    side = 32
    body = {"inputs": [{"name": "input", "shape": [1, 3, side, side], "datatype": datatype,
                        "data": [value] * (3 * side * side)}]}
    text = json.dumps(body).replace('"NaN"', "NaN").replace('"Infinity"', "Infinity")
    r = c.post("/v2/models/default/infer", content=text, headers={"content-type": "application/json",
                                                                  "authorization": f"Bearer {PREDICT}"})
    assert r.status_code == 400, r.text
    assert "error" in r.json()


def test_a_damaged_version_is_listed_as_broken(client):
    c, root = client
    (root / "registry" / "default" / "7").mkdir()
    (root / "registry" / "default" / "7" / "model.onnx").write_bytes(b"not a model")
    (root / "registry" / "default" / "7" / "card.json").write_text("{damaged")
    r = c.get("/v1/models/default/versions")
    assert r.status_code == 200
    broken = [v for v in r.json()["versions"] if v["version"] == 7]
    assert broken and "broken card" in broken[0]["broken"]
    assert c.get("/v1/models/default/versions/7").json()["broken"]
    shutil.rmtree(root / "registry" / "default" / "7")


def test_one_auth_rule_on_every_route(client):
    """Every operation in the OpenAPI: without a token, only the public ones answer; inference
    (v1 and v2) needs the prediction token; everything else needs the admin token."""
    c, _ = client
    spec = c.get("/openapi.json").json()
    checked = 0
    for path, methods in spec["paths"].items():
        url = re.sub(r"\{[^}]+\}", "1", path)
        for method in methods:
            r = c.request(method.upper(), url)
            if (method, path) in PUBLIC:
                assert r.status_code != 401, (method, path)
                continue
            checked += 1
            assert r.status_code == 401, (method, path, r.status_code, r.text)
            inference = path.startswith(("/v1/predict", "/v2")) or path.endswith("/predict")
            wrong = c.request(method.upper(), url, headers={"authorization": f"Bearer {ADMIN if inference else PREDICT}"})
            assert wrong.status_code == 403, (method, path, wrong.status_code)  # the other token does not do
    assert checked >= 18


def test_admin_bodies_are_bounded_as_they_arrive(client):
    """A 22 MB job request (issue 13) is cut off at 1 MB, declared or chunked; nothing is queued."""
    c, _ = client
    admin = {"authorization": f"Bearer {ADMIN}", "content-type": "application/json"}
    huge = json.dumps({"dataset": "synthetic", "options": {"synthetic_train": 1}, "pad": "x" * (2 << 20)}).encode()
    declared = c.post("/v1/jobs", content=huge, headers=admin)
    assert declared.status_code == 413 and "larger than the limit" in declared.json()["error"]
    chunked = c.post("/v1/jobs", content=iter([huge[i:i + 65536] for i in range(0, len(huge), 65536)]),
                     headers=admin)
    assert chunked.status_code == 413, chunked.text
    reason = c.post("/v1/models/default/versions/1/deploy", json={"reason": "r" * 5000}, headers=admin)
    assert reason.status_code == 422  # a reason is at most 2,000 characters
    assert c.get("/v1/jobs", headers=admin).json()["jobs"] == []
