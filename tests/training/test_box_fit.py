"""Training on boxes: masks where the boxes lie in the network's input, moved by the augmentation
as the images are, and a loss that is low only when the true class's CAM sits in the box."""

import json

import torch

from app.cam import Geometry
from training.config import recipe
from training.data import box_masks, geometry_vector, load_data, shift_scale_augment
from training.evaluate import channel_stats, normalize_batch
from training.losses import box_fit_loss
from training.train import load_checkpoint_model, train


def test_box_masks_map_original_pixels_through_the_window():
    # a 200x100 image whose centre 100x100 window became a 10x10 input; box x 60..100, y 20..50
    window = geometry_vector(Geometry(200, 100, 50.0, 0.0, 100.0, 100.0))
    boxes = torch.tensor([[60.0, 20.0, 100.0, 50.0], [float("nan")] * 4])
    masks = box_masks(boxes, torch.stack([window, window]), 10)
    assert masks.shape == (2, 1, 10, 10) and masks[1].sum() == 0
    expected = torch.zeros(10, 10)
    expected[2:5, 1:5] = 1  # input columns 1..4 (original 60..100), rows 2..4 (20..50)
    assert torch.equal(masks[0, 0], expected)


def test_the_augmentation_moves_the_masks_as_it_moves_the_images():
    masks = torch.zeros(6, 1, 32, 32)
    masks[:, :, 8:20, 10:26] = 1
    images = masks.expand(6, 3, 32, 32).clone()  # images that are their masks
    out, moved = shift_scale_augment(images, torch.Generator().manual_seed(3), jitter=0.0, masks=masks)
    plain = shift_scale_augment(images, torch.Generator().manual_seed(3), jitter=0.0)
    assert torch.equal(out, plain)  # the same draws with masks or without
    assert torch.allclose(moved.expand_as(out), out, atol=1e-6)
    assert not torch.allclose(moved, masks)


def test_the_box_fit_loss_prefers_a_cam_inside_the_box():
    masks = torch.zeros(2, 1, 16, 16)
    masks[0, :, 4:12, 4:12] = 1
    labels = torch.tensor([1, 0])
    inside, outside = torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    inside[0, 1, 1:3, 1:3] = 5.0
    outside[0, 1, 0, :] = 5.0
    outside[1, 0] = 9.0  # the second image has no box: whatever its CAM, it does not count
    assert box_fit_loss(inside, labels, masks).item() == 0.0
    assert box_fit_loss(outside, labels, masks).item() > 0.3
    assert box_fit_loss(inside, labels, torch.zeros_like(masks)) is None


def test_a_run_with_boxes_fits_its_cams_to_them(tmp_path):
    """The same short run on boxed shapes with the box-fit loss and without: the one with it ends
    with a clearly smaller box-fit loss on the validation images."""
    cfg = recipe("demo", architecture="resnet8", architecture_kwargs={}, image_size=32, synthetic_train=2048,
                 synthetic_val=256, batch_size=64, epochs=4, warmup_steps=5, augment="shift-scale", lr=0.05)
    fits = {}
    for weight in (0.0, 2.0):
        path = train(cfg.replace(box_loss=weight), tmp_path / f"w{weight}")
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        model, _ = load_checkpoint_model(path)
        val = load_data(cfg).val
        images, labels, boxes, windows = (torch.stack([val[i][j] for i in range(len(val))]) for j in range(4))
        mean, std = channel_stats(cfg, "cpu")
        with torch.no_grad():
            _, cams = model(normalize_batch(images, mean, std), with_cam=True)
        fits[weight] = box_fit_loss(cams, labels, box_masks(boxes, windows, 32)).item()
        assert ckpt["metrics"]["diverged"] is False
        lines = [json.loads(x) for x in (tmp_path / f"w{weight}" / "metrics.jsonl").read_text().splitlines()]
        assert any(r.get("event") == "done" for r in lines)
    assert fits[2.0] < 0.5 * fits[0.0], fits
