"""A Triton Inference Server model repository from registry versions (one model, or every model): the same ONNX file,
a config.pbtxt that describes it, and the labels, so a user who outgrows this service can serve
the same model on Triton (`tritonserver --model-repository=DIR`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .card import ModelCard
from .registry import FLOAT32_FILE, MODEL_FILE, Registry


def config_pbtxt(name: str, card: ModelCard, max_batch_size: int = 64, queue_delay_us: int = 2000) -> str:
    n = len(card.labels)
    side = card.preprocessing.crop
    h, w = card.cam_size
    width = (card.ood or {}).get("features")  # the pooled features, in graphs exported with them
    features = f',\n  {{ name: "features" data_type: TYPE_FP32 dims: [ {width} ] }}' if width else ""
    if card.extra.get("foreground"):  # the pc1 map, in graphs exported with it
        features += f',\n  {{ name: "foreground" data_type: TYPE_FP32 dims: [ {h}, {w} ] }}'
    return f"""name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [
  {{ name: "input" data_type: TYPE_FP32 dims: [ 3, {side}, {side} ] }}
]
output [
  {{ name: "logits" data_type: TYPE_FP32 dims: [ {n} ] label_filename: "labels.txt" }},
  {{ name: "cam" data_type: TYPE_FP32 dims: [ {n}, {h}, {w} ] }}{features}
]
dynamic_batching {{ max_queue_delay_microseconds: {queue_delay_us} }}
instance_group [ {{ kind: KIND_AUTO count: 1 }} ]
parameters {{ key: "rescam_card" value: {{ string_value: {json.dumps(json.dumps(card.to_dict()))} }} }}
"""


def export_triton(registry: Registry, model: str, version: int | None, out: Path, triton_name: str | None = None,
                  max_batch_size: int = 64) -> Path:
    """Write `out/<name>/config.pbtxt`, `out/<name>/labels.txt`, `out/<name>/<version>/model.onnx`."""
    version = version if version is not None else registry.deployed(model)
    if version is None:
        raise ValueError(f"model {model!r} has no deployed version; name one")
    source = registry.version_dir(model, version)
    card = registry.card(model, version)
    name = triton_name or model
    target = Path(out) / name
    (target / str(version)).mkdir(parents=True, exist_ok=True)
    # an int8 version that answers its near-ties in float32 goes as its float32 graph: one Triton
    # model cannot send some images of a batch to another, and float32 is the answer it stands for
    graph = FLOAT32_FILE if card.near_tie_margin is not None else MODEL_FILE
    shutil.copy2(source / graph, target / str(version) / MODEL_FILE)
    (target / "labels.txt").write_text("\n".join(card.labels) + "\n")
    (target / "config.pbtxt").write_text(config_pbtxt(name, card, max_batch_size))
    return target


def export_all(registry: Registry, out: Path, max_batch_size: int = 64) -> list[Path]:
    """Every model with a deployed version, each at that version, into one Triton repository."""
    models = [m for m in registry.models() if registry.deployed(m) is not None]
    if not models:
        raise ValueError(f"no model in {registry.root} has a deployed version")
    return [export_triton(registry, m, None, out, max_batch_size=max_batch_size) for m in models]
