"""The default model, trained exactly as `rescam train` trains it: its figures, and CAM's
translation invariance (the label stays) and equivariance (the box moves with the object)."""

import asyncio
import io
import json

import pytest
from PIL import Image, ImageDraw

from app.cam import BoxRule
from app.predictor import Options, standalone
from app.settings import Settings
from tests.conftest import SHORT_RUN_MARGIN
from training.synthetic import CLASSES, _draw_object

pytestmark = pytest.mark.slow


def test_rescam_train_still_reaches_the_shipped_cards_figures(demo_model):
    from training.cli import shipped_model_dir

    shipped = json.loads((shipped_model_dir() / "card.json").read_text())["metrics"]
    m = demo_model.card["metrics"]
    for key, margin in SHORT_RUN_MARGIN.items():
        assert m[key] >= shipped[key] - margin, (key, m[key], shipped[key])


def shifted_pair(kind: str, size: int, radius: float, shift: tuple[int, int]) -> list[bytes]:
    out = []
    for dx, dy in ((0, 0), shift):
        image = Image.new("RGB", (size, size), (40, 60, 90))
        _draw_object(ImageDraw.Draw(image), kind, size * 0.4 + dx, size * 0.4 + dy, radius, 0.3, (240, 200, 60))
        buf = io.BytesIO()
        image.save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def test_translation_keeps_the_label_and_moves_the_box(demo_model):
    size = demo_model.card["preprocessing"]["crop"]
    cell = size / demo_model.card["cam_size"][0]
    shift = (round(size * 0.19), round(size * 0.16))
    calibrated = BoxRule.parse(demo_model.card["cam"]["rule"])  # the service's default box rule
    threshold = calibrated.value if calibrated.name == "threshold" else None

    async def go():
        async with standalone(Settings(registry=demo_model.registry, batching=False)) as predictor:
            results = []
            for kind in ("circle", "square", "triangle", "star", "cross", "hexagon"):
                # objects 44% of the side: the sizes the model reads near-perfectly on validation
                # (smaller shapes are where its 10% of errors lie; BENCHMARKS.md)
                a, b = shifted_pair(kind, size, size * 0.22, shift)
                answers = [(await predictor.predict([(name, data)], Options(1))).model_dump()
                           for name, data in (("a", a), ("b", b))]
                assert [x["box_rule"]["rule"] for x in answers] == [str(calibrated)] * 2
                assert [x["cam_threshold"] for x in answers] == [threshold, threshold]
                ra, rb = (x["results"][0]["predictions"][0] for x in answers)
                results.append((kind, ra, rb))
            return results

    for kind, ra, rb in asyncio.run(go()):
        assert ra["label"] == rb["label"] == kind, (kind, ra["label"], rb["label"])
        box_a, box_b = ra["boxes"][0], rb["boxes"][0]
        for box in (box_a, box_b):  # a box that covers the whole image would localize nothing
            assert (box["x1"] - box["x0"]) * (box["y1"] - box["y0"]) < 0.5 * size * size, (kind, box)
        moved_x = (box_b["x0"] + box_b["x1"] - box_a["x0"] - box_a["x1"]) / 2
        moved_y = (box_b["y0"] + box_b["y1"] - box_a["y0"] - box_a["y1"]) / 2
        assert abs(moved_x - shift[0]) <= cell and abs(moved_y - shift[1]) <= cell, (kind, box_a, box_b)
    assert len(CLASSES) >= 8
