"""Boxes from the foreground map (`pc1:` rules) through the service: one box for every label, drawn
the same on the overlay; a version without the map refuses the rule with a 422 and keeps its CAM
boxes; a card that names a pc1 rule over a graph without the map never goes live."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import onnx
import pytest
from PIL import Image

from app.registry import CARD_FILE, MODEL_FILE, Registry
from tests.conftest import client_for, shape_jpeg

TOKEN = "foreground-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JPEG = {"content-type": "image/jpeg"}


def without_foreground(export, where, rule: str):
    """The tiny model as exported before the foreground map, its card's rule set to `rule`."""
    shutil.copytree(export, where)
    proto = onnx.load(str(where / MODEL_FILE))
    kept = [o for o in proto.graph.output if o.name != "foreground"]
    del proto.graph.output[:]
    proto.graph.output.extend(kept)
    onnx.save(proto, str(where / MODEL_FILE))
    card = json.loads((where / CARD_FILE).read_text())
    card.pop("foreground")
    card["cam"]["rule"] = rule
    (where / CARD_FILE).write_text(json.dumps(card))
    return where


@pytest.fixture
def registry(tiny_model, tmp_path):
    """v1: the tiny model; v2: it without the foreground output; v3: that, its card naming a pc1 rule."""
    reg = Registry(tmp_path / "registry")
    reg.register("default", tiny_model.export)
    reg.register("default", without_foreground(tiny_model.export, tmp_path / "v2", "mass:0.5"))
    reg.register("default", without_foreground(tiny_model.export, tmp_path / "v3", "pc1:mass:0.7"))
    reg.deploy("default", 1, actor="test")
    return reg


def test_a_pc1_rule_gives_every_label_the_same_box_and_the_overlay_draws_it(registry):
    with client_for(registry, TOKEN) as c:
        body = c.post("/v1/predict?top_k=3&box_rule=pc1:mass:0.7", content=shape_jpeg(), headers=JPEG).json()
        assert body["box_rule"] == {"rule": "pc1:mass:0.7", "name": "mass", "value": 0.7, "map": "pc1",
                                    "source": "request"}
        assert body["cam_threshold"] is None
        predictions = body["results"][0]["predictions"]
        boxes = [p["boxes"] for p in predictions]
        assert boxes[0] and all(b == boxes[0] for b in boxes)
        cam_boxes = [p["boxes"] for p in c.post("/v1/predict?top_k=3&box_rule=mass:0.7", content=shape_jpeg(),
                                                headers=JPEG).json()["results"][0]["predictions"]]
        assert cam_boxes != boxes  # the CAM rule cuts each label's own map
        overlay = c.get(predictions[1]["cam_url"])
        assert overlay.status_code == 200
        picture = np.asarray(Image.open(io.BytesIO(overlay.content)).convert("RGB"))
        assert picture.shape[:2] == (64, 64)
        (v2_outputs,) = [[o["name"] for o in c.get("/v2/models/default").json()["outputs"]]]
        assert "foreground" in v2_outputs


def test_a_version_without_the_map_refuses_a_pc1_rule_and_keeps_its_cam_boxes(registry):
    with client_for(registry, TOKEN) as c:
        assert c.post("/v1/models/default/versions/2/deploy", headers=AUTH).status_code == 200
        refused = c.post("/v1/predict?box_rule=pc1:otsu", content=shape_jpeg(), headers=JPEG)
        assert refused.status_code == 422 and "has no foreground map" in refused.json()["error"]
        ok = c.post("/v1/predict", content=shape_jpeg(), headers=JPEG).json()
        assert ok["model"]["version"] == 2 and ok["box_rule"]["rule"] == "mass:0.5"
        assert ok["results"][0]["predictions"][0]["boxes"]
        assert "foreground" not in [o["name"] for o in c.get("/v2/models/default").json()["outputs"]]


def test_a_card_naming_a_pc1_rule_over_a_graph_without_the_map_never_goes_live(registry):
    with client_for(registry, TOKEN) as c:
        r = c.post("/v1/models/default/versions/3/deploy", headers=AUTH)
        assert r.status_code == 409 and "needs a foreground output" in r.json()["error"]
        assert c.post("/v1/predict", content=shape_jpeg(), headers=JPEG).json()["model"]["version"] == 1
