import numpy as np
import pytest

from app.cam import CALIBRATION_MIN_IMAGES, DEFAULT_RULE, BoxRule, Geometry
from training.localization import LocalizationTally


def blob(h, w, y0, y1, x0, x1):
    cam = np.zeros((h, w), dtype=np.float32)
    cam[y0:y1, x0:x1] = 1.0
    return cam


def test_known_answers_for_top1_gt_known_and_max_box_acc():
    g = Geometry.full(8, 8)
    tally = LocalizationTally(served=BoxRule("threshold", 0.5))
    box = np.array([2, 2, 6, 6], dtype=np.float32)
    tally.add(blob(8, 8, 2, 6, 2, 6), True, box, g)  # exact hit, right class
    tally.add(blob(8, 8, 2, 6, 2, 6), False, box, g)  # exact hit, wrong class
    tally.add(blob(8, 8, 0, 2, 6, 8), True, box, g)  # right class, box elsewhere
    r = tally.result()
    assert r["images_with_boxes"] == 3
    assert r["top1_loc"] == pytest.approx(1 / 3)
    assert r["gt_known_loc"] == pytest.approx(2 / 3)
    assert r["max_box_acc"] == pytest.approx(2 / 3)


def test_max_box_acc_finds_the_best_threshold():
    g = Geometry.full(16, 16)
    cam = np.zeros((16, 16), dtype=np.float32)
    cam[4:12, 4:12] = 0.3  # the object
    cam[7:9, 7:9] = 1.0  # a hot core that a high threshold shrinks to
    tally = LocalizationTally(served=BoxRule("threshold", 0.9))
    tally.add(cam, True, np.array([4, 4, 12, 12]), g)
    r = tally.result()
    assert r["gt_known_loc"] == 0  # at 0.9 the box is the 2x2 core
    assert r["max_box_acc"] == 1 and r["best_threshold"] <= 0.3


def test_boxes_are_compared_in_original_coordinates_through_the_window():
    # A 100x50 image whose centre 50x50 the model saw; the CAM's hot half is the window's right half.
    g = Geometry(100, 50, 25, 0, 50, 50)
    cam = blob(4, 4, 0, 4, 2, 4)
    tally = LocalizationTally(served=BoxRule("threshold", 0.5))
    tally.add(cam, True, np.array([50, 0, 75, 50]), g)
    assert tally.result()["gt_known_loc"] == 1


def test_the_served_rule_is_calibrated_only_with_enough_boxes():
    g = Geometry.full(16, 16)
    cam = np.zeros((16, 16), dtype=np.float32)
    cam[4:12, 4:12] = 0.3
    cam[7:9, 7:9] = 1.0
    few = LocalizationTally()
    for _ in range(CALIBRATION_MIN_IMAGES - 1):
        few.add(cam, True, np.array([4, 4, 12, 12]), g)
    assert few.result()["box_rule"] == str(DEFAULT_RULE)  # too few boxes to calibrate on
    few.add(cam, True, np.array([4, 4, 12, 12]), g)
    r = few.result()
    assert r["box_rule"].startswith("threshold:") and r["gt_known_loc"] == r["max_box_acc"] == 1
    # MaxBoxAccV2 averages the best accuracy at IoU 0.3, 0.5 and 0.7: an exact box meets all three
    assert r["max_box_acc_v2"] == 1
    assert r["gt_known_by_rule"]["threshold:0.2"] == 1 and set(r["gt_known_by_rule"]) >= {"otsu", "mass:0.5"}


def test_max_box_acc_v2_counts_a_loose_box_at_the_lower_iou_only():
    g = Geometry.full(10, 10)
    tally = LocalizationTally(served=BoxRule("threshold", 0.5))
    tally.add(blob(10, 10, 0, 10, 0, 6), True, np.array([0, 0, 4, 10], dtype=np.float32), g)  # IoU 0.4 / 0.6 ...
    r = tally.result()
    # the box (6 wide) against the true box (4 wide): IoU 4/6 = 0.67 -> a hit at 0.3 and 0.5, not 0.7
    assert r["max_box_acc"] == 1 and r["max_box_acc_v2"] == pytest.approx(2 / 3)


def test_calibration_takes_a_per_image_rule_where_no_fixed_threshold_fits_every_image():
    # Two kinds of map over one true box (rows and columns 4-11 of 16): a faint object on a cold
    # background wants a low cut, a hot object on a warm background a high one; no single fraction of
    # the maximum serves both; a cut that keeps 30% of each map's heat does.
    g = Geometry.full(16, 16)
    faint, warm = np.zeros((16, 16), np.float32), np.full((16, 16), 0.5, np.float32)
    faint[4:12, 4:12], warm[4:12, 4:12] = 0.4, 0.9
    faint[7:9, 7:9] = warm[7:9, 7:9] = 1.0
    tally = LocalizationTally()
    for cam in [faint, warm] * CALIBRATION_MIN_IMAGES:
        tally.add(cam, True, np.array([4, 4, 12, 12]), g)
    r = tally.result()
    assert r["max_box_acc"] == 0.5  # the best fixed threshold fits one kind only
    assert r["box_rule"] == "mass:0.3" and r["gt_known_loc"] == 1
