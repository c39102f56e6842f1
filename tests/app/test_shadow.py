"""Shadow trials (issue 24): a candidate answers a share of live requests beside the live version,
nobody sees its answers, the trial records how the two compare, and it promotes through the one
deploy (gate, smoke test, audit)."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.registry import Registry
from app.settings import Settings
from tests.conftest import shape_jpeg

TOKEN = "shadow"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JPEG = {"content-type": "image/jpeg"}
IMAGES = [shape_jpeg(index=i) for i in range(8)]


def staged(tiny_model, tmp_path, name: str, labels=None, gate=None):
    """The tiny model's export, its card's labels replaced or a gate decision added."""
    folder = tmp_path / name
    shutil.copytree(tiny_model.export, folder)
    if labels is not None:
        card = json.loads((folder / "card.json").read_text())
        card["labels"] = labels
        (folder / "card.json").write_text(json.dumps(card))
    if gate is not None:
        (folder / "gate.json").write_text(json.dumps(gate))
    return folder


@pytest.fixture
def registry(tiny_model, tmp_path):
    """v1 live; v2 the same weights; v3 the same weights with every label moved one along (so it
    names another label for every image); v4 marked never deployable by its gate."""
    shutil.copytree(tiny_model.registry, tmp_path / "registry")
    reg = Registry(tmp_path / "registry")
    labels = tiny_model.card["labels"]
    reg.register("default", tiny_model.export)
    reg.register("default", staged(tiny_model, tmp_path, "moved", labels=labels[1:] + labels[:1]))
    reg.register("default", staged(tiny_model, tmp_path, "never", gate={
        "passed": False, "deployable": False, "reason": "top-1 0.10 does not clear chance"}))
    return reg


def client(reg: Registry, **settings) -> TestClient:
    root = reg.root.parent
    return TestClient(create_app(Settings(registry=reg.root, data_root=root / "data", admin_token=TOKEN,
                                          registry_poll_s=0.2, run_jobs=False, **settings)))


def finished(c: TestClient, trial_id: str, images: int, timeout_s: float = 60) -> dict:
    """The trial once it has tried `images` images (its candidate runs after the answers)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        trial = c.get(f"/v1/models/default/trials/{trial_id}", headers=AUTH).json()
        if trial["figures"]["images"] + trial["figures"]["failed"] + trial["skipped"] >= images:
            return trial
        time.sleep(0.05)
    raise AssertionError(f"trial {trial_id} tried too few images: {trial}")


def start(c: TestClient, version: int, **body) -> dict:
    r = c.post("/v1/models/default/trials", json={"version": version, **body}, headers=AUTH)
    assert r.status_code == 201, r.text
    return r.json()


def answers(c: TestClient, trial_id: str | None = None) -> list[tuple[int, list]]:
    """Each image's live answer; with a trial (share 1), each one after the candidate has tried the
    one before, so that none is skipped for the candidate being busy."""
    out = []
    for i, image in enumerate(IMAGES):
        if trial_id is not None:
            finished(c, trial_id, i)
        body = c.post("/v1/predict?top_k=2", content=image, headers=JPEG).json()
        out.append((body["model"]["version"], [(p["label"], p["boxes"]) for p in body["results"][0]["predictions"]]))
    return out


def test_a_trial_of_the_same_weights_agrees_and_promotes_through_the_one_deploy(registry):
    with client(registry) as c:
        trial = start(c, 2, share=1.0, samples=len(IMAGES), reason="retrained on May's data")
        assert trial["state"] == "running" and trial["live_version"] == 1
        assert {v for v, _ in answers(c, trial["id"])} == {1}
        done = finished(c, trial["id"], len(IMAGES))
        f = done["figures"]
        assert done["state"] == "complete" and f["images"] == len(IMAGES) and f["failed"] == done["skipped"] == 0, done
        assert f["top1_agreement"] == 1.0 and f["box_iou_median"] == 1.0, f
        assert f["boxes_compared"] == len(IMAGES) and f["candidate_ms_p50"] > 0 and f["live_ms_p50"] > 0
        assert f["live_unknown_rate"] == f["candidate_unknown_rate"]
        assert 'rescam_shadow_images_total{model="default",outcome="agree",version="2"} 8.0' in c.get("/metrics").text

        promoted = c.post(f"/v1/models/default/trials/{trial['id']}/promote", headers=AUTH)
        assert promoted.status_code == 200 and promoted.json()["state"] == "promoted", promoted.text
        assert c.post("/v1/predict", content=IMAGES[0], headers=JPEG).json()["model"]["version"] == 2
    entry = registry.audit_log("default")[-1]
    assert entry["action"] == "deploy" and entry["version"] == 2 and entry["via"] == f"shadow trial {trial['id']}"
    assert entry["figures"]["top1_agreement"] == 1.0


def test_the_user_never_sees_the_candidate_and_the_trial_sees_it_disagree(registry):
    with client(registry) as c:
        before = answers(c)
        trial = start(c, 3, share=1.0, samples=len(IMAGES))
        assert answers(c, trial["id"]) == before  # the same live answers, labels and boxes, with v3 in shadow
        f = finished(c, trial["id"], len(IMAGES))["figures"]
        assert f["top1_agreement"] == 0.0 and f["images"] == len(IMAGES), f  # v3 names another label each time
        assert c.get("/v1/models/default/trials", headers=AUTH).json()["trials"][0]["id"] == trial["id"]


def test_a_share_of_requests_is_tried(registry):
    with client(registry) as c:
        trial = start(c, 2, share=0.5, samples=1000)
        for _ in range(5):
            answers(c)
        time.sleep(1.0)  # the last candidate tasks
        tried = c.get(f"/v1/models/default/trials/{trial['id']}", headers=AUTH).json()
        seen = tried["figures"]["images"] + tried["skipped"]
        # 40 requests at p = 0.5: 20 expected, sd 3.2; 5 sd either side
        assert 4 <= seen <= 36 and tried["state"] == "running", tried


def test_trials_that_cannot_be_and_a_promotion_the_gate_refuses(registry):
    with client(registry) as c:
        assert c.post("/v1/models/default/trials", json={"version": 2}).status_code == 401
        assert c.post("/v1/models/default/trials", json={"version": 1}, headers=AUTH).status_code == 409  # live
        assert c.post("/v1/models/default/trials", json={"version": 9}, headers=AUTH).status_code == 404
        assert c.post("/v1/models/default/trials", json={"version": 2, "share": 0}, headers=AUTH).status_code == 422
        assert c.post("/v1/models/nobody/trials", json={"version": 2}, headers=AUTH).status_code == 404

        never = start(c, 4, share=1.0, samples=2)
        again = c.post("/v1/models/default/trials", json={"version": 2}, headers=AUTH)
        assert again.status_code == 409 and never["id"] in again.json()["error"]
        refused = c.post(f"/v1/models/default/trials/{never['id']}/promote", headers=AUTH)
        assert refused.status_code == 409 and "does not clear chance" in refused.json()["error"]
        assert c.post("/v1/predict", content=IMAGES[0], headers=JPEG).json()["model"]["version"] == 1
        assert c.get(f"/v1/models/default/trials/{never['id']}", headers=AUTH).json()["state"] == "running"

        stopped = c.post(f"/v1/models/default/trials/{never['id']}/stop", headers=AUTH)
        assert stopped.status_code == 200 and stopped.json()["state"] == "stopped"
        assert c.post(f"/v1/models/default/trials/{never['id']}/stop", headers=AUTH).status_code == 409
        assert c.get("/v1/models/default/trials/nope", headers=AUTH).status_code == 404


def test_a_candidate_that_does_not_load_is_never_tried(registry):
    (registry.version_dir("default", 2) / "model.onnx").write_bytes(b"not a model")
    with client(registry) as c:
        r = c.post("/v1/models/default/trials", json={"version": 2}, headers=AUTH)
        assert r.status_code == 409 and "cannot be tried" in r.json()["error"]
        assert c.get("/v1/models/default/trials", headers=AUTH).json()["trials"] == []
        assert c.post("/v1/predict", content=IMAGES[0], headers=JPEG).status_code == 200
