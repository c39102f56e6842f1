"""Test-time flip: the exported graph averaging each image with its mirror, and the measured
choice of whether a model gets it."""

import json

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image
from torch import nn

from app.card import ModelCard
from training.config import TrainConfig
from training.data import preprocessing
from training.export import choose_test_time_flip, export_checkpoint, parity_inputs


def outputs(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})


def test_a_mirrored_export_is_the_mean_of_each_image_and_its_mirror(tiny_model, tmp_path):
    mirrored = export_checkpoint(tiny_model.checkpoint, tmp_path / "export", settings={"test_time_flip": True})
    card = json.loads((mirrored / "card.json").read_text())
    assert card["test_time_flip"] == {"on": True, "decided_by": "setting"} and card["parity"]["same_top1"]
    assert "top1_one_pass" in card["metrics"]  # the card's top1 is the averaged graph's, as it serves
    assert ModelCard.load(mirrored / "card.json").test_time_flip and not ModelCard.load(tiny_model.export / "card.json"
                                                                                       ).test_time_flip
    x = parity_inputs(tiny_model.config, count=6)
    plain = outputs(tiny_model.export / "model.onnx", x)
    mirror = outputs(tiny_model.export / "model.onnx", np.ascontiguousarray(x[..., ::-1]))
    logits, cams, features, foreground = outputs(mirrored / "model.onnx", x)
    np.testing.assert_allclose(logits, (plain[0] + mirror[0]) / 2, atol=1e-4)
    np.testing.assert_allclose(cams, (plain[1] + mirror[1][..., ::-1]) / 2, atol=1e-4)  # mirror's map flipped back
    np.testing.assert_allclose(features, (plain[2] + mirror[2]) / 2, atol=1e-4)
    np.testing.assert_allclose(foreground, (plain[3] + mirror[3][..., ::-1]) / 2, atol=1e-4)
    np.testing.assert_allclose(cams.mean(axis=(2, 3)), logits, atol=1e-4)  # the CAM still explains the score
    assert not np.allclose(logits, plain[0], atol=1e-3)  # the mirror really changed something


class LeftHalf(nn.Module):
    """Says `blob` where the left half of the image has a white patch, `plain` elsewhere."""

    def forward(self, x):
        s = x[..., :8].amax(dim=(1, 2, 3)) - 0.5  # white: (1 - 0.5) / 0.25 = 2; grey: ~0
        return torch.stack([s, -s], dim=1)


class LeftBrighter(nn.Module):
    """Says `left` where the left half is brighter: its mirror is the other class."""

    def forward(self, x):
        d = x[..., :8].mean(dim=(1, 2, 3)) - x[..., 8:].mean(dim=(1, 2, 3))
        return torch.stack([d, -d], dim=1)


def folder(root, classes):
    for split in ("train", "val"):
        for label, images in classes.items():
            (root / split / label).mkdir(parents=True)
            for i, image in enumerate(images):
                Image.fromarray(image).save(root / split / label / f"{i}.png")
    return TrainConfig(data=f"folder:{root}", image_size=16, test_time_flip=None)


def grey_with(*patches):
    image = np.full((16, 16, 3), 128, np.uint8)
    for x in patches:
        image[6:10, x:x + 4] = 255
    return image


def test_the_flip_is_measured_on_the_validation_images_and_kept_only_where_it_pays(tmp_path):
    # a patch on the right is missed alone and found with the mirror: averaging mends a quarter
    cfg = folder(tmp_path / "patches", {"blob": [grey_with(2), grey_with(10)] * 4, "plain": [grey_with()] * 8})
    found = choose_test_time_flip(LeftHalf(), cfg, preprocessing(cfg))
    assert found == {"on": True, "decided_by": "validation", "images": 16, "val_top1": 0.75, "val_top1_averaged": 1.0}
    # where the mirror is the other class, averaging cancels the answer: off
    cfg = folder(tmp_path / "sides", {"left": [grey_with(0, 4)] * 6, "right": [grey_with(8, 12)] * 6})
    lateral = choose_test_time_flip(LeftBrighter(), cfg, preprocessing(cfg))
    assert lateral["on"] is False and lateral["val_top1"] == 1.0 and lateral["val_top1_averaged"] == 0.5
    assert choose_test_time_flip(LeftBrighter(), cfg.replace(test_time_flip=False), preprocessing(cfg)) == {
        "on": False, "decided_by": "setting"}


def test_a_job_judges_a_mirrored_model_by_what_it_will_serve(tmp_path):
    from app.jobspec import JobSpec
    from training.compare import evaluate_onnx
    from training.job import config_for, run_job

    spec = JobSpec(run_dir=str(tmp_path / "run"), data="synthetic", settings={
        "architecture": "resnet8", "image_size": 32, "synthetic_train": 128, "synthetic_val": 64, "max_steps": 3,
        "warmup_steps": 0, "test_time_flip": True})
    result = run_job(spec)
    assert json.loads((tmp_path / "run" / "export" / "card.json").read_text())["test_time_flip"]["on"] is True
    served = evaluate_onnx(result.export, config_for(spec))
    assert result.metrics["top1"] == served["top1"] and result.metrics["gt_known_loc"] == served["gt_known_loc"]
    assert "top1_one_pass" in result.metrics  # what training measured on the image alone
