import json

import numpy as np
import onnx
import pytest

from training.export import CARD_KEY, ParityError, check_parity, export_onnx, parity_inputs
from training.train import load_checkpoint_model


def test_export_is_self_describing_and_passes_parity(tiny_model):
    card = json.loads((tiny_model.export / "card.json").read_text())
    assert card["labels"][:3] == ["circle", "square", "triangle"]
    assert card["preprocessing"]["crop"] == 32 and len(card["preprocessing"]["mean"]) == 3
    assert card["architecture"] == "resnet8" and card["data_fingerprint"].startswith("synthetic:")
    assert card["parity"]["max_abs_logits"] <= 1e-4 and card["parity"]["max_abs_cam"] <= 1e-4
    assert card["parity"]["same_top1"] and card["parity"]["images"] == 32
    proto = onnx.load(str(tiny_model.export / "model.onnx"))
    assert json.loads({p.key: p.value for p in proto.metadata_props}[CARD_KEY])["labels"] == card["labels"]
    assert proto.opset_import[0].version >= 17
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch axis
    assert [o.name for o in proto.graph.output] == ["logits", "cam"]


def test_export_with_batchnorm_in_training_mode_fails_parity(tiny_model, tmp_path):
    model, ckpt = load_checkpoint_model(tiny_model.checkpoint)
    inputs = parity_inputs(tiny_model.config)
    model.train()
    export_onnx(model, tmp_path / "bad.onnx", 32)
    with pytest.raises(ParityError):
        check_parity(model, tmp_path / "bad.onnx", inputs)


def test_logits_are_the_spatial_mean_of_the_cams(tiny_model):
    import onnxruntime as ort

    session = ort.InferenceSession(str(tiny_model.export / "model.onnx"), providers=["CPUExecutionProvider"])
    x = parity_inputs(tiny_model.config, count=4)
    logits, cams = session.run(None, {"input": x})
    np.testing.assert_allclose(cams.mean(axis=(2, 3)), logits, atol=1e-4)
    assert cams.shape == (4, 8, 8, 8)
