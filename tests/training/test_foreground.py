"""The foreground map: the last feature map's first principal component, its sign, its graph output."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from app.cam import BoxRule, Geometry, class_boxes, iou
from training import foreground
from training.export import parity_inputs
from training.train import load_checkpoint_model

SIDE = 12


class Painted(nn.Module):
    """Stands in for a ResNet: its last feature map is noise everywhere and, inside each image's
    object square, a fixed pattern over the channels (what an object's features look like against a
    background's); its CAM of every class is channel 0."""

    def __init__(self, squares: list[tuple[int, int, int, int]], pattern: torch.Tensor, seed: int) -> None:
        super().__init__()
        self.squares, self.pattern = squares, pattern
        self.generator = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.zeros(1))
        self.seen = 0

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        n, c = len(x), len(self.pattern)
        f = 0.3 * torch.randn(n, c, SIDE, SIDE, generator=self.generator)
        for i in range(n):
            x0, y0, x1, y1 = self.squares[self.seen + i]
            f[i, :, y0:y1, x0:x1] += self.pattern[:, None, None]
        self.seen += n
        return [f]

    def forward_cam(self, f: torch.Tensor) -> torch.Tensor:
        return f[:, :1].repeat(1, 3, 1, 1)


def test_the_direction_is_the_objects_pattern_signed_towards_the_cam_and_its_map_boxes_the_object():
    rng = np.random.default_rng(0)
    pattern = torch.tensor([2.0, -1.0, 0.5, 0.0, 1.0, -0.5])
    n = 300
    squares = []
    for _ in range(n):
        w = int(rng.integers(3, 8))
        x0, y0 = (int(v) for v in rng.integers(0, SIDE - w, size=2))
        squares.append((x0, y0, x0 + w, y0 + w))
    model = Painted(squares, pattern, seed=int(rng.integers(1 << 30)))
    found = foreground.fit(model, np.zeros((n, 3, 4, 4), np.float32), rng.integers(0, 3, n), batch=64)

    unit = (pattern / pattern.norm()).numpy()
    assert abs(float(found.direction @ unit)) > 0.99 and found.direction @ unit > 0  # the sign the CAM agrees with
    assert found.cam_correlation > 0.5 and 0.3 < found.explained <= 1.0

    # a new image: its map, cut by the served default pc1 rule, boxes its object
    model.squares, model.seen = [(2, 3, 9, 10)], 0
    f = model.forward_stages(torch.zeros(1))[0][0].numpy()
    heat = np.einsum("c,chw->hw", found.direction, f) + found.offset
    g = Geometry.full(SIDE * 8, SIDE * 8)
    boxes = class_boxes(np.zeros((3, SIDE, SIDE), np.float32), [0, 2], g, g.image_width, g.image_height,
                        BoxRule.parse("pc1:mass:0.7"), foreground=heat.astype(np.float32))
    assert boxes[0] == boxes[1]  # one map, one box for every label
    assert iou(boxes[0][0].as_list(), [16, 24, 72, 80]) > 0.7


def test_the_graph_gives_the_checkpoint_direction_applied_to_the_last_feature_map(tiny_model):
    card = json.loads((tiny_model.export / "card.json").read_text())
    ckpt = torch.load(tiny_model.checkpoint, map_location="cpu", weights_only=False)
    fitted = foreground.Foreground.from_dict(ckpt["foreground"])
    assert card["foreground"] == fitted.card()
    x = parity_inputs(tiny_model.config, count=6)
    session = ort.InferenceSession(str(tiny_model.export / "model.onnx"), providers=["CPUExecutionProvider"])
    (served,) = session.run(["foreground"], {"input": x})
    model, _ = load_checkpoint_model(tiny_model.checkpoint)
    with torch.no_grad():
        f = model.forward_stages(torch.from_numpy(x))[-1].numpy()
    np.testing.assert_allclose(served, np.einsum("c,nchw->nhw", fitted.direction, f) + fitted.offset, atol=1e-4)


def test_a_pc1_rule_parses_prints_and_refuses_a_map_without_a_rule():
    rule = BoxRule.parse("pc1:mass:0.7")
    assert (rule.name, rule.value, rule.source, str(rule)) == ("mass", 0.7, "pc1", "pc1:mass:0.7")
    assert BoxRule.parse("mass:0.5").source == "cam" and BoxRule.parse("0.3") == BoxRule("threshold", 0.3)
    with pytest.raises(ValueError, match="names a map and no rule"):
        BoxRule.parse("pc1")
    with pytest.raises(ValueError, match="no foreground map"):
        class_boxes(np.zeros((2, 4, 4), np.float32), [0], Geometry.full(4, 4), 4, 4, rule)
