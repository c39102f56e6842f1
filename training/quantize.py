"""int8 export: ONNX Runtime's static quantization of the float32 graph, and the parity check that
decides whether the int8 model may serve in its place.

QDQ format, per-channel int8 weights and uint8 activations, with activation ranges calibrated
(min-max) on the training images: ONNX Runtime's recommended form for CPUs with VNNI/AMX kernels
(`onnxruntime.quantization`). Every output is quantized with the rest: the CAM and the pooled
features stay outputs of one int8 pass, so the served box and the open-world score are those of
the int8 model (the OOD bank and temperature are then fitted on its own outputs, training/export.py).

Parity is measured against the float32 ONNX graph on validation images, on what a user sees:
the same top-1, the same heatmap, the same box. A version that misses any bound is not int8.

int8 rounding flips near-ties: a model unsure of many images (a real-object model at 80% top-1)
disagrees with float32 on 3-5% of them, every one a near-tie (BENCHMARKS.md). Where only the
agreement bound is missed, the export tries a near-tie fallback: images whose int8 top-2 logit gap
is at most a margin are answered again by the float32 graph, which the version keeps beside the
int8 one. The margin is the largest gap among the validation images int8 flipped; the agreement
it gives is measured on images it was not fitted on (ten folds, each fitted on the others), and
the fallback is kept only where that agreement meets the bound and the mix still costs at most
MAX_FALLBACK_COST of float32's time.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from app.cam import BoxRule, Geometry, class_boxes, iou
from app.registry import FLOAT32_FILE
from app.scoring import softmax, top2_gap

CALIBRATION_IMAGES = 256  # training images the activation ranges are taken from
PARITY_IMAGES = 1000  # validation images parity is measured on, at most
MIN_AGREEMENT = 0.99  # share of images with float32's top-1
MIN_CAM_CORRELATION = 0.99  # mean Pearson correlation of the top class's CAM with float32's
MIN_BOX_IOU = 0.9  # median IoU of the top class's box with float32's
CONFIDENT = 0.5  # float32's top softmax score above which agreement is also given on its own
MAX_FALLBACK_COST = 0.8  # int8 plus its fallback share of float32, as a share of float32's time
FOLDS = 10  # the near-tie margin's agreement is measured on each tenth, fitted on the rest


class QuantizationError(RuntimeError):
    """The int8 model is not close enough to the float32 one to serve in its place; `figures`
    holds what was measured."""

    def __init__(self, message: str, figures: dict | None = None) -> None:
        super().__init__(message)
        self.figures = figures or {}


def quantize_int8(float_path: Path, out_path: Path, calibration: np.ndarray, batch: int = 32) -> None:
    """Write the int8 (QDQ) version of the float32 ONNX graph at float_path to out_path, its
    activation ranges calibrated on `calibration` (normalised inputs, N x 3 x H x W)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.left = iter([{"input": calibration[i:i + batch]} for i in range(0, len(calibration), batch)])

        def get_next(self):
            return next(self.left, None)

    with tempfile.TemporaryDirectory(prefix="rescam-int8-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        # folds and fuses what it can and infers shapes, as ONNX Runtime asks before quantizing
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out_path), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        extra_options={"CalibTensorRangeSymmetric": False})


def _outputs(path: Path, x: np.ndarray, batch: int = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Logits, CAMs and the foreground map (None for a graph without one)."""
    from .open_world import batched_outputs, session_outputs

    session, names = session_outputs(path)
    wanted = [n for n in names if n != "features"]
    logits, cams, *rest = batched_outputs(session, wanted, x, batch)
    return logits, cams, rest[0] if rest else None


def ms_per_image(path: Path, x: np.ndarray, batch: int = 8, rounds: int = 10) -> float:
    """Milliseconds per image at batch 8 on this machine's CPU (two threads, as the service runs)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = x[:batch]
    session.run(None, {"input": x})
    started = time.perf_counter()
    for _ in range(rounds):
        session.run(None, {"input": x})
    return (time.perf_counter() - started) / rounds / len(x) * 1000


def cam_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per image, the Pearson correlation of two (n, h, w) maps (1 where both are flat)."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    a, b = a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(norm > 0, (a * b).sum(axis=1) / np.maximum(norm, 1e-300), 1.0)


def box_ious(cams_a: np.ndarray, cams_b: np.ndarray, classes: np.ndarray, rule: BoxRule, side: int,
             foreground_a: np.ndarray | None = None, foreground_b: np.ndarray | None = None) -> np.ndarray:
    """Per image, the IoU of the served box of `classes[i]` from two sets of CAMs (foreground maps
    for a pc1 rule), on the model's input square (1 where neither finds a box, 0 where one does and
    the other does not)."""
    g = Geometry.full(side, side)
    out = []
    none = [None] * len(cams_a)
    foreground_a = none if foreground_a is None else foreground_a
    foreground_b = none if foreground_b is None else foreground_b
    for ca, cb, c, fa, fb in zip(cams_a, cams_b, classes.tolist(), foreground_a, foreground_b):
        a, b = (class_boxes(m, [c], g, side, side, rule, foreground=f)[0] for m, f in ((ca, fa), (cb, fb)))
        out.append(iou(a[0].as_list(), b[0].as_list()) if a and b else float(not a and not b))
    return np.asarray(out)


def parity(float_path: Path, int8_path: Path, inputs: np.ndarray, labels: np.ndarray, rule: BoxRule) -> dict:
    """The int8 model against the float32 one on normalised validation inputs: top-1 agreement, CAM
    correlation, box IoU, each one's top-1, file sizes and speed, and `near_ties` where a near-tie
    fallback was tried (see near_tie_fallback). QuantizationError when it misses MIN_CAM_CORRELATION
    or MIN_BOX_IOU, or MIN_AGREEMENT with no fallback that reaches it."""
    logits_f, cams_f, foreground_f = _outputs(float_path, inputs)
    logits_q, cams_q, foreground_q = _outputs(int8_path, inputs)
    top = logits_f.argmax(1)
    agree = logits_q.argmax(1) == top
    # where float32 itself is sure (softmax >= CONFIDENT): int8's flips are among the near-ties
    sure = softmax(logits_f).max(axis=1) >= CONFIDENT
    rows = np.arange(len(top))
    correlation = cam_correlation(cams_f[rows, top], cams_q[rows, top])
    ious = box_ious(cams_f, cams_q, top, rule, inputs.shape[-1], foreground_f, foreground_q)
    result = {
        "images": len(inputs),
        "top1_agreement": float(agree.mean()),
        "confident_share": float(sure.mean()),
        "top1_agreement_confident": float(agree[sure].mean()) if sure.any() else None,
        "cam_correlation": float(correlation.mean()),
        "cam_correlation_min": float(correlation.min()),
        "box_iou_median": float(np.median(ious)),
        "box_iou_mean": float(ious.mean()),
        "bounds": {"top1_agreement": MIN_AGREEMENT, "cam_correlation": MIN_CAM_CORRELATION,
                   "box_iou_median": MIN_BOX_IOU},
        "float32": {"top1": float((top == labels).mean()), "bytes": Path(float_path).stat().st_size,
                    "ms_per_image": round(ms_per_image(float_path, inputs), 3)},
        "int8": {"top1": float((logits_q.argmax(1) == labels).mean()), "bytes": Path(int8_path).stat().st_size,
                 "ms_per_image": round(ms_per_image(int8_path, inputs), 3)},
    }
    missed = [f"{name} {result[name]:.4f} < {bound}" for name, bound in result["bounds"].items()
              if result[name] < bound]
    if len(missed) == 1 and missed[0].startswith("top1_agreement"):  # the CAMs and boxes agree: near-ties
        result["near_ties"] = near_tie_fallback(logits_f, logits_q, result)
        if result["near_ties"]["kept"]:
            return result
        missed[0] += f" (with a near-tie fallback: {result['near_ties']['refused']})"
    if missed:
        raise QuantizationError(f"the int8 model differs from float32: {', '.join(missed)} "
                                f"(on {len(inputs)} validation images)", result)
    return result


def fallback_margin(logits_f: np.ndarray, logits_q: np.ndarray) -> float:
    """The largest int8 top-2 gap among the images whose int8 top-1 is not float32's (-1: none
    flipped); images at or under it are answered by float32."""
    flipped = logits_f.argmax(1) != logits_q.argmax(1)
    return float(top2_gap(logits_q)[flipped].max()) if flipped.any() else -1.0


def served_top1(logits_f: np.ndarray, logits_q: np.ndarray, margin: float) -> np.ndarray:
    """The top-1 the int8 model with a fallback at `margin` answers."""
    return np.where(top2_gap(logits_q) <= margin, logits_f.argmax(1), logits_q.argmax(1))


def near_tie_fallback(logits_f: np.ndarray, logits_q: np.ndarray, figures: dict) -> dict:
    """The near-tie fallback for an int8 model that misses only the agreement bound: its margin,
    the share of images it sends to float32, the agreement it gives on images it was not fitted on
    (FOLDS folds of the validation images, each with the margin fitted on the others, pooled) and
    what the mix costs; `kept` where that agreement meets MIN_AGREEMENT and the cost
    MAX_FALLBACK_COST. A new image is a flip beyond the largest of F flipped gaps with probability
    1/(F+1) at most where images are alike (exchangeable), so on new images like the validation
    ones the rule misses about one in n; what the folds measure is that, at 0.9 n."""
    fold = np.arange(len(logits_f)) % FOLDS
    agree = []
    for k in range(FOLDS):
        fit, test = fold != k, fold == k
        margin = fallback_margin(logits_f[fit], logits_q[fit])
        agree.append(served_top1(logits_f[test], logits_q[test], margin) == logits_f[test].argmax(1))
    margin = fallback_margin(logits_f, logits_q)
    share = float((top2_gap(logits_q) <= margin).mean())
    ms_f, ms_q = figures["float32"]["ms_per_image"], figures["int8"]["ms_per_image"]
    cost = (ms_q + share * ms_f) / ms_f
    held_out = float(np.concatenate(agree).mean())
    out = {"file": FLOAT32_FILE, "margin": margin, "share": round(share, 4),
           "top1_agreement": float((served_top1(logits_f, logits_q, margin) == logits_f.argmax(1)).mean()),
           "top1_agreement_held_out": held_out, "cost": round(cost, 3),
           "bounds": {"top1_agreement_held_out": MIN_AGREEMENT, "cost": MAX_FALLBACK_COST}}
    why = ([f"held-out agreement {held_out:.4f} < {MIN_AGREEMENT}"] if held_out < MIN_AGREEMENT else []) + \
          ([f"it costs {cost:.2f} of float32's time (it sends {share:.0%} of images to float32) > {MAX_FALLBACK_COST}"]
           if cost > MAX_FALLBACK_COST else [])
    return {"kept": not why, **out, **({"refused": "; ".join(why)} if why else {})}
