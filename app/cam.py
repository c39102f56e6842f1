"""Class-activation maps and the boxes drawn from them: pure numpy, shared by the service and
the evaluation in training/.

CAM (Zhou et al. 2016): with global average pooling and a linear classifier, the score of class c
is the spatial mean of CAM_c = sum_k w_ck f_k + b_c, so CAM_c shows where the evidence for c lies.
The exported graph outputs these maps at feature resolution; here they are resampled into the
coordinates of the original image, normalised, and thresholded into boxes.

Coordinates: a box is (x0, y0, x1, y1) in continuous pixel coordinates, pixel i spanning [i, i+1),
so a box of one pixel at column 3 is x0=3, x1=4.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# The CAM paper's box rule keeps "the regions whose value is above 20% of the max value of the CAM".
PAPER_THRESHOLD = 0.2
SPREAD_MAX = 4.0
# a spread box weighs only the heat at or above this fraction of the maximum (the CAM paper's cut):
# the faint tail over the whole map would otherwise widen every box
SPREAD_FLOOR = PAPER_THRESHOLD


@dataclass(frozen=True)
class Geometry:
    """Where the model's input window lies in the original image.

    The model saw the window [left, left + width) x [top, top + height) of the original image
    (original pixel units; width/height need not be integers after a resize), resampled to its
    input size. The CAM covers exactly that window.
    """

    image_width: int
    image_height: int
    left: float
    top: float
    width: float
    height: float

    @classmethod
    def full(cls, width: int, height: int) -> Geometry:
        return cls(width, height, 0.0, 0.0, float(width), float(height))

    def scaled(self, width: int, height: int) -> Geometry:
        """The same window on a copy of the image resized to width x height."""
        sx, sy = width / self.image_width, height / self.image_height
        return Geometry(width, height, self.left * sx, self.top * sy, self.width * sx, self.height * sy)

    def fitted(self, max_side: int) -> Geometry:
        """The same window on a copy of the image whose long side is at most max_side."""
        scale = min(1.0, max_side / max(self.image_width, self.image_height))
        if scale == 1.0:
            return self
        return self.scaled(max(1, round(self.image_width * scale)), max(1, round(self.image_height * scale)))


def interpolation_matrix(out_n: int, in_n: int, scale: float, offset: float,
                         zero_outside: bool = False) -> np.ndarray:
    """Rows of bilinear weights, sampling an axis of in_n cells at out_n points.

    Output pixel i reads source coordinate (i + 0.5) * scale + offset - 0.5, in source cells. With
    scale = in_n / out_n and offset = 0 this is torch's interpolate(..., align_corners=False),
    clamping included. zero_outside gives zero rows for pixels outside [0, in_n) in source units.
    """
    centres = (np.arange(out_n, dtype=np.float64) + 0.5) * scale + offset
    src = np.maximum(centres - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_n - 1)
    i1 = np.minimum(i0 + 1, in_n - 1)
    frac = src - i0
    m = np.zeros((out_n, in_n), dtype=np.float64)
    rows = np.arange(out_n)
    m[rows, i0] = 1.0 - frac
    m[rows, i1] += frac  # at the clamped edge i1 == i0 and the weights add up to 1
    if zero_outside:
        m[(centres < 0) | (centres > in_n)] = 0.0
    return m.astype(np.float32)


def resize_bilinear(maps: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize of (..., h, w) maps, equal to torch's align_corners=False."""
    h, w = maps.shape[-2:]
    wy = interpolation_matrix(out_h, h, h / out_h, 0.0)
    wx = interpolation_matrix(out_w, w, w / out_w, 0.0)
    return wy @ maps.astype(np.float32) @ wx.T


def window_matrices(cam_shape: tuple[int, int], geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Row and column interpolation matrices from a (h, w) CAM onto the original image: bilinear
    inside the window the model saw, zero rows outside it (the model saw nothing there)."""
    h, w = cam_shape
    wy = interpolation_matrix(geometry.image_height, h, h / geometry.height,
                              -geometry.top * h / geometry.height, zero_outside=True)
    wx = interpolation_matrix(geometry.image_width, w, w / geometry.width,
                              -geometry.left * w / geometry.width, zero_outside=True)
    return wy, wx


def cam_to_image(cam: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Resample a (h, w) CAM onto the whole original image (H, W); zero outside the window."""
    wy, wx = window_matrices(cam.shape, geometry)
    return wy @ cam.astype(np.float32) @ wx.T


def normalize(heatmap: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] as the CAM paper thresholds it ("above 20% of the max value"): negative
    evidence is clipped to 0 and the maximum becomes 1. A map with no positive evidence falls back
    to min-max; a flat map becomes all zeros."""
    hi, lo = float(heatmap.max()), float(heatmap.min())
    if hi - lo <= 1e-12:
        return np.zeros_like(heatmap, dtype=np.float32)
    if hi > 0:
        return (np.maximum(heatmap, 0) / hi).astype(np.float32)
    return ((heatmap - lo) / (hi - lo)).astype(np.float32)


def heatmaps(cams: np.ndarray, geometry: Geometry) -> np.ndarray:
    """CAMs (k, h, w) of k classes on the original image (k, H, W), each normalised (see
    `normalize`) over the window the model saw, 0 outside it. The interpolation is set up once."""
    wy, wx = window_matrices(cams.shape[-2:], geometry)
    rows = wy.sum(axis=1) > 0.5
    cols = wx.sum(axis=1) > 0.5
    out = np.zeros((len(cams), geometry.image_height, geometry.image_width), dtype=np.float32)
    if rows.any() and cols.any():
        wy, wx = wy[rows], wx[cols].T
        r0, r1 = np.flatnonzero(rows)[[0, -1]]
        c0, c1 = np.flatnonzero(cols)[[0, -1]]
        for k, c in enumerate(cams.astype(np.float32)):
            out[k, r0:r1 + 1, c0:c1 + 1] = normalize(wy @ c @ wx)
    return out


def heatmap(cam: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The CAM of one class on the original image (see `heatmaps`)."""
    return heatmaps(cam[None], geometry)[0]


@dataclass(frozen=True)
class Box:
    x0: float
    y0: float
    x1: float
    y1: float
    area: int  # pixels of the component on the grid it was found on
    peak: float  # the largest heat inside the component
    threshold: float = PAPER_THRESHOLD  # the fraction of the map's maximum it was cut at

    def scaled(self, sx: float, sy: float) -> Box:
        return Box(self.x0 * sx, self.y0 * sy, self.x1 * sx, self.y1 * sy, self.area, self.peak, self.threshold)

    def as_list(self) -> list[float]:
        return [self.x0, self.y0, self.x1, self.y1]


EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class BoxRule:
    """How a normalised heatmap becomes a box: keep the pixels at or above a threshold, then the
    largest connected region (the CAM paper's rule). The rules differ in how they set the threshold:

    - `threshold`: a fixed fraction `value` of the map's maximum. The CAM paper uses 0.2; a model
      with boxed validation images uses the fraction with the best localization there (MaxBoxAcc).
    - `mass`: per image, the highest threshold whose region still holds `value` of the map's
      positive heat (the smallest set of pixels with that share of the evidence). Needs no boxes and
      adapts to how spread out each map is.
    - `otsu`: per image, Otsu's (1979) threshold on the map's histogram (no parameter).
    - `spread`: no cut and no region: the box centred on the heat's centroid, `value` standard
      deviations of its spread either way on each axis (`spread_box`). Its size follows how far the
      heat spreads, not how high it peaks; `value` lies in (0, 4] (sqrt(3) = 1.73 spans an evenly
      lit object).

    and in which map they cut (`source`): `cam`, the class's own CAM, or `pc1`, the graph's
    `foreground` output, the last feature map projected on its first principal component over the
    training images (see FOREGROUND_RULE). Written `pc1:spread:1.75`; a rule without a prefix cuts the CAM.
    """

    name: str
    value: float | None = None
    source: str = "cam"

    KINDS = ("threshold", "mass", "otsu", "spread")
    SOURCES = ("cam", "pc1")

    def __post_init__(self) -> None:
        if self.name not in self.KINDS:
            raise ValueError(f"unknown box rule {self.name!r}: use threshold:F, mass:F, otsu or spread:K, "
                             "each optionally after pc1:")
        if self.name == "spread":
            if not (self.value is not None and 0 < self.value <= SPREAD_MAX):
                raise ValueError(f"box rule spread needs a number of standard deviations in (0, {SPREAD_MAX:g}], "
                                 "e.g. spread:1.75")
        elif self.name != "otsu" and not (self.value is not None and 0 < self.value < 1):
            raise ValueError(f"box rule {self.name} needs a value between 0 and 1, e.g. {self.name}:0.5")
        if self.source not in self.SOURCES:
            raise ValueError(f"unknown map {self.source!r} for a box rule: use {' or '.join(self.SOURCES)}")

    @classmethod
    def parse(cls, text: str) -> BoxRule:
        """`threshold:0.35`, `mass:0.5`, `otsu`, or a bare number (a threshold); any of them after
        `pc1:` to cut the foreground map instead of the CAM."""
        source, _, rest = text.strip().partition(":")
        if source in cls.SOURCES and not rest:
            raise ValueError(f"box rule {text!r} names a map and no rule: e.g. {source}:mass:0.7")
        if source in cls.SOURCES:
            text = rest
        else:
            source = "cam"
        name, _, value = text.strip().partition(":")
        try:
            if not value and name not in cls.KINDS:
                return cls("threshold", float(name), source)
            return cls(name, float(value) if value else None, source)
        except ValueError as e:
            raise ValueError(str(e) if "rule" in str(e) else f"box rule {text!r}: {e}") from None

    def __str__(self) -> str:
        rule = self.name if self.value is None else f"{self.name}:{self.value:g}"
        return rule if self.source == "cam" else f"{self.source}:{rule}"

    @property
    def on_foreground(self) -> bool:
        return self.source == "pc1"

    def threshold_for(self, heat: np.ndarray) -> float:
        """The fraction of heat.max() at which this rule cuts `heat` (normalised, see `normalize`);
        for `spread`, the floor below which heat is not weighed."""
        if self.name == "spread":
            return SPREAD_FLOOR
        if self.name == "threshold":
            return float(self.value)
        top = float(heat.max())
        if top <= 0:
            return 1.0
        if self.name == "mass":
            return mass_threshold(heat, float(self.value)) / top
        return otsu_threshold(heat) / top


# A model whose card has a rule calibrated on at least this many boxed validation images draws its
# boxes with it; others use DEFAULT_RULE, the box-free rule chosen by measurement (BENCHMARKS.md).
# The card says which (app.card.ModelCard.box_rule).
CALIBRATION_MIN_IMAGES = 20
DEFAULT_RULE = BoxRule("mass", 0.5)
# a version whose graph has the `foreground` output and no calibration: the box-free rule that fitted
# the most objects on real photographs, 4-7 points of GT-known above pc1:mass:0.7 (which beat
# DEFAULT_RULE by 1-15) and level with it on the digits (BENCHMARKS.md, "Box-free: the feature
# map's first principal component" and "A box from the heat's spread")
FOREGROUND_RULE = BoxRule("spread", 1.75, "pc1")


def box_free_rule(has_foreground: bool) -> BoxRule:
    """The rule of a version calibrated on no boxes: on its foreground map where its graph has one."""
    return FOREGROUND_RULE if has_foreground else DEFAULT_RULE


MASS_BINS = 256


def spread_box(heat: np.ndarray, k: float) -> Box | None:
    """The box centred on the heat's centroid reaching k standard deviations of the heat's spread
    either way on each axis, in whole pixels and clipped to the extent of the weighed heat; heat
    below SPREAD_FLOOR of the maximum weighs nothing. An evenly lit object w wide has a spread of
    w / sqrt(12), so k = sqrt(3) spans it; a CAM bright at the object's centre and fading to its
    edges needs more. None for a map with no positive heat. Box.area counts the weighed pixels
    inside the box."""
    top = float(heat.max())
    if top <= 0:
        return None
    weights = np.where(heat >= SPREAD_FLOOR * top, heat, 0).astype(np.float64)
    total = weights.sum()
    h, w = heat.shape
    cols, rows = np.arange(w) + 0.5, np.arange(h) + 0.5  # pixel centres
    by_col, by_row = weights.sum(axis=0) / total, weights.sum(axis=1) / total
    mx, my = float(by_col @ cols), float(by_row @ rows)
    sx, sy = float(np.sqrt(by_col @ (cols - mx) ** 2)), float(np.sqrt(by_row @ (rows - my) ** 2))
    # whole pixels, as a cut region's box is (a difference of 1e-6 in the heat moves no edge), and
    # never past the weighed heat (a box reaching into the padding around the model's window is no box)
    lit_cols, lit_rows = np.flatnonzero(by_col > 0), np.flatnonzero(by_row > 0)
    x0 = max(int(lit_cols[0]), round(mx - k * sx))
    x1 = max(x0 + 1, min(int(lit_cols[-1]) + 1, round(mx + k * sx)))
    y0 = max(int(lit_rows[0]), round(my - k * sy))
    y1 = max(y0 + 1, min(int(lit_rows[-1]) + 1, round(my + k * sy)))
    inside = weights[y0:y1, x0:x1]
    return Box(float(x0), float(y0), float(x1), float(y1), int((inside > 0).sum()), top, SPREAD_FLOOR)


def mass_threshold(heat: np.ndarray, share: float) -> float:
    """The highest value t such that the pixels >= t hold `share` of the map's positive heat.

    The same value as sorting all pixels and walking down their running sum, found without the
    full sort (the largest part of a box's cost): the heat summed per bin of value locates the bin
    where the running sum crosses, and only that bin's pixels are sorted."""
    values = heat[heat > 0].astype(np.float32, copy=False)
    if values.size == 0:
        return 0.0
    bins = np.minimum((values * np.float32(MASS_BINS / values.max())).astype(np.int64), MASS_BINS - 1)
    per_bin = np.bincount(bins, weights=values, minlength=MASS_BINS)
    above = np.concatenate([np.cumsum(per_bin[::-1])[::-1][1:], [0.0]])  # heat in the bins above each
    target = share * per_bin.sum()
    crossing = np.flatnonzero(above + per_bin >= target)  # bins whose pixels and those above reach it
    b = int(crossing[-1]) if crossing.size else 0
    inside = np.sort(values[bins == b])[::-1]
    k = int(np.searchsorted(above[b] + np.cumsum(inside, dtype=np.float64), target))
    return float(inside[min(k, inside.size - 1)])


def otsu_threshold(heat: np.ndarray, bins: int = 64) -> float:
    """Otsu's threshold over the positive part of the map: the cut that maximises the variance
    between the two classes of values."""
    values = heat[heat > 0]
    if values.size == 0:
        return 0.0
    counts, edges = np.histogram(values, bins=bins, range=(0.0, float(values.max())))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(counts)
    w1 = w0[-1] - w0
    m0 = np.cumsum(counts * centres)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def boxes_from_heatmap(heat: np.ndarray, threshold: float | BoxRule = PAPER_THRESHOLD, all_components: bool = False,
                       min_area_fraction: float = 0.0) -> list[Box]:
    """Boxes as in the CAM paper: keep pixels above threshold * max (a BoxRule sets the threshold
    per map), then the bounding box of the largest connected component (or of every component
    above min_area_fraction of the image). Largest first."""
    top = float(heat.max())
    if top <= 0:
        return []
    if isinstance(threshold, BoxRule) and threshold.name == "spread":  # one box, from no region
        return [spread_box(heat, float(threshold.value))]
    if isinstance(threshold, BoxRule):
        threshold = threshold.threshold_for(heat)
    mask = heat >= threshold * top
    labels, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
    if count == 0:
        return []
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    slices = ndimage.find_objects(labels)
    order = np.argsort(-areas, kind="stable")
    if not all_components:
        order = order[:1]
    min_area = min_area_fraction * heat.size
    boxes = []
    for i in order:
        if all_components and areas[i] < min_area:
            continue
        ys, xs = slices[i]
        peak = float(heat[ys, xs][labels[ys, xs] == i + 1].max())
        boxes.append(Box(float(xs.start), float(ys.start), float(xs.stop), float(ys.stop), int(areas[i]), peak,
                         float(threshold)))
    return boxes


def iou(a: np.ndarray | list[float], b: np.ndarray | list[float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


BOX_GRID = 160  # boxes are found on a heatmap at most this long, then scaled to the picture's pixels


class NoForeground(ValueError):
    """A `pc1:` rule asked of a version whose graph has no foreground output."""


def class_boxes(cams: np.ndarray, indices: list[int], g: Geometry, width: int, height: int, rule: BoxRule,
                all_components: bool = False, min_area: float = 0.0, foreground: np.ndarray | None = None
                ) -> list[list[Box]]:
    """CAM boxes of each class in `indices`, found on a heatmap at most BOX_GRID long and scaled to
    a width x height picture of g's image: the original for the JSON answer, the overlay for the
    drawing, so both show the same boxes. `Box.area` stays in BOX_GRID cells (see `grid_pixels`).
    A `pc1:` rule cuts the (h, w) `foreground` map instead, one box set shared by every class (the
    map says where an object is, not which)."""
    grid = g.fitted(BOX_GRID)
    sx, sy = width / grid.image_width, height / grid.image_height
    if rule.on_foreground:
        if foreground is None:
            raise NoForeground("this version's graph has no foreground map (it was exported before pc1 rules); "
                               "use a CAM rule such as mass:0.5")
        found = [b.scaled(sx, sy) for b in boxes_from_heatmap(heatmaps(foreground[None], grid)[0], rule,
                                                              all_components, min_area)]
        return [list(found) for _ in indices]
    return [[b.scaled(sx, sy) for b in boxes_from_heatmap(heat, rule, all_components, min_area)]
            for heat in heatmaps(cams[indices], grid)]


def grid_pixels(g: Geometry) -> int:
    """The pixel count of the heatmap `class_boxes` finds boxes on: Box.area's denominator."""
    grid = g.fitted(BOX_GRID)
    return grid.image_width * grid.image_height
