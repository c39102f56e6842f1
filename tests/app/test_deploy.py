"""Deploy, rollback and delete through the API: the token, the smoke test, zero-downtime swaps
under traffic, and workers following the registry."""

import shutil
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.registry import Registry
from app.settings import Settings
from tests.conftest import shape_jpeg

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def versions(tiny_model, tmp_path_factory):
    """v1: the tiny model; v2: the same architecture trained with another seed; v3: broken."""
    import torch

    from training.export import export_checkpoint
    from training.train import train

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("deploy")
    checkpoint = train(tiny_model.config.replace(seed=1), root / "run2")
    export2 = export_checkpoint(checkpoint, root / "run2" / "export")
    broken = root / "broken"
    shutil.copytree(export2, broken)
    (broken / "model.onnx").write_bytes(b"this is not an onnx graph")
    return {"v1": tiny_model.export, "v2": export2, "broken": broken}


@pytest.fixture
def registry(versions, tmp_path):
    reg = Registry(tmp_path / "registry")
    for key in ("v1", "v2", "broken"):
        reg.register("default", versions[key])
    reg.deploy("default", 1, actor="test")
    return reg


def client_for(registry, **settings):
    base = dict(registry=registry.root, admin_token=TOKEN, registry_poll_s=0.1, max_batch_wait_ms=2)
    return TestClient(create_app(Settings(**{**base, **settings})))


def predict(client, data):
    r = client.post("/v1/predict?top_k=8&boxes=false&cam=false", content=data, headers={"content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
    body = r.json()
    scores = {p["label"]: p["score"] for p in body["results"][0]["predictions"]}
    return body["model"]["version"], scores


def test_admin_endpoints_need_the_token_and_do_nothing_without_it(registry):
    with client_for(registry) as c:
        assert c.post("/v1/models/default/versions/2/deploy").status_code == 401
        assert c.post("/v1/models/default/versions/2/deploy", headers={"Authorization": "Bearer nope"}).status_code == 403
        assert c.post("/v1/models/default/rollback", headers={"Authorization": "Basic x"}).status_code == 401
        assert c.delete("/v1/models/default/versions/2", headers={"Authorization": "Bearer nope"}).status_code == 403
        assert registry.deployed("default") == 1 and registry.versions("default") == [1, 2, 3]
    with client_for(registry, admin_token=None) as c:
        r = c.post("/v1/models/default/versions/2/deploy", headers=AUTH)
        assert r.status_code == 403 and "RESCAM_ADMIN_TOKEN" in r.json()["error"]
    with client_for(registry, admin_token=None, open_admin_for_local_development=True) as c:
        assert c.post("/v1/models/default/versions/2/deploy").status_code == 200


def test_deploy_rollback_and_delete(registry):
    image = shape_jpeg(index=2)
    with client_for(registry) as c:
        v, scores_v1 = predict(c, image)
        assert v == 1
        r = c.post("/v1/models/default/versions/2/deploy", headers=AUTH, json={"reason": "better"})
        assert r.status_code == 200 and r.json()["deployed"] == 2
        v, scores_v2 = predict(c, image)
        assert v == 2 and scores_v2 != scores_v1
        assert c.delete("/v1/models/default/versions/2", headers=AUTH).status_code == 409  # live
        assert c.post("/v1/models/default/rollback", headers=AUTH).json()["deployed"] == 1
        assert predict(c, image) == (1, scores_v1)
        assert c.delete("/v1/models/default/versions/2", headers=AUTH).status_code == 200
        assert registry.versions("default") == [1, 3]
        audit = registry.audit_log("default")
        assert [e["action"] for e in audit] == ["deploy", "deploy", "rollback", "delete"]
        assert audit[-1]["version"] == 2 and audit[-1]["actor"] == "admin"
        assert registry.audit_log("default")[1]["reason"] == "better"


def test_a_version_that_fails_to_load_never_goes_live(registry):
    with client_for(registry) as c:
        r = c.post("/v1/models/default/versions/3/deploy", headers=AUTH)
        assert r.status_code == 409 and "v1 keeps serving" in r.json()["error"]
        assert registry.deployed("default") == 1
        assert predict(c, shape_jpeg())[0] == 1
        # Even when the pointer is moved behind the service's back, the broken model is refused.
        registry.deploy("default", 3, actor="someone")
        import time

        time.sleep(0.5)
        assert predict(c, shape_jpeg())[0] == 1
        assert "does not load" in c.get("/healthz").json()["load_error"]


def test_the_service_follows_a_deploy_made_elsewhere(registry):
    import time

    with client_for(registry) as c:
        assert predict(c, shape_jpeg())[0] == 1
        registry.deploy("default", 2, actor="other-replica")
        deadline = time.time() + 5
        while predict(c, shape_jpeg())[0] != 2:
            assert time.time() < deadline, "the service did not follow the registry"
            time.sleep(0.05)


def test_zero_failed_requests_across_deploys_and_rollbacks_under_traffic(registry):
    image = shape_jpeg(index=4)
    with client_for(registry) as c:
        _, expected_v1 = predict(c, image)
        c.post("/v1/models/default/versions/2/deploy", headers=AUTH)
        _, expected_v2 = predict(c, image)
        c.post("/v1/models/default/rollback", headers=AUTH)
        expected = {1: expected_v1, 2: expected_v2}
        answers, errors = [], []
        stop = threading.Event()

        def traffic():
            while not stop.is_set():
                try:
                    answers.append(predict(c, image))
                except AssertionError as e:
                    errors.append(str(e))

        threads = [threading.Thread(target=traffic) for _ in range(6)]
        for t in threads:
            t.start()
        import time

        for _ in range(4):
            time.sleep(0.15)
            assert c.post("/v1/models/default/versions/2/deploy", headers=AUTH).status_code == 200
            time.sleep(0.15)
            assert c.post("/v1/models/default/rollback", headers=AUTH).status_code == 200
        deadline = time.time() + 120
        while len(answers) < 300 and time.time() < deadline and not errors:
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert len(answers) >= 300
    assert {v for v, _ in answers} == {1, 2}
    for version, scores in answers:  # each answer is really the output of the version it names
        assert scores.keys() == expected[version].keys()
        assert np.allclose([scores[k] for k in scores], [expected[version][k] for k in scores], atol=1e-5)
