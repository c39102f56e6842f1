"""Several models in one service (issue 24): each on its own routes and by OIP v2, a bound on how
many are loaded, deploys of one while another serves, jobs that name their model, and the refusals."""

from __future__ import annotations

import json
import re
import shutil
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.registry import Registry
from app.schemas import JobRequest
from app.settings import Settings
from tests.conftest import shape_jpeg

TOKEN = "many-models"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JPEG = {"content-type": "image/jpeg"}


def add_model(registry: Registry, export, name: str, prefix: str, versions: int = 1) -> list[str]:
    """The tiny model under another name, its labels renamed (`prefix`-circle, ...), `versions`
    times, the first deployed: a second model whose answers can be told apart by their labels."""
    staged = export.parent / f"as-{name}"
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(export, staged)
    card = json.loads((staged / "card.json").read_text())
    card["labels"] = [f"{prefix}-{label}" for label in card["labels"]]
    (staged / "card.json").write_text(json.dumps(card))
    for _ in range(versions):
        registry.register(name, staged)
    registry.deploy(name, 1, actor="test")
    return card["labels"]


@pytest.fixture
def three(tiny_model, tmp_path):
    """A registry with the shapes model (`default`) and two more, `birds` (two versions) and `fruit`."""
    shutil.copytree(tiny_model.registry, tmp_path / "registry")
    registry = Registry(tmp_path / "registry")
    labels = {"default": tiny_model.card["labels"], "birds": add_model(registry, tiny_model.export, "birds", "bird", 2),
              "fruit": add_model(registry, tiny_model.export, "fruit", "fruit")}
    return registry, labels, tmp_path


def client_for(root, **settings) -> TestClient:
    return TestClient(create_app(Settings(registry=root / "registry", data_root=root / "data", admin_token=TOKEN,
                                          registry_poll_s=0.2, run_jobs=False, **settings)))


def said(answer: dict) -> tuple[str, list[str]]:
    return answer["model"]["name"], [p["label"] for p in answer["results"][0]["predictions"]]


def test_three_models_answer_on_their_own_routes_and_by_oip_v2(three):
    registry, labels, root = three
    with client_for(root) as c:
        index = c.get("/v1/models").json()
        assert index["default"] == "default" and [m["name"] for m in index["models"]] == ["default", "birds", "fruit"]
        assert all(m["state"] == "serving" and m["serving"] == 1 for m in index["models"]), index
        assert index["models"][1]["routes"]["predict"] == "/v1/models/birds/predict"
        for name in ("default", "birds", "fruit"):
            name_, top = said(c.post(f"/v1/models/{name}/predict?top_k=3", content=shape_jpeg(), headers=JPEG).json())
            assert name_ == name and set(top) <= set(labels[name]), (name, top)
        assert said(c.post("/v1/predict?model=fruit", content=shape_jpeg(), headers=JPEG).json())[0] == "fruit"
        assert said(c.post("/v1/predict", content=shape_jpeg(), headers=JPEG).json())[0] == "default"  # today's clients
        assert c.get("/v1/models/birds/versions").json()["deployed"] == 1
        assert [v["version"] for v in c.get("/v1/models/birds/versions").json()["versions"]] == [1, 2]
        assert c.get("/v1/models/birds/versions/2").json()["card"]["labels"] == labels["birds"]

        x = np.zeros((1, 3, 32, 32), np.float32)
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}],
                "outputs": [{"name": "logits"}]}
        for name in ("default", "birds", "fruit"):
            r = c.post(f"/v2/models/{name}/infer", json=body)
            assert r.status_code == 200 and r.json()["model_name"] == name, r.text
        assert c.get("/v2/models/birds/versions/1/ready").json() == {"name": "birds", "ready": True}
        assert c.get("/v2/models/birds/versions/2").status_code == 404  # v1 serves
        index = c.post("/v2/repository/index").json()
        assert {(m["name"], m["version"], m["state"]) for m in index} == {
            ("default", "1", "READY"), ("birds", "1", "READY"), ("fruit", "1", "READY")}
        ready = c.get("/readyz").json()
        assert ready["ready"] and set(ready["models"]) == {"default", "birds", "fruit"}
        assert set(c.get("/healthz").json()["models"]) == {"default", "birds", "fruit"}
        metrics = c.get("/metrics").text
        assert 'rescam_model_memory_bytes{model="birds",version="1"}' in metrics
        assert re.search(r'rescam_open_world_answers_total\{model="fruit",verdict="\w+",version="1"\} 2\.0', metrics)


def test_unknown_and_bad_model_names_are_refused_with_the_rule(three):
    _, _, root = three
    with client_for(root) as c:
        missing = c.post("/v1/models/cats/predict", content=shape_jpeg(), headers=JPEG)
        assert missing.status_code == 404 and "'default', 'birds', 'fruit'" in missing.json()["error"], missing.text
        assert c.post("/v1/predict?model=cats", content=shape_jpeg(), headers=JPEG).status_code == 404
        assert c.get("/v2/models/cats").status_code == 404
        assert c.get("/v1/models/cats/versions").status_code == 404
        bad = c.post("/v1/models/no.dots/predict", content=shape_jpeg(), headers=JPEG)
        assert bad.status_code == 422 and "letters, digits" in bad.json()["error"], bad.text
        long = c.post("/v1/jobs", json={"dataset": "synthetic", "model": "x" * 65}, headers=AUTH)
        assert long.status_code == 422 and "model" in long.json()["error"]


def test_with_a_bound_of_two_three_models_all_answer(three):
    _, labels, root = three
    with client_for(root, max_loaded_models=2) as c:
        states = {m["name"]: m["state"] for m in c.get("/v1/models").json()["models"]}
        assert states == {"default": "serving", "birds": "serving", "fruit": "standby"}, states
        assert c.get("/readyz").status_code == 200  # a model in standby loads on demand
        first = c.post("/v1/models/fruit/predict", content=shape_jpeg(), headers=JPEG).json()
        assert said(first)[0] == "fruit" and first["model_load_ms"] > 0  # this request waited for the load
        again = c.post("/v1/models/fruit/predict", content=shape_jpeg(), headers=JPEG).json()
        assert again["model_load_ms"] is None
        states = {m["name"]: m["state"] for m in c.get("/v1/models").json()["models"]}
        assert states == {"default": "standby", "birds": "serving", "fruit": "serving"}, states  # least recent out
        for _ in range(2):
            for name in ("default", "birds", "fruit"):
                r = c.post(f"/v1/models/{name}/predict", content=shape_jpeg(), headers=JPEG)
                assert r.status_code == 200 and said(r.json())[0] == name
            assert sum(m["state"] == "serving" for m in c.get("/v1/models").json()["models"]) == 2
        metrics = c.get("/metrics").text
        assert "rescam_loaded_models 2.0" in metrics and 'rescam_model_load_seconds_count{model="fruit"}' in metrics


def test_deploying_one_model_while_another_serves_fails_no_request(three):
    registry, _, root = three
    failures, answered, stop = [], [], threading.Event()
    with client_for(root) as c:
        def traffic():
            while not stop.is_set():
                r = c.post("/v1/models/default/predict?top_k=1", content=shape_jpeg(), headers=JPEG)
                (answered if r.status_code == 200 and said(r.json())[0] == "default" else failures).append(r.status_code)

        threads = [threading.Thread(target=traffic) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            for _ in range(2):
                assert c.post("/v1/models/birds/versions/2/deploy", headers=AUTH).json()["deployed"] == 2
                assert c.post("/v1/models/birds/rollback", headers=AUTH).json()["deployed"] == 1
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert not failures and len(answered) >= 3, (failures, len(answered))
        assert registry.deployed("default") == 1 and registry.deployed("birds") == 1
        assert [e["action"] for e in registry.audit_log("birds")][-4:] == ["deploy", "rollback"] * 2
        assert all(e["action"] != "rollback" for e in registry.audit_log("default"))  # the other model untouched


def test_a_damaged_model_is_listed_as_failed_and_the_others_serve(three):
    registry, _, root = three
    (registry.version_dir("fruit", 1) / "model.onnx").write_bytes(b"not a model")
    with client_for(root) as c:
        fruit = next(m for m in c.get("/v1/models").json()["models"] if m["name"] == "fruit")
        assert fruit["state"] == "failed" and "does not load" in fruit["error"], fruit
        assert c.post("/v1/models/fruit/predict", content=shape_jpeg(), headers=JPEG).status_code == 503
        assert c.post("/v1/models/birds/predict", content=shape_jpeg(), headers=JPEG).status_code == 200
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["models"]["fruit"]["state"] == "failed"
        assert ready.json()["models"]["birds"]["state"] == "serving"


def test_a_service_limited_to_named_models_serves_those(three):
    _, _, root = three
    with client_for(root, models=["birds"], default_model="birds") as c:
        ready = c.get("/readyz").json()
        assert ready["ready"] and list(ready["models"]) == ["birds"] and ready["model"] == "birds"
        assert said(c.post("/v1/predict", content=shape_jpeg(), headers=JPEG).json())[0] == "birds"
        assert c.post("/v1/models/fruit/predict", content=shape_jpeg(), headers=JPEG).status_code == 404  # not named


def write_dataset(root, name: str, classes: list[str]) -> None:
    for c in classes:
        (root / "data" / "datasets" / name / c).mkdir(parents=True)


def test_jobs_name_the_model_their_data_belong_to(three):
    """The model whose live labels are the data set's classes; else a new one named after the data
    set; the one named; the shapes go to the default model. Deleting a version of a model a job
    targets is refused."""
    _, labels, root = three
    write_dataset(root, "more-birds", labels["birds"])
    write_dataset(root, "my.pets", ["cat", "dog"])
    with client_for(root) as c:
        def target(**body):
            r = c.post("/v1/jobs", json=body, headers=AUTH)
            assert r.status_code == 202, r.text
            return r.json()["request"]["model"]

        assert target(dataset="more-birds") == "birds"
        assert target(dataset="my.pets") == "my-pets"  # a new model, named after the data set
        assert target(dataset="my.pets", model="pets") == "pets"
        assert target(dataset="synthetic") == "default"
        busy = c.delete("/v1/models/birds/versions/2", headers=AUTH)
        assert busy.status_code == 409 and "training a candidate for model 'birds'" in busy.json()["error"]
        assert c.delete("/v1/models/fruit/versions/1", headers=AUTH).status_code == 409  # live
    assert JobRequest(dataset="x").model is None


def test_the_model_index_marks_the_default_and_the_bound(three):
    """What the page's model picker shows: every model, the default marked, each with its state and labels."""
    _, labels, root = three
    with client_for(root, max_loaded_models=2) as c:
        index = c.get("/v1/models").json()
        models = {m["name"]: m for m in index["models"]}
        assert models["default"]["default"] and not models["birds"]["default"] and index["max_loaded"] == 2
        assert models["fruit"]["labels"] == labels["fruit"] and models["fruit"]["state"] == "standby"
        assert models["fruit"]["memory_bytes"] is None and models["birds"]["memory_bytes"] >= 0
