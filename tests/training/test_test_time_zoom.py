"""Test-time zoom: the exported graph's second look around the object its CAM finds, the crop's CAM
put back in place, and the measured choice of whether a model gets it."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from app.card import ModelCard
from training import zoom
from training.config import TrainConfig
from training.data import preprocessing
from training.export import choose_test_time_zoom, export_checkpoint, parity_inputs


def outputs(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})


def test_the_window_centres_on_the_heat_and_stays_inside_the_image():
    cam = torch.full((2, 1, 8, 8), -1.0)
    cam[0, 0, 0:2, 0:2] = 5.0  # heat in the top-left corner: the smallest window, pushed inside
    cam[1] = 1.0  # heat everywhere: a window as wide as the spread allows, centred
    cx, cy, half = zoom.window(torch.zeros(2, 1), cam)
    assert half[0] == pytest.approx(zoom.SIDE[0]) and cx[0] == pytest.approx(-0.6) and cy[0] == pytest.approx(-0.6)
    spread = float(np.sqrt(np.mean(((np.arange(8) + 0.5) / 4 - 1) ** 2)))  # of 8 cell centres in [-1, 1]
    assert half[1] == pytest.approx(zoom.SPREAD / 2 * spread, rel=1e-5) and (cx[1], cy[1]) == (0.0, 0.0)
    assert ((cx.abs() + half <= 1 + 1e-6) & (cy.abs() + half <= 1 + 1e-6)).all()


def test_a_crop_is_the_window_resized_and_the_whole_image_is_itself():
    x = torch.rand(1, 3, 16, 16)
    zero, whole = torch.zeros(1), torch.ones(1)
    torch.testing.assert_close(zoom.crop(x, zero, zero, whole), x)
    quarter = zoom.crop(x, -0.5 * whole, -0.5 * whole, 0.5 * whole)  # the top-left quarter, twice the size
    resized = F.interpolate(x[..., :8, :8], scale_factor=2, mode="bilinear", align_corners=False)
    # alike but for the last row and column, where the crop reads the image's next pixels, not its own edge
    torch.testing.assert_close(quarter[..., :15, :15], resized[..., :15, :15])


def test_a_crops_cam_put_back_keeps_its_mean_and_lies_where_the_crop_came_from():
    cam, bias = torch.rand(1, 3, 8, 8) * 4, torch.tensor([0.5, -1.0, 2.0])
    zero, whole = torch.zeros(1), torch.ones(1)
    torch.testing.assert_close(zoom.put_back(cam, bias, zero, zero, whole), cam)
    placed = zoom.put_back(cam, bias, -0.5 * whole, -0.5 * whole, 0.5 * whole)  # from the top-left quarter
    torch.testing.assert_close(placed.mean((2, 3)), cam.mean((2, 3)), rtol=0.02, atol=0.0)
    torch.testing.assert_close(placed[..., 4:, :], bias[None, :, None, None].expand(1, 3, 4, 8))
    torch.testing.assert_close(placed[..., :, 4:], bias[None, :, None, None].expand(1, 3, 8, 4))


def test_a_zoomed_export_serves_a_cam_that_explains_its_score(tiny_model, tmp_path):
    zoomed = export_checkpoint(tiny_model.checkpoint, tmp_path / "export", settings={"test_time_zoom": True})
    card = json.loads((zoomed / "card.json").read_text())
    assert card["test_time_zoom"] == {"on": True, "decided_by": "setting"} and card["parity"]["same_top1"]
    assert "top1_one_pass" in card["metrics"]  # the card's top1 is the graph's as it serves
    assert ModelCard.load(zoomed / "card.json").test_time_zoom
    assert not ModelCard.load(tiny_model.export / "card.json").test_time_zoom
    x = parity_inputs(tiny_model.config, count=6)
    plain = outputs(tiny_model.export / "model.onnx", x)
    logits, cams, features, foreground = outputs(zoomed / "model.onnx", x)
    np.testing.assert_allclose(cams.mean(axis=(2, 3)), logits, atol=1e-4)  # the CAM still explains the score
    np.testing.assert_allclose(features, plain[2], atol=1e-5)  # the open world reads the image itself
    np.testing.assert_allclose(foreground, plain[3], atol=1e-4)  # and so do the pc1 boxes
    assert not np.allclose(logits, plain[0], atol=1e-3)  # the second look really changed something
    one = outputs(zoomed / "model.onnx", x[:1])  # each image's answer is its own, whatever the batch
    np.testing.assert_allclose(one[0], logits[:1], atol=1e-4)


class Spot(nn.Module):
    """A stand-in network: its feature map is the image's brightness, 2x2 cells pooled; `spot` scores
    the map's mean less 0.07, `plain` 0. A 2x2 white spot on a 16 px image averages to 0.03 (missed);
    seen again from close up it covers ten times the share (found). `detect` lowers the bar."""

    def __init__(self, bar: float = 0.07) -> None:
        super().__init__()
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[0.0], [1.0]]))  # classes in folder order: plain, spot
            self.fc.bias.copy_(torch.tensor([0.0, -bar]))

    def forward_stages(self, x):
        return [F.avg_pool2d(x[:, :1], 2)]

    def forward_head(self, features):
        return self.fc(features.mean((2, 3)))

    def forward_cam(self, features):
        return F.conv2d(features, self.fc.weight[:, :, None, None], self.fc.bias)


def spots(tmp_path):
    def image(at=None):
        picture = np.full((16, 16, 3), 128, np.uint8)  # grey: 0 once normalised
        if at is not None:
            picture[at[0]:at[0] + 2, at[1]:at[1] + 2] = 255
        return picture

    corners = [(2, 2), (2, 12), (12, 4), (8, 8)]
    for split in ("train", "val"):
        for label, images in (("plain", [image()] * 4), ("spot", [image(at) for at in corners])):
            (tmp_path / split / label).mkdir(parents=True)
            for i, picture in enumerate(images):
                Image.fromarray(picture).save(tmp_path / split / label / f"{i}.png")
    return TrainConfig(data=f"folder:{tmp_path}", image_size=16, test_time_zoom=None)


def test_the_zoom_is_measured_on_the_validation_images_and_kept_only_where_it_pays(tmp_path):
    cfg = spots(tmp_path)
    prep = preprocessing(cfg)
    # the spots are missed in one look and found in two: on
    found = choose_test_time_zoom(Spot(), cfg, prep, None, mirror=False)
    assert found == {"on": True, "decided_by": "validation", "images": 8, "val_top1": 0.5, "val_top1_zoomed": 1.0}
    # a model that finds them in one look gains nothing from a second: off, as it would double the cost
    sharp = choose_test_time_zoom(Spot(bar=0.01), cfg, prep, None, mirror=False)
    assert sharp["on"] is False and sharp["val_top1"] == 1.0 and sharp["val_top1_zoomed"] == 1.0
    assert choose_test_time_zoom(Spot(), cfg.replace(test_time_zoom=False), prep, None, mirror=False) == {
        "on": False, "decided_by": "setting"}


def test_a_float16_export_looks_once_and_says_why(tiny_model, tmp_path):
    half = export_checkpoint(tiny_model.checkpoint, tmp_path / "export", precision="float16",
                             settings={"test_time_zoom": True})
    card = ModelCard.load(half / "card.json")
    assert card.precision == "float16" and not card.test_time_zoom
    assert card.extra["test_time_zoom"]["left_off"].startswith("float16")
    plain = outputs(tiny_model.export / "model.onnx", parity_inputs(tiny_model.config, count=8))
    served = outputs(half / "model.onnx", parity_inputs(tiny_model.config, count=8))
    np.testing.assert_allclose(served[0], plain[0], atol=0.05 * np.abs(plain[0]).max())  # one look, as float32's
