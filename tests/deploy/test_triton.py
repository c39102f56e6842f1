"""`rescam export-triton`: the config parses with Triton's own schema and matches the ONNX graph."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

ROOT = Path(__file__).resolve().parents[2]
ONNX_TYPES = {onnx.TensorProto.FLOAT: model_config_pb2.TYPE_FP32}


def test_triton_repository_matches_the_onnx_graph(tiny_model, tmp_path):
    out = subprocess.run([sys.executable, "-m", "training.cli", "export-triton", "--registry", str(tiny_model.registry),
                          "--out", str(tmp_path / "triton")], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert out.returncode == 0, out.stderr
    repo = tmp_path / "triton" / "default"
    config = text_format.Parse((repo / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.name == "default" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 64
    graph = onnx.load(str(repo / str(tiny_model.version) / "model.onnx")).graph
    for declared, actual in ((config.input, graph.input), (config.output, graph.output)):
        assert [d.name for d in declared] == [a.name for a in actual]
        for d, a in zip(declared, actual):
            dims = [x.dim_value for x in a.type.tensor_type.shape.dim]
            assert list(d.dims) == dims[1:]  # Triton leaves the batch axis out
            assert d.data_type == ONNX_TYPES[a.type.tensor_type.elem_type]
    labels = (repo / "labels.txt").read_text().split()
    assert labels == json.loads(config.parameters["rescam_card"].string_value)["labels"]
    assert config.output[0].label_filename == "labels.txt" and len(labels) == config.output[0].dims[0]
    session = ort.InferenceSession(str(repo / str(tiny_model.version) / "model.onnx"), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"input": np.zeros((3, *config.input[0].dims), dtype=np.float32)})
    assert [o.shape for o in outputs] == [(3, *d.dims) for d in config.output]
    assert [d.name for d in config.output] == ["logits", "cam", "features", "foreground"]


def test_every_model_goes_into_one_repository(tiny_model, tmp_path):
    import shutil

    from app.registry import Registry

    shutil.copytree(tiny_model.registry, tmp_path / "registry")
    registry = Registry(tmp_path / "registry")
    registry.register("birds", tiny_model.export)
    registry.register("birds", tiny_model.export)
    registry.deploy("birds", 2)
    registry.register("drafts", tiny_model.export)  # nothing deployed: left out
    out = subprocess.run([sys.executable, "-m", "training.cli", "export-triton", "--registry", str(tmp_path / "registry"),
                          "--out", str(tmp_path / "triton")], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "triton").iterdir()) == ["birds", "default"]
    assert (tmp_path / "triton" / "birds" / "2" / "model.onnx").is_file()
    assert 'name: "birds"' in (tmp_path / "triton" / "birds" / "config.pbtxt").read_text()
