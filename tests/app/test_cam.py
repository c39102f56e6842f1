import numpy as np
import pytest
import torch
import torch.nn.functional as F

from app.cam import Geometry, boxes_from_heatmap, cam_to_image, heatmap, iou, normalize, resize_bilinear
from app.preprocess import Preprocessing


@pytest.mark.parametrize("shape, out", [((7, 7), (224, 224)), ((3, 5), (17, 40)), ((12, 12), (5, 9)),
                                        ((1, 4), (3, 3))])
def test_bilinear_resize_equals_torch_align_corners_false(shape, out):
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(4, *shape)).astype(np.float32)
    ours = resize_bilinear(maps, *out)
    ref = F.interpolate(torch.from_numpy(maps)[None], size=out, mode="bilinear", align_corners=False)[0].numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_cam_over_the_full_image_is_plain_bilinear():
    cam = np.random.default_rng(1).normal(size=(6, 6)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(cam)[None, None], size=(30, 42), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(cam_to_image(cam, Geometry.full(42, 30)), ref[0, 0].numpy(), atol=1e-5)


def test_cam_lands_in_the_crop_window_and_is_zero_outside():
    # A 200x100 image, resize shorter side to 10 and crop 10: the model saw x in [50, 150).
    prep = Preprocessing(crop=10, resize=10, mean=(0, 0, 0), std=(1, 1, 1))
    g = prep.window(200, 100)
    assert (g.left, g.top, g.width, g.height) == (50, 0, 100, 100)
    cam = np.zeros((5, 5), dtype=np.float32)
    cam[2, 4] = 1.0  # hot cell: right column, middle row of the window
    heat = heatmap(cam, g)
    assert heat.shape == (100, 200)
    assert heat[:, :50].max() == 0 and heat[:, 150:].max() == 0
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    assert 130 <= x < 150 and 40 <= y < 60  # the cell spans x 130..150, y 40..60 in the original


def test_heatmap_is_normalised_to_unit_range():
    cam = np.random.default_rng(2).normal(size=(7, 7)).astype(np.float32) * 50 + 3
    heat = heatmap(cam, Geometry.full(64, 48))
    assert heat.min() == pytest.approx(0, abs=1e-6) and heat.max() == pytest.approx(1, abs=1e-6)
    assert normalize(np.ones((3, 3))).max() == 0  # a flat map has no evidence anywhere


def test_boxes_largest_component_and_all_components():
    heat = np.zeros((20, 30), dtype=np.float32)
    heat[2:6, 3:9] = 1.0  # 24 px
    heat[10:18, 15:25] = 0.5  # 80 px, weaker but larger
    heat[0, 29] = 0.05  # below 0.2 * max
    [largest] = boxes_from_heatmap(heat, threshold=0.2)
    assert largest.as_list() == [15, 10, 25, 18] and largest.area == 80 and largest.peak == 0.5
    every = boxes_from_heatmap(heat, threshold=0.2, all_components=True)
    assert [b.as_list() for b in every] == [[15, 10, 25, 18], [3, 2, 9, 6]]
    assert boxes_from_heatmap(heat, threshold=0.6) == boxes_from_heatmap(heat[:7], threshold=0.6)
    assert len(boxes_from_heatmap(heat, 0.2, all_components=True, min_area_fraction=50 / 600)) == 1


def test_diagonal_pixels_are_one_component():
    heat = np.zeros((5, 5), dtype=np.float32)
    heat[1, 1] = heat[2, 2] = heat[3, 3] = 1
    assert [b.as_list() for b in boxes_from_heatmap(heat, 0.5, all_components=True)] == [[1, 1, 4, 4]]


def test_empty_heatmap_has_no_box():
    assert boxes_from_heatmap(np.zeros((4, 4), dtype=np.float32)) == []


def test_iou_known_values():
    assert iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1
    assert iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0


def test_normalisation_follows_the_cam_paper_fraction_of_the_max():
    cam = np.array([[-4.0, 0.0], [1.0, 5.0]], dtype=np.float32)
    np.testing.assert_allclose(normalize(cam), [[0, 0], [0.2, 1]])  # negative evidence is no evidence
    np.testing.assert_allclose(normalize(np.array([[-3.0, -1.0]])), [[0, 1]])  # no positive evidence: min-max


def test_box_rules_cut_each_map_where_they_say():
    from app.cam import BoxRule, mass_threshold, otsu_threshold

    heat = np.zeros((10, 10), dtype=np.float32)
    heat[2:6, 2:6] = 0.5  # 16 pixels holding 8 of the map's 9 units of heat...
    heat[3, 3] = 1.0  # ...and a peak holding 1 (the map's maximum)
    assert mass_threshold(heat, 0.1) == 1.0  # the peak alone holds a tenth
    assert mass_threshold(heat, 0.5) == 0.5  # half needs the plateau too
    assert 0.5 <= otsu_threshold(heat) < 1.0  # between the plateau and the peak
    box = boxes_from_heatmap(heat, BoxRule("mass", 0.5))[0]
    assert box.as_list() == [2, 2, 6, 6] and box.threshold == 0.5
    assert boxes_from_heatmap(heat, BoxRule("mass", 0.1))[0].as_list() == [3, 3, 4, 4]
    assert boxes_from_heatmap(heat, BoxRule("threshold", 0.6))[0].as_list() == [3, 3, 4, 4]
    assert boxes_from_heatmap(np.zeros((4, 4), np.float32), BoxRule("otsu")) == []


def test_mass_threshold_is_the_running_sum_of_the_sorted_pixels():
    """The binned search gives exactly what sorting every pixel and walking down their running sum
    gives, on smooth CAM-like maps, maps full of ties, skewed maps and tiny ones."""
    from app.cam import mass_threshold, resize_bilinear

    def by_sorting(heat, share):
        values = np.sort(heat[heat > 0], axis=None)[::-1]
        running = np.cumsum(values, dtype=np.float64)
        return float(values[min(int(np.searchsorted(running, share * running[-1])), values.size - 1)])

    rng = np.random.default_rng(12)
    maps = [normalize(resize_bilinear(rng.normal(size=(7, 7)).astype(np.float32), 120, 160)) for _ in range(40)]
    maps += [np.round(rng.random((30, 40)) * 4).astype(np.float32) / 4 for _ in range(20)]  # ties
    maps += [(rng.random((25, 25)) ** 8).astype(np.float32) for _ in range(20)]
    maps += [rng.random((rng.integers(1, 4), rng.integers(1, 4))).astype(np.float32) for _ in range(20)]
    for heat in maps:
        for share in (0.01, 0.25, 0.5, 0.9, 0.999):
            assert mass_threshold(heat, share) == by_sorting(heat, share)


def test_a_spread_box_spans_an_evenly_lit_object_at_sqrt_3_and_ignores_the_faint_tail():
    from app.cam import SPREAD_FLOOR, BoxRule

    heat = np.zeros((40, 60), dtype=np.float32)
    heat[10:30, 12:42] = 1.0  # an evenly lit 30 x 20 object
    heat[35:, :] = SPREAD_FLOOR * 0.9  # a faint band below the floor: it weighs nothing
    box = boxes_from_heatmap(heat, BoxRule("spread", 3 ** 0.5))[0]
    assert box.as_list() == [12, 10, 42, 30] and box.area == 600
    narrow = boxes_from_heatmap(heat, BoxRule("spread", 1.0))[0]  # fewer deviations: a smaller box, same centre
    assert narrow.as_list() == [18, 14, 36, 26]
    wide = boxes_from_heatmap(heat, BoxRule("spread", 2.5))[0]  # more: never past the heat it weighs
    assert wide.as_list() == [12, 10, 42, 30]
    assert boxes_from_heatmap(np.zeros((4, 4), np.float32), BoxRule("spread", 1.5)) == []


@pytest.mark.parametrize("text, rule", [("mass:0.5", ("mass", 0.5)), ("otsu", ("otsu", None)),
                                        ("0.35", ("threshold", 0.35)), ("threshold:0.2", ("threshold", 0.2)),
                                        ("spread:1.75", ("spread", 1.75)), ("pc1:spread:2", ("spread", 2.0))])
def test_box_rules_parse_and_print(text, rule):
    from app.cam import BoxRule

    parsed = BoxRule.parse(text)
    assert (parsed.name, parsed.value) == rule and BoxRule.parse(str(parsed)) == parsed


@pytest.mark.parametrize("text", ["mass", "mass:1.5", "threshold:0", "median:0.3", "mass:x", "spread", "spread:0",
                                  "spread:5"])
def test_bad_box_rules_say_what_is_wrong(text):
    from app.cam import BoxRule

    with pytest.raises(ValueError, match="rule"):
        BoxRule.parse(text)
