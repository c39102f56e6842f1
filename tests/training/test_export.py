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
    assert [o.name for o in proto.graph.output] == ["logits", "cam", "features", "foreground"]
    assert card["parity"]["max_abs_features"] <= 1e-4
    assert card["foreground"]["method"] == "pc1" and card["foreground"]["images"] == 512


def test_export_with_batchnorm_in_training_mode_fails_parity(tiny_model, tmp_path):
    model, ckpt = load_checkpoint_model(tiny_model.checkpoint)
    inputs = parity_inputs(tiny_model.config)
    model.train()
    export_onnx(model, tmp_path / "bad.onnx", 32)
    with pytest.raises(ParityError):
        check_parity(model, tmp_path / "bad.onnx", inputs)


def test_a_confident_models_large_cams_pass_parity_at_float32s_own_rounding(tiny_model, tmp_path):
    # a trained model's CAMs reach 100 and more, where torch and ONNX Runtime round apart by 1e-4
    import torch

    model, _ = load_checkpoint_model(tiny_model.checkpoint)
    with torch.no_grad():
        model.fc.weight.mul_(1e4)
    inputs = parity_inputs(tiny_model.config)
    export_onnx(model, tmp_path / "large.onnx", 32)
    result = check_parity(model, tmp_path / "large.onnx", inputs)
    with torch.no_grad():
        largest = float(model.forward_cam(model.forward_features(torch.from_numpy(inputs))).abs().max())
    assert largest > 1e4 and result["tolerance_cam"] == pytest.approx(1e-5 * largest, rel=1e-3)
    model.train()  # a broken export of the same model still fails
    export_onnx(model, tmp_path / "bad.onnx", 32)
    with pytest.raises(ParityError):
        check_parity(model.eval(), tmp_path / "bad.onnx", inputs)


def test_logits_are_the_spatial_mean_of_the_cams(tiny_model):
    import onnxruntime as ort

    session = ort.InferenceSession(str(tiny_model.export / "model.onnx"), providers=["CPUExecutionProvider"])
    x = parity_inputs(tiny_model.config, count=4)
    logits, cams, features, foreground = session.run(None, {"input": x})
    np.testing.assert_allclose(cams.mean(axis=(2, 3)), logits, atol=1e-4)
    assert cams.shape == (4, 8, 8, 8) and features.shape == (4, 16 + 32 + 64) and foreground.shape == (4, 8, 8)


def test_float16_export_runs_in_half_precision_behind_float32_input_and_outputs(tiny_model, tmp_path):
    from training.export import export_checkpoint

    out = export_checkpoint(tiny_model.checkpoint, tmp_path / "half", precision="float16")
    card = json.loads((out / "card.json").read_text())
    assert card["precision"] == "float16" and card["parity"]["precision"] == "float16"
    assert card["parity"]["same_top1"]
    # really float16: it differs from float32 (by more than float32's own tolerance), within 1%
    assert 1e-6 < card["parity"]["max_abs_logits"] <= card["parity"]["tolerance_logits"]
    proto = onnx.load(str(out / "model.onnx"))
    float32, float16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert {t.data_type for t in proto.graph.initializer if t.dims} == {float16}
    assert [v.type.tensor_type.elem_type for v in (*proto.graph.input, *proto.graph.output)] == [float32] * 5
    model, _ = load_checkpoint_model(tiny_model.checkpoint)
    model.train()  # a broken export is still caught at the looser tolerance
    export_onnx(model, tmp_path / "bad.onnx", 32, precision="float16")
    with pytest.raises(ParityError):
        check_parity(model.eval(), tmp_path / "bad.onnx", parity_inputs(tiny_model.config), "float16")


def test_a_checkpoint_written_before_architecture_was_its_own_word_still_exports(tiny_model, tmp_path):
    """Checkpoints name their network `architecture`; older ones called it `model_name`, the word the
    registry's names now own. Both load as the same network and export with the same card."""
    import torch

    from training.export import export_checkpoint

    ckpt = torch.load(tiny_model.checkpoint, map_location="cpu", weights_only=False)
    assert ckpt["architecture"] == "resnet8" and "model_name" not in ckpt
    ckpt["model_name"] = ckpt.pop("architecture")
    older = tmp_path / "older.pth"
    torch.save(ckpt, older)
    model, _ = load_checkpoint_model(older)
    new, _ = load_checkpoint_model(tiny_model.checkpoint)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), new.state_dict().values()))
    card = json.loads((export_checkpoint(older, tmp_path / "export") / "card.json").read_text())
    assert card["architecture"] == "resnet8" and card["labels"] == tiny_model.card["labels"]
