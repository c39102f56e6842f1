"""The served CAM against a torch reference, batching, and coordinates through crop and EXIF."""

import asyncio
import io

import numpy as np
import pytest
import torch
from PIL import Image

from app.predictor import Options, standalone
from app.settings import Settings
from tests.conftest import shape_jpeg
from training.train import load_checkpoint_model


def run(coro):
    return asyncio.run(coro)


async def with_predictor(tiny_model, fn, **settings):
    async with standalone(Settings(registry=tiny_model.registry, **settings)) as predictor:
        return await fn(predictor)


async def answer(predictor, uploads, top_k):
    return (await predictor.predict(uploads, Options(top_k=top_k))).model_dump()


def test_served_cam_equals_torch_reference(tiny_model):
    data = shape_jpeg(index=3)

    async def go(predictor):
        answered = await answer(predictor, [("a.jpg", data)], 8)
        return predictor.store.get(answered["id"]).images[0], answered

    stored, answered = run(with_predictor(tiny_model, go))
    model, ckpt = load_checkpoint_model(tiny_model.checkpoint)
    image = Image.open(io.BytesIO(data)).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR)
    x = (torch.from_numpy(np.asarray(image)).permute(2, 0, 1)[None].float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        reference = model.forward_cam(model.forward_features(x))[0].numpy()
    assert np.abs(stored.cams - reference).max() <= 1e-4
    top = answered["results"][0]["predictions"][0]
    assert top["index"] == int(reference.mean(axis=(1, 2)).argmax())


def test_batched_and_unbatched_answers_are_the_same(tiny_model):
    images = [shape_jpeg(index=i) for i in range(8)]

    async def go(predictor):
        answers = await asyncio.gather(*(answer(predictor, [(f"{i}", d)], 3) for i, d in enumerate(images)))
        return [a["results"][0] for a in answers]

    batched = run(with_predictor(tiny_model, go, batching=True, max_batch_wait_ms=50, max_batch_size=8))
    single = run(with_predictor(tiny_model, go, batching=False))
    assert max(r["timings"]["batch_size"] for r in batched) > 1
    assert all(r["timings"]["batch_size"] == 1 for r in single)
    for a, b in zip(batched, single):
        for pa, pb in zip(a["predictions"], b["predictions"]):
            assert pa["index"] == pb["index"] and pa["score"] == pytest.approx(pb["score"], abs=1e-5)
            assert pa["boxes"] == pb["boxes"]


def test_boxes_map_back_through_crop_and_exif_rotation(tiny_model):
    """A wide image whose centre square is the model's window: the CAM box of a label, found on the
    plain image, must be the same box in the rotated-on-display copy once rotated back."""
    base = Image.open(io.BytesIO(shape_jpeg(index=5))).convert("RGB")
    wide = Image.new("RGB", (128, 64), (128, 128, 128))
    wide.paste(base, (32, 0))
    plain = io.BytesIO()
    wide.save(plain, "PNG")
    stored_rotated = wide.transpose(Image.Transpose.ROTATE_270)  # stored sideways...
    exif = Image.Exif()
    exif[0x0112] = 8  # ...and displayed after rotating 90 degrees counter-clockwise... back to `wide`
    rotated = io.BytesIO()
    stored_rotated.save(rotated, "JPEG", exif=exif, quality=100, subsampling=0)

    async def go(predictor):
        a = await answer(predictor, [("plain", plain.getvalue())], 1)
        b = await answer(predictor, [("rotated", rotated.getvalue())], 1)
        return a["results"][0], b["results"][0]

    a, b = run(with_predictor(tiny_model, go))
    assert (b["width"], b["height"]) == (128, 64)
    box_a, box_b = a["predictions"][0]["boxes"][0], b["predictions"][0]["boxes"][0]
    assert 32 - 1 <= box_a["x0"] and box_a["x1"] <= 96 + 1  # inside the centre window
    for k in ("x0", "y0", "x1", "y1"):
        assert box_a[k] == pytest.approx(box_b[k], abs=4), k


def test_lean_cpu_session_computes_what_the_optimizing_session_does(tiny_model):
    import onnxruntime as ort

    from app.engine import open_session
    from app.registry import Registry

    model = Registry(tiny_model.registry).version_dir("default", 1) / "model.onnx"
    x = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    outputs = []
    for lean in (True, False):
        session = open_session(model, ["CPUExecutionProvider"], "all", lean=lean)
        level = session.get_session_options().graph_optimization_level
        # the lean session runs the graph the optimizing one wrote, with nothing left to optimize
        assert level == (ort.GraphOptimizationLevel.ORT_DISABLE_ALL if lean else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        outputs.append(session.run(["logits", "cam"], {"input": x}))
    for lean_out, plain_out in zip(*outputs):
        assert lean_out.shape == plain_out.shape
        np.testing.assert_allclose(lean_out, plain_out, rtol=0, atol=1e-5)


def test_a_starting_service_removes_the_scratch_of_loads_that_never_finished(tiny_model, tmp_path, monkeypatch):
    """Loads keep their scratch under the data root (tmp/); what a killed load left there, or in the
    system's temporary folder, goes at the next start."""
    import os
    import tempfile
    import time

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "system"))
    data_root = tmp_path / "data"
    stale = [tmp_path / "system" / "rescam-ort-killed", data_root / "tmp" / "rescam-ort-killed"]
    fresh = data_root / "tmp" / "rescam-ort-loading-now"
    for folder in (*stale, fresh):
        folder.mkdir(parents=True)
        (folder / "optimized.onnx").write_bytes(b"x" * 1000)
        if folder != fresh:
            os.utime(folder, (time.time() - 3600,) * 2)

    from app.live_models import LiveModels
    from app.settings import Settings

    async def start() -> int:
        models = LiveModels(Settings(registry=tiny_model.registry, data_root=data_root, registry_poll_s=0))
        await models.start()
        return models.live().version

    assert run(start()) == 1
    assert not any(f.exists() for f in stale) and fresh.exists()  # another worker's load is left alone
    assert (data_root / "tmp").is_dir() and not list((tmp_path / "system").iterdir())
