"""The open-world verdict through the service: every answer carries it, OIP v2 and /metrics show it,
an older version without its files keeps serving and says it cannot tell, and a version whose OOD
file is missing or damaged is listed as broken and never loaded."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from app.registry import CARD_FILE, MODEL_FILE, Registry
from app.scoring import OOD_FILE
from tests.conftest import client_for, image_bytes, shape_jpeg
from training.open_world import neighbours

TOKEN = "open-world-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def old_export(export, where):
    """The tiny model as a version exported before open-world scoring (and the foreground map): no
    `features` or `foreground` output in its graph, no calibration or ood in its card, no OOD file,
    a CAM box rule."""
    shutil.copytree(export, where)
    (where / OOD_FILE).unlink()
    proto = onnx.load(str(where / MODEL_FILE))
    kept = [o for o in proto.graph.output if o.name not in ("features", "foreground")]
    del proto.graph.output[:]
    proto.graph.output.extend(kept)
    onnx.save(proto, str(where / MODEL_FILE))
    card = json.loads((where / CARD_FILE).read_text())
    card.pop("calibration"), card.pop("ood"), card.pop("foreground")
    if card["cam"]["rule"].startswith("pc1:"):
        card["cam"]["rule"] = f"threshold:{card['cam']['best_threshold']}"
    (where / CARD_FILE).write_text(json.dumps(card))
    return where


@pytest.fixture
def registry(tiny_model, tmp_path):
    """v1: the tiny model; v2: the same exported before open world; v3: its OOD file damaged;
    v4: its OOD file gone."""
    reg = Registry(tmp_path / "registry")
    reg.register("default", tiny_model.export)
    reg.register("default", old_export(tiny_model.export, tmp_path / "old"))
    for _ in (3, 4):
        reg.register("default", tiny_model.export)
    ood = reg.version_dir("default", 3) / OOD_FILE
    ood.write_bytes(ood.read_bytes()[:-8] + b"\0" * 8)
    (reg.version_dir("default", 4) / OOD_FILE).unlink()
    reg.deploy("default", 1, actor="test")
    return reg


def test_the_tiny_models_card_and_files_carry_calibration_and_its_ood_detector(tiny_model):
    card = tiny_model.card
    assert card["outputs"] == {"logits": "logits", "cam": "cam", "features": "features", "foreground": "foreground"}
    cal, ood = card["calibration"], card["ood"]
    assert cal["temperature"] > 0 and cal["images"] == 64 and 0 <= cal["ece_after"] <= 1
    assert 0 <= cal["ece_by_chance"] < 0.5  # 64 images judge calibration only roughly
    assert ood["method"] == "knn" and ood["k"] == neighbours(512, ood["training_images"]) and ood["tpr"] == 0.95
    assert ood["fit_images"] == 512 and ood["features"] == 16 + 32 + 64  # resnet8's three stages
    assert (tiny_model.export / OOD_FILE).stat().st_size == ood["bytes"]
    assert {"noise", "colour fields"} <= set(ood["battery"]) and 0 <= ood["battery_auroc"] <= 1


def test_every_answer_says_whether_the_image_is_one_of_the_models_classes(registry):
    with client_for(registry, TOKEN) as c:
        body = c.post("/v1/predict?top_k=3", content=shape_jpeg(), headers={"content-type": "image/jpeg"}).json()
        [result] = body["results"]
        ow = result["open_world"]
        k = json.loads((registry.version_dir("default", 1) / CARD_FILE).read_text())["ood"]["k"]
        assert ow["method"].startswith(f"knn (k={k}, ") and ow["calibrated"] is True and ow["temperature"] > 0
        assert isinstance(ow["unknown"], bool) and ow["unknown"] == (ow["ood_score"] > ow["threshold"])
        for p in result["predictions"]:
            assert 0 <= p["score"] <= 1 and 0 <= p["raw_score"] <= 1 and p["cam_url"]  # the CAM stays viewable
        metrics = c.get("/metrics").text
        assert 'rescam_open_world_answers_total{model="default",verdict="' in metrics


def test_the_shipped_model_calls_a_photograph_unknown_and_a_new_shape_known(tmp_path):
    """The README's first request, a photograph, through the service with the default model."""
    import io

    import skimage.data
    from PIL import Image

    from training.cli import shipped_model_dir

    reg = Registry(tmp_path / "registry")
    reg.deploy("default", reg.register("default", shipped_model_dir()))
    with client_for(reg, TOKEN) as c:
        def verdict(data: bytes) -> dict:
            r = c.post("/v1/predict", content=data, headers={"content-type": "image/png"})
            return r.json()["results"][0]

        for name in ("chelsea", "astronaut", "coffee", "rocket"):
            buf = io.BytesIO()
            Image.fromarray(getattr(skimage.data, name)()).save(buf, "PNG")
            cat = verdict(buf.getvalue())
            assert cat["open_world"]["unknown"] is True, (name, cat["open_world"])
            assert cat["predictions"][0]["cam_url"]  # its best guess's map is still there to look at
        assert verdict(image_bytes("PNG", size=(64, 64), seed=3))["open_world"]["unknown"] is True  # noise
        known = [verdict(shape_jpeg(index=i, size=96))["open_world"]["unknown"] for i in range(20)]
        assert sum(known) <= 3  # at most 5% of new shapes are called unknown (95% TPR with 95% confidence)
        assert 'verdict="unknown",version="1"' in c.get("/metrics").text


def test_oip_v2_gives_the_ood_score_and_the_verdict(registry):
    with client_for(registry, TOKEN) as c:
        meta = c.get("/v2/models/default").json()
        assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {
            "logits": "FP32", "cam": "FP32", "features": "FP32", "foreground": "FP32", "ood_score": "FP32",
            "unknown": "BOOL"}
        x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
        r = c.post("/v2/models/default/infer", json={"inputs": [{"name": "input", "shape": [2, 3, 32, 32],
                   "datatype": "FP32", "data": x.ravel().tolist()}], "outputs": [{"name": "ood_score"},
                                                                                {"name": "unknown"}]})
        assert r.status_code == 200, r.text
        out = {o["name"]: o for o in r.json()["outputs"]}
        assert out["ood_score"]["shape"] == [2] and out["unknown"]["datatype"] == "BOOL"
        assert all(isinstance(v, bool) for v in out["unknown"]["data"])


def test_an_older_version_keeps_serving_and_says_it_cannot_tell(registry):
    with client_for(registry, TOKEN) as c:
        assert c.post("/v1/models/default/versions/2/deploy", headers=AUTH).status_code == 200
        body = c.post("/v1/predict", content=shape_jpeg(), headers={"content-type": "image/jpeg"}).json()
        assert body["model"]["version"] == 2
        ow = body["results"][0]["open_world"]
        assert ow == {"unknown": None, "ood_score": ow["ood_score"], "threshold": None, "method": "energy",
                      "calibrated": False, "temperature": None}
        p = body["results"][0]["predictions"][0]
        assert p["score"] == p["raw_score"]
        assert [o["name"] for o in c.get("/v2/models/default").json()["outputs"]] == ["logits", "cam", "ood_score"]
        assert 'verdict="unscored",version="2"' in c.get("/metrics").text


def test_a_version_with_a_damaged_or_missing_ood_file_is_broken_and_never_loads(registry):
    with client_for(registry, TOKEN) as c:
        listed = {v["version"]: v for v in c.get("/v1/models/default/versions").json()["versions"]}
        assert listed[1]["broken"] is None
        assert "OOD file ood.npz is not the one its card names" in listed[3]["broken"]
        assert "OOD file ood.npz cannot be read" in listed[4]["broken"]
        for v in (3, 4):
            r = c.post(f"/v1/models/default/versions/{v}/deploy", headers=AUTH)
            assert r.status_code == 409 and "v1 keeps serving" in r.json()["error"]
        ok = c.post("/v1/predict", content=shape_jpeg(), headers={"content-type": "image/jpeg"})
        assert ok.status_code == 200 and ok.json()["model"]["version"] == 1
        assert c.get("/v1/models/default/versions/3").status_code == 200  # shown, as broken, not a 500
