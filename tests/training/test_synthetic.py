import numpy as np

from training.synthetic import CLASSES, generate, render


def test_generator_is_deterministic_per_seed_split_and_index():
    a, b = render(3, "train", 17), render(3, "train", 17)
    assert np.array_equal(a.image, b.image) and a.label == b.label and a.box == b.box
    assert not np.array_equal(render(3, "train", 18).image, a.image)
    assert not np.array_equal(render(3, "val", 17).image, a.image)
    assert not np.array_equal(render(4, "train", 17).image, a.image)


def test_every_box_is_exactly_the_extent_of_the_drawn_object():
    for i in range(60):
        s = render(0, "train", i, size=48)
        ys, xs = np.nonzero(s.mask)
        assert s.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        # The object is the only difference from the same image drawn without it, and it
        # reaches every side of its box.
        empty = render(0, "train", i, size=48, with_object=False)
        changed = np.any(s.image != empty.image, axis=-1)
        assert not changed[~s.mask].any()
        x0, y0, x1, y1 = s.box
        inside = changed[y0:y1, x0:x1]
        assert inside[:, 0].any() and inside[:, -1].any() and inside[0].any() and inside[-1].any()


def test_objects_cover_the_size_range_and_every_class():
    images, labels, boxes = generate(1, "train", 400, size=64)
    assert images.shape == (400, 64, 64, 3) and images.dtype == np.uint8
    assert set(labels.tolist()) == set(range(len(CLASSES))) and len(CLASSES) >= 8
    extent = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / 64
    assert extent.min() < 0.25 and extent.max() > 0.6 and extent.max() <= 0.75  # 70% plus a pixel of rasterisation


def test_parallel_generation_equals_serial_in_a_process_that_holds_threads():
    """As the trainer and the evaluation of a model run it: from a process whose torch and ONNX
    Runtime thread pools have run (where a forked worker could wait on a held lock for ever), the
    parallel path gives the serial path's bytes."""
    import subprocess
    import sys
    from pathlib import Path

    from training.synthetic import PARALLEL_FROM

    code = ("import hashlib, torch, onnxruntime as ort\n"
            "from training.synthetic import generate\n"
            "ort.InferenceSession('app/default_model/model.onnx').run(None, {'input': torch.rand(64, 3, 64, 64).numpy()})\n"
            "torch.rand(512, 512) @ torch.rand(512, 512)\n"
            f"for w in (1, 2):\n"
            f"    arrays = generate(5, 'val', {PARALLEL_FROM}, size=24, start=40, workers=w)\n"
            "    print(hashlib.sha256(b''.join(a.tobytes() for a in arrays)).hexdigest())")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    serial, parallel = out.stdout.split()
    assert serial == parallel
