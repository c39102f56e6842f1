"""ONNX export with a self-describing card, and the parity check that guards every export.

The graph has one input, `input` (N, 3, H, W) float32, normalised as the card says, and four
outputs: `logits` (N, classes), `cam` (N, classes, h, w), the class-activation map of every
class at feature resolution, `features` (N, channels of all stages), each stage's output
pooled and scaled to unit length (the open-world score compares them with the training images';
app.scoring), and `foreground` (N, h, w), the last feature map on its first principal component
(training/foreground.py; `pc1:` box rules cut it). The server needs no weights of its own to draw
any class's CAM or box.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import os
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from app.cam import BoxRule, box_free_rule
from app.card import ModelCard
from app.preprocess import Preprocessing
from app.registry import CARD_FILE, FLOAT32_FILE, MODEL_FILE, WEIGHTS_FILE
from app.scoring import OOD_FILE, top2_gap
from models import ResNet

from . import foreground as pc1
from . import open_world, quantize, zoom
from .config import TrainConfig
from .data import load_data, preprocessing
from .foreground import Foreground
from .train import checkpoint_architecture, load_checkpoint_model
from .zoom import MOST_SCALE

log = logging.getLogger(__name__)
OPSET = 18
TOLERANCE = 1e-4
# float32 outputs within TOLERANCE or this share of their largest magnitude, whichever is larger:
# a CAM of a confident model reaches 100 and more, where float32 rounding alone differs by 1e-4
FLOAT32_RELATIVE = 1e-5
# a float16 export is checked at a looser tolerance: each output within 1% of its largest magnitude,
# and the same top-1 wherever float32's top two differ by more than that (BENCHMARKS.md, GPU)
HALF_TOLERANCE = 1e-2
PRECISIONS = ("float32", "float16", "int8")
CARD_KEY = "rescam.card"


class ParityError(RuntimeError):
    """ONNX Runtime and torch disagree about the exported model."""


OUTPUTS = ("logits", "cam", "features", "foreground")
# what a mirrored export's card and job are judged on as it serves (test-time flip), not as it trained
SERVED_FIGURES = ("top1", "images_with_boxes", "box_rule", "gt_known_loc", "top1_loc", "max_box_acc", "best_threshold",
                  "max_box_acc_v2", "gt_known_loc_paper")


class CamGraph(nn.Module):
    """What is exported, from one pass: logits, the CAMs of all classes, the features the
    open-world score compares (every stage's output pooled and scaled to unit length, side by side:
    the earlier stages' colours and textures tell photographs from handwriting where the last
    stage alone cannot, AUROC 0.91 -> 0.97 on a digits model; BENCHMARKS.md, "Open world"), and,
    with a fitted `foreground`, the last feature map on its first principal component."""

    def __init__(self, model: ResNet, foreground: Foreground | None = None, mirror: bool = False,
                 zoom: bool = False) -> None:
        super().__init__()
        self.model = model
        self.foreground = foreground
        self.mirror = mirror
        self.zoom = zoom
        # the network's arithmetic (float16 in HalfCamGraph); what lies between the looks (the
        # mirror's average, the zoom's window, crop and put-back) is float32 whatever it is
        self.dtype = next(model.parameters(), torch.empty(0)).dtype

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        first = self.looked(x)
        return self.looked_again(x, first) if self.zoom else first

    def looked_again(self, x: torch.Tensor, first: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Test-time zoom (training/zoom.py): a second look around the object the `first` look's CAM
        finds; the CAMs averaged with the crop's put back in place, the logits their mean; features
        and foreground the first look's, from the image."""
        logits, cam, *rest = first
        cx, cy, half = zoom.window(logits, cam)
        second = self.looked(zoom.crop(x, cx, cy, half))[1]
        cam = (cam + zoom.put_back(second, self.model.fc.bias.float(), cx, cy, half)) / 2
        return (cam.mean((2, 3)), cam, *rest)

    def looked(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The outputs of one look at x: one pass, or with `mirror`, x and its mirror averaged."""
        if not self.mirror:
            return self.one_pass(x)
        # test-time flip: each image and its mirror in one batch, their outputs averaged, the
        # mirror's maps flipped back first. The logits stay the mean of the averaged CAM plus the
        # bias (pooling ignores the flip), so the served CAM still explains the served score.
        both = self.one_pass(torch.cat([x, x.flip(3)]))
        averaged = []
        for name, output in zip(OUTPUTS, both):
            plain, mirrored = output.unflatten(0, (2, -1)).unbind(0)
            averaged.append((plain + (mirrored.flip(-1) if name in ("cam", "foreground") else mirrored)) / 2)
        return tuple(averaged)

    def one_pass(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        maps = self.model.forward_stages(x.to(self.dtype))
        features = maps[-1]
        pooled = torch.cat([F.normalize(m.mean(dim=(2, 3)), dim=1) for m in maps], dim=1)
        outputs = (self.model.forward_head(features), self.model.forward_cam(features), pooled)
        if self.foreground is not None:
            outputs += (self.foreground.project(features),)
        return tuple(t.float() for t in outputs)


def output_names(foreground: Foreground | None) -> list[str]:
    return list(OUTPUTS if foreground is not None else OUTPUTS[:3])


class HalfCamGraph(nn.Module):
    """CamGraph with float16 weights and arithmetic behind float32 input and outputs, so the service
    feeds and reads it as any other export (for GPUs, whose tensor cores run float16)."""

    def __init__(self, model: ResNet, foreground: Foreground | None = None, mirror: bool = False,
                 zoom: bool = False) -> None:
        super().__init__()
        self.graph = CamGraph(copy.deepcopy(model).half(), foreground, mirror, zoom)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.graph(x)  # it casts: the input to float16 for each pass, each pass's outputs to float32


def export_onnx(model: ResNet, path: Path, image_size: int, card: dict | None = None,
                precision: str = "float32", foreground: Foreground | None = None, mirror: bool = False,
                zoom: bool = False) -> None:
    """Export the model as it is (the caller chooses eval mode), with a dynamic batch axis; its
    arithmetic in `precision` (PRECISIONS), its input and outputs float32 either way; the
    `foreground` output where one is given; with `mirror`, each image averaged with its mirror; with
    `zoom`, a second look around the object (training/zoom.py)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, model.conv1.in_channels, image_size, image_size)
    graph = (HalfCamGraph(model, foreground, mirror, zoom) if precision == "float16"
             else CamGraph(model, foreground, mirror, zoom))
    names = output_names(foreground)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (example,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["input"], output_names=names,
                          dynamic_axes={name: {0: "batch"} for name in ("input", *names)},
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=True)
    proto = onnx.load(str(path))
    with torch.no_grad():  # declare the static dims the exporter left symbolic (all but the batch)
        shapes = [tuple(t.shape) for t in CamGraph(model, foreground)(example)]
    for output, shape in zip(proto.graph.output, shapes):
        for dim, size in list(zip(output.type.tensor_type.shape.dim, shape))[1:]:
            dim.Clear()
            dim.dim_value = size
    if card is not None:
        entry = proto.metadata_props.add()
        entry.key, entry.value = CARD_KEY, json.dumps(card)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def embed_card(path: Path, card: dict) -> None:
    """Put `card` (less what is measured on the file itself: parity) in the ONNX file's metadata,
    replacing the one there."""
    proto = onnx.load(str(path))
    kept = [e for e in proto.metadata_props if e.key != CARD_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    entry = proto.metadata_props.add()
    entry.key, entry.value = CARD_KEY, json.dumps({k: v for k, v in card.items() if k != "parity"})
    onnx.save(proto, str(path))


def check_parity(reference: ResNet, path: Path, inputs: np.ndarray, precision: str = "float32",
                 foreground: Foreground | None = None, mirror: bool = False, zoom: bool = False
                 ) -> dict[str, float]:
    """ONNX Runtime (CPU) against the float32 torch model in eval mode on the same normalised
    inputs: each output within TOLERANCE or FLOAT32_RELATIVE of its largest magnitude and the same
    top-1 everywhere; a float16 export within HALF_TOLERANCE of each output's largest magnitude, the
    same top-1 where float32's is clear.
    The foreground map, where there is one, is held to the CAMs' tolerance."""
    reference = reference.eval()
    with torch.no_grad():
        torch_outputs = CamGraph(reference, foreground, mirror, zoom)(torch.from_numpy(inputs))
        logits_t, cams_t, features_t, *fg_t = (t.numpy() for t in torch_outputs)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits_o, cams_o, features_o, *fg_o = session.run(output_names(foreground), {"input": inputs})
    diff_logits = float(np.abs(logits_o - logits_t).max())
    # the foreground map is a projection of the same feature map as the CAMs: checked with them
    diff_cams = max([float(np.abs(cams_o - cams_t).max())] + [float(np.abs(a - b).max()) for a, b in zip(fg_o, fg_t)])
    diff_features = float(np.abs(features_o - features_t).max())
    relative, floor = (HALF_TOLERANCE, 0.0) if precision == "float16" else (FLOAT32_RELATIVE, TOLERANCE)
    # a second look's CAM is put back scaled by up to 1 / (its smallest side)^2, its rounding too
    amplified = MOST_SCALE if zoom else 1.0
    tol_logits = max(floor, relative * float(np.abs(logits_t).max())) * amplified
    tol_cams = max(floor, relative * max(float(np.abs(m).max()) for m in (cams_t, *fg_t))) * amplified
    tol_features = max(floor, relative * float(np.abs(features_t).max()))
    if precision == "float16":
        clear = top2_gap(logits_t) > 2 * tol_logits
    else:
        clear = np.ones(len(inputs), dtype=bool)
    same_top1 = bool((logits_o.argmax(1) == logits_t.argmax(1))[clear].all())
    result = {"max_abs_logits": diff_logits, "max_abs_cam": diff_cams, "max_abs_features": diff_features,
              "same_top1": same_top1, "images": len(inputs), "precision": precision, "tolerance_logits": tol_logits,
              "tolerance_cam": tol_cams, "tolerance_features": tol_features}
    if diff_logits > tol_logits or diff_cams > tol_cams or diff_features > tol_features or not same_top1:
        raise ParityError(f"ONNX Runtime disagrees with torch: {result}")
    return result


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def make_card(ckpt: dict, cfg: TrainConfig, model: ResNet, prep: Preprocessing, feature_size: int,
              foreground: Foreground | None = None) -> dict:
    metrics = {k: v for k, v in ckpt.get("metrics", {}).items() if k != "confusion"}
    box_free = box_free_rule(foreground is not None)
    return {
        "format": "rescam.card/1",
        "architecture": checkpoint_architecture(ckpt),
        "model_kwargs": ckpt["model_kwargs"],
        "labels": list(ckpt["classes"]),
        "input": {"name": "input", "shape": ["batch", model.conv1.in_channels, prep.crop, prep.crop],
                  "dtype": "float32"},
        "outputs": {name: name for name in output_names(foreground)},
        "cam_size": [feature_size, feature_size],
        "preprocessing": prep.to_card(),
        # the rule the service draws this model's boxes with: calibrated on its boxed validation
        # images when it had enough of them, else the box-free default (app.cam): on the foreground
        # map where the graph has one
        "cam": {"rule": metrics.get("box_rule", str(box_free)), "best_threshold": metrics.get("best_threshold"),
                "calibration_images": metrics.get("images_with_boxes", 0)},
        **({"foreground": foreground.card()} if foreground is not None else {}),
        # training images whose CAM the box-fit loss fitted to their box (0: boxes only calibrated the rule)
        "boxes_fitted": (ckpt.get("plan") or {}).get("boxes_fitted", 0),
        # where its weights began: scratch, the shipped shapes model's (training.weights) or an init file
        "start": (ckpt.get("plan") or {}).get("start", "scratch"),
        "data_fingerprint": ckpt.get("fingerprint"),
        "metrics": metrics,
        "training_config": ckpt["config"],
        "epochs": ckpt["epoch"],
        "steps": ckpt["step"],
        "git_revision": git_revision(),
        "torch_version": torch.__version__,
        "opset": OPSET,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def parity_inputs(cfg: TrainConfig, count: int = 32) -> np.ndarray:
    """Normalised real validation images of the run's own data."""
    val = load_data(cfg.replace(synthetic_train=0, synthetic_val=count)).val
    images = np.stack([val[i][0].numpy().transpose(1, 2, 0) for i in range(min(count, len(val)))])
    return preprocessing(cfg).normalize(images)


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, precision: str = "float32",
                      int8_fallback: bool = False, settings: dict[str, Any] | None = None) -> Path:
    """Checkpoint -> out_dir with the files a registry version holds (model, card, weights),
    parity-checked; `precision` float16 for GPUs (see HalfCamGraph), int8 for CPUs (see
    training.quantize). An int8 model that fails its parity check raises QuantizationError, or
    with `int8_fallback` leaves the float32 one in its place, the card saying why. `settings` replace
    the run's own (e.g. test_time_zoom: measuring an export choice on a trained model). Returns out_dir."""
    out_dir = Path(out_dir)
    model, ckpt = load_checkpoint_model(checkpoint)
    ckpt["config"] = {**ckpt["config"], **(settings or {})}
    cfg = TrainConfig.from_dict(ckpt["config"])
    prep = preprocessing(cfg)
    with torch.no_grad():
        feature_size = model.forward_features(torch.zeros(1, 3, prep.crop, prep.crop)).shape[-1]
    foreground = fit_foreground(model, ckpt, cfg, prep)
    card = make_card(ckpt, cfg, model, prep, feature_size, foreground)
    card["test_time_flip"] = choose_test_time_flip(model, cfg, prep)
    mirror = card["test_time_flip"]["on"]
    card["test_time_zoom"] = choose_test_time_zoom(model, cfg, prep, foreground, mirror)
    if precision == "float16" and card["test_time_zoom"]["on"]:
        # float16's rounding moves the crops: the objects model's CAMs then differed from float32's
        # by 1.02x the float16 tolerance, so a half-precision graph looks once
        card["test_time_zoom"] = {**card["test_time_zoom"], "on": False,
                                  "left_off": "float16: its crops move with float16's rounding"}
    looks = {"mirror": mirror, "zoom": card["test_time_zoom"]["on"]}
    graph_precision = "float32" if precision == "int8" else precision
    card["precision"] = graph_precision
    onnx_path = out_dir / MODEL_FILE
    (out_dir / FLOAT32_FILE).unlink(missing_ok=True)  # an earlier int8 export's, into the same folder
    export_onnx(model, onnx_path, prep.crop, card, graph_precision, foreground, **looks)
    card["parity"] = check_parity(model, onnx_path, parity_inputs(cfg), graph_precision, foreground, **looks)
    if precision == "int8":
        card["quantization"] = int8_in_place(onnx_path, cfg, prep, card, int8_fallback)
        card["precision"] = "int8" if card["quantization"]["kept"] else "float32"
    card["calibration"], card["ood"], bank = open_world.fit(onnx_path, cfg, prep,
                                                            ModelCard.from_dict(card).near_tie_margin)
    (out_dir / OOD_FILE).write_bytes(bank)
    (out_dir / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    if any(looks.values()):  # the card's figures are the graph's as it serves: mirror, second look
        from .compare import evaluate_onnx

        served = evaluate_onnx(out_dir, cfg, battery=False)  # open_world.fit measured the battery on this file
        card["metrics"] = {**card["metrics"], "top1_one_pass": card["metrics"].get("top1"),
                           **{k: served[k] for k in SERVED_FIGURES if k in served}}
        (out_dir / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    embed_card(onnx_path, card)
    torch.save(model.state_dict(), out_dir / WEIGHTS_FILE)  # torchvision format: `--init` takes it
    log.info("exported %s (%s, parity %s)", onnx_path, card["precision"], card["parity"])
    return out_dir


def choose_test_time_flip(model: ResNet, cfg: TrainConfig, prep: Preprocessing) -> dict[str, Any]:
    """Whether the graph averages each image with its mirror: as the run's `test_time_flip` says, or,
    where it says None, measured on the validation images: on when the average is right more often
    than the image alone. The validation set chose the kept epoch, so the image alone is favoured
    and a gain here is not luck of the choice (objects: +4.2 points on held-out images; digits,
    whose mirror is another glyph, stay off; BENCHMARKS.md, "Test-time flip")."""
    if cfg.test_time_flip is not None:
        return {"on": bool(cfg.test_time_flip), "decided_by": "setting"}
    images, labels = open_world.dataset_arrays(load_data(cfg.replace(synthetic_train=0, image_size=prep.crop)).val,
                                               10_000)
    alone, mirrored = [], []
    with torch.no_grad():
        for start in range(0, len(images), 256):  # normalised a batch at a time: 10,000 at 224 px are 6 GB
            x = torch.from_numpy(prep.normalize(images[start:start + 256]))
            alone.append(model(x))
            mirrored.append(model(x.flip(3)))
    alone, mirrored, truth = torch.cat(alone), torch.cat(mirrored), torch.from_numpy(labels)
    top1 = float((alone.argmax(1) == truth).float().mean())
    averaged = float(((alone + mirrored).argmax(1) == truth).float().mean())
    return {"on": averaged > top1, "decided_by": "validation", "images": len(labels),
            "val_top1": round(top1, 4), "val_top1_averaged": round(averaged, 4)}


def choose_test_time_zoom(model: ResNet, cfg: TrainConfig, prep: Preprocessing, foreground: Foreground | None,
                          mirror: bool) -> dict[str, Any]:
    """Whether the graph takes a second look around the object (training/zoom.py): as the run's
    `test_time_zoom` says, or, where it says None, measured on the validation images through the
    graph as it would serve (with its mirror where chosen): on when the second look is right
    zoom.MIN_GAIN more often, as it doubles the inference (objects: +2.5 and +3.4 points on
    validation, +2 on held-out composites; BENCHMARKS.md, "Test-time zoom")."""
    if cfg.test_time_zoom is not None:
        return {"on": bool(cfg.test_time_zoom), "decided_by": "setting"}
    images, labels = open_world.dataset_arrays(load_data(cfg.replace(synthetic_train=0, image_size=prep.crop)).val,
                                               10_000)
    graph = CamGraph(model, foreground, mirror).eval()
    right = {"once": 0, "twice": 0}
    with torch.no_grad():
        for start in range(0, len(images), 256):
            x = torch.from_numpy(prep.normalize(images[start:start + 256]))
            truth = torch.from_numpy(labels[start:start + 256])
            first = graph.looked(x)
            right["once"] += int((first[0].argmax(1) == truth).sum())
            right["twice"] += int((graph.looked_again(x, first)[0].argmax(1) == truth).sum())
    top1, zoomed = right["once"] / max(len(labels), 1), right["twice"] / max(len(labels), 1)
    return {"on": zoomed - top1 >= zoom.MIN_GAIN, "decided_by": "validation", "images": len(labels),
            "val_top1": round(top1, 4), "val_top1_zoomed": round(zoomed, 4)}


def fit_foreground(model: ResNet, ckpt: dict, cfg: TrainConfig, prep: Preprocessing) -> Foreground:
    """The checkpoint's foreground direction (fitted where training ended), or, for a checkpoint
    from before it, one fitted now on the run's own training images."""
    if isinstance(ckpt.get("foreground"), dict):
        return Foreground.from_dict(ckpt["foreground"])
    data = load_data(cfg.replace(synthetic_train=min(cfg.synthetic_train, pc1.FIT_IMAGES), synthetic_val=32,
                                 image_size=prep.crop))
    return pc1.fit_dataset(model, data.train, prep, cfg.seed)


def int8_in_place(onnx_path: Path, cfg: TrainConfig, prep: Preprocessing, card: dict, fall_back: bool) -> dict:
    """Quantize the float32 graph at onnx_path, calibrated on the training images, and put the int8
    one in its place when it passes training.quantize.parity on the validation images (with the
    float32 graph beside it as FLOAT32_FILE where it passes with a near-tie fallback): the card's
    `quantization` entry (`kept`, the figures, and `refused` with the reason when it did not)."""
    data = load_data(cfg.replace(synthetic_train=quantize.CALIBRATION_IMAGES, synthetic_val=quantize.PARITY_IMAGES))
    train_images, _ = open_world.dataset_arrays(open_world.plain(data.train), quantize.CALIBRATION_IMAGES, cfg.seed)
    val_images, val_labels = open_world.dataset_arrays(data.val, quantize.PARITY_IMAGES)
    int8_path = onnx_path.with_name(f".int8-{onnx_path.name}")
    try:
        quantize.quantize_int8(onnx_path, int8_path, prep.normalize(train_images))
        figures = quantize.parity(onnx_path, int8_path, prep.normalize(val_images), val_labels,
                                  BoxRule.parse(card["cam"]["rule"]))
    except quantize.QuantizationError as e:
        int8_path.unlink(missing_ok=True)
        if not fall_back:
            raise
        log.warning("int8 refused, float32 kept: %s", e)
        return {"kept": False, "refused": str(e), "calibration_images": len(train_images), **e.figures}
    except BaseException:
        int8_path.unlink(missing_ok=True)
        raise
    if figures.get("near_ties"):  # near-ties are answered by the float32 graph, kept beside the int8 one
        shutil.copy2(onnx_path, onnx_path.with_name(FLOAT32_FILE))
    os.replace(int8_path, onnx_path)
    return {"kept": True, "method": "onnxruntime static, QDQ, per-channel int8 weights, uint8 activations (min-max)",
            "calibration_images": len(train_images), **figures}
