import json

import pytest

from app.registry import Registry, RegistryError


def make_export(path, tag):
    path.mkdir(parents=True)
    (path / "model.onnx").write_bytes(b"onnx-" + tag.encode())
    card = {"labels": [tag], "cam_size": [1, 1], "architecture": tag,
            "preprocessing": {"crop": 8, "resize": 8, "mean": [0, 0, 0], "std": [1, 1, 1]}}
    (path / "card.json").write_text(json.dumps(card))
    return path


def test_versions_are_immutable_directories_in_triton_layout(tmp_path):
    reg = Registry(tmp_path / "reg")
    v1 = reg.register("m", make_export(tmp_path / "a", "a"))
    v2 = reg.register("m", make_export(tmp_path / "b", "b"))
    assert (v1, v2) == (1, 2) and reg.versions("m") == [1, 2]
    assert (tmp_path / "reg" / "m" / "2" / "model.onnx").read_bytes() == b"onnx-b"
    assert reg.card("m", 1).architecture == "a" and reg.card("m", 2).labels == ("b",)
    assert not [p for p in (tmp_path / "reg" / "m").iterdir() if p.name.startswith(".")]


def test_deploy_and_rollback_keep_an_audit_log(tmp_path):
    reg = Registry(tmp_path)
    for tag in "abc":
        reg.register("m", make_export(tmp_path / tag, tag))
    assert reg.deployed("m") is None
    reg.deploy("m", 1, actor="alice")
    reg.deploy("m", 3, actor="bob", reason="better")
    assert reg.deployed("m") == 3
    assert reg.rollback("m") == 1 and reg.deployed("m") == 1
    with pytest.raises(RegistryError, match="no earlier deployment"):
        reg.rollback("m")
    log = reg.audit_log("m")
    assert [(e["action"], e["version"]) for e in log] == [("deploy", 1), ("deploy", 3), ("rollback", 1)]
    assert log[1]["actor"] == "bob" and log[2]["from"] == 3


def test_bad_requests_are_refused(tmp_path):
    reg = Registry(tmp_path)
    with pytest.raises(RegistryError):
        reg.deploy("m", 7)
    with pytest.raises(RegistryError, match="has no card.json"):
        (tmp_path / "x").mkdir()
        (tmp_path / "x" / "model.onnx").write_bytes(b"")
        reg.register("m", tmp_path / "x")
    with pytest.raises(RegistryError, match="invalid model name"):
        reg.versions("../etc")
    assert reg.versions("m") == []


def test_a_deleted_version_leaves_the_rollback_history_and_the_audit_log(tmp_path):
    reg = Registry(tmp_path)
    for tag in "abc":
        reg.register("m", make_export(tmp_path / tag, tag))
    for v in (1, 2, 3):
        reg.deploy("m", v)
    reg.delete("m", 2, actor="carol")
    assert reg.pointer("m")["history"] == [1]
    assert reg.rollback("m") == 1  # past the deleted version, not stuck on it
    assert reg.audit_log("m")[-2] == {**reg.audit_log("m")[-2], "action": "delete", "version": 2, "actor": "carol"}


def test_a_card_that_cannot_be_read_is_refused_at_register_and_named_on_read(tmp_path):
    reg = Registry(tmp_path / "reg")
    bad = make_export(tmp_path / "bad", "x")
    (bad / "card.json").write_text(json.dumps({"labels": ["x"]}))
    with pytest.raises(RegistryError, match="preprocessing"):
        reg.register("m", bad)
    reg.register("m", make_export(tmp_path / "good", "g"))
    (tmp_path / "reg" / "m" / "1" / "card.json").write_text("{damaged")
    with pytest.raises(RegistryError, match="broken card"):
        reg.card("m", 1)
