"""The promotion gate's decisions on hand-made figures."""

from training.gate import gate


def test_gate_refusals():
    live = {"top1": 0.90, "gt_known_loc": 0.60, "images_with_boxes": 200, "box_rule": "threshold:0.6",
            "labels": ["a", "b"]}
    good = {"top1": 0.92, "images": 200, "chance_top1": 0.5, "loss": 0.3, "gt_known_loc": 0.61,
            "images_with_boxes": 200, "box_rule": "threshold:0.55"}
    assert gate(good, live, 0.02, ["b", "a"])["passed"]  # the same labels in another order
    assert gate(good, None, 0.02, ["a", "b"])["passed"]
    new_task = gate(good, live, 0.02, ["a", "c"])
    assert not new_task["passed"] and new_task["deployable"] and "new task" in new_task["reason"]
    worse = gate({**good, "top1": 0.85}, live, 0.02, ["a", "b"])
    assert not worse["passed"] and worse["deployable"] and "top-1" in worse["reason"]
    blurrier = gate({**good, "gt_known_loc": 0.50}, live, 0.02, ["a", "b"])
    assert not blurrier["passed"] and "localization" in blurrier["reason"]
    no_boxes = gate({**good, "gt_known_loc": 0.1, "images_with_boxes": 0}, live, 0.02, ["a", "b"])
    assert no_boxes["passed"]  # localization is compared only where both have boxes
    diverged = gate({**good, "loss": float("nan"), "diverged": True}, None, 0.02, ["a", "b"])
    assert not diverged["deployable"] and "diverged" in diverged["reason"]
    # 2 classes, 200 images: 55% right happens by chance (p = 0.09); 62% does not (p < 0.001)
    assert not gate({**good, "top1": 0.55}, None, 0.02, ["a", "b"])["deployable"]
    assert gate({**good, "top1": 0.62}, None, 0.02, ["a", "b"])["deployable"]
    # chance is the most common class's share, not 1 / classes
    assert not gate({**good, "top1": 0.80, "chance_top1": 0.78}, None, 0.02, ["a", "b"])["deployable"]


def test_gate_refuses_a_candidate_that_tells_strangers_apart_worse():
    live = {"top1": 0.90, "labels": ["a", "b"], "ood_auroc": 0.97}
    good = {"top1": 0.92, "images": 200, "chance_top1": 0.5, "loss": 0.3, "ood_auroc": 0.96}
    assert gate(good, live, 0.02, ["a", "b"])["passed"]  # within the margin
    worse = gate({**good, "ood_auroc": 0.90}, live, 0.02, ["a", "b"])
    assert not worse["passed"] and worse["deployable"] and "open world: AUROC" in worse["reason"]
    assert worse["live"]["ood_auroc"] == 0.97 and worse["new"]["ood_auroc"] == 0.90
    older_live = gate({**good, "ood_auroc": 0.5}, {**live, "ood_auroc": None}, 0.02, ["a", "b"])
    assert older_live["passed"]  # compared only where both were measured
