"""`rescam` as a user meets it: --version, choices, one-line errors, the models commands, a
one-off predict that starts nothing else, and where fine-tuning weights come from."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from app.registry import Registry
from tests.conftest import shape_jpeg
from tests.live import ROOT
from training.cli import _config, build_parser


def rescam(*args, cwd=ROOT, env=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "training.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def one_line_error(out, code, words):
    assert out.returncode == code, out
    assert "Traceback" not in out.stderr, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("rescam") and words in last, out.stderr


def test_version_and_choices():
    out = rescam("--version")
    assert out.returncode == 0 and out.stdout.strip() == "rescam 0.1.0"
    one_line_error(rescam("train", "--model", "resnet7"), 2, "invalid choice: 'resnet7'")
    one_line_error(rescam("train", "--recipe", "fast"), 2, "invalid choice: 'fast'")
    assert "--init" in rescam("train", "--help").stdout


def test_user_mistakes_are_one_line_errors(tmp_path):
    one_line_error(rescam("eval", str(tmp_path / "missing.pth")), 1, "missing.pth")
    one_line_error(rescam("predict", str(tmp_path / "missing.jpg"), "--registry", str(tmp_path)), 1, "no such file")
    one_line_error(rescam("models", "deploy", "default", "3", "--registry", str(tmp_path)), 1,
                   "has no version 3")
    one_line_error(rescam("models", "show", "birds", "1", "--registry", str(tmp_path)), 1, "no model 'birds' here")
    one_line_error(rescam("models", "deploy", "bad/name", "1", "--registry", str(tmp_path)), 1, "invalid model name")
    one_line_error(rescam("train", "--init", "resnet50", "--registry", str(tmp_path),
                          env={"TORCH_HOME": str(tmp_path / "hub"), "RESCAM_WEIGHTS_URL": "http://127.0.0.1:9/"}),
                   1, "cannot download http://127.0.0.1:9/resnet50-0676ba61.pth")
    one_line_error(rescam("run-job", str(tmp_path / "spec.json")), 1, "spec.json")


def test_models_commands_on_the_registry(tiny_model, tmp_path):
    shutil.copytree(tiny_model.registry, tmp_path / "registry")
    registry = Registry(tmp_path / "registry")
    registry.register("default", tiny_model.export)
    reg = ("--registry", str(tmp_path / "registry"))
    shutil.copytree(tmp_path / "registry" / "default", tmp_path / "registry" / "birds")
    every = rescam("models", "list", *reg).stdout.splitlines()
    assert every[0].split()[:2] == ["birds", "2"] and "v1 live" in every[0], every
    assert every[1].split()[:3] == ["*", "default", "2"] and "v1 live" in every[1], every  # * the default model
    listed = rescam("models", "list", "default", *reg)
    assert listed.returncode == 0 and listed.stdout.splitlines()[0].startswith("* v1")
    assert listed.stdout.splitlines()[1].startswith("  v2") and "resnet8" in listed.stdout
    assert json.loads(rescam("models", "show", "default", "2", *reg).stdout)["labels"][0] == "circle"
    assert rescam("models", "deploy", "default", "2", "--reason", "try", *reg).returncode == 0
    assert registry.deployed("default") == 2 and registry.audit_log("default")[-1]["reason"] == "try"
    one_line_error(rescam("models", "delete", "default", "2", *reg), 1, "is live")
    assert registry.deployed("birds") == 1  # another model's versions are its own
    assert rescam("models", "rollback", "default", *reg).returncode == 0 and registry.deployed("default") == 1
    assert rescam("models", "delete", "default", "2", *reg).returncode == 0 and registry.versions("default") == [1]


def test_a_one_off_predict_starts_no_job_runner_and_writes_no_database(tiny_model, tmp_path):
    (tmp_path / "shape.jpg").write_bytes(shape_jpeg())
    env = {k: v for k, v in os.environ.items() if k != "RESCAM_DATA_ROOT"}
    out = subprocess.run([sys.executable, "-m", "training.cli", "predict", "shape.jpg", "--registry",
                          str(tiny_model.registry), "--out", "o.png"], cwd=tmp_path, capture_output=True, text=True,
                         env={**env, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["results"][0]["predictions"][0]["boxes"] and answer["overlay"] == "o.png"
    assert (tmp_path / "o.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.png", "shape.jpg"]  # no data/, no jobs.sqlite


def test_init_from_a_torchvision_name_in_the_hub_cache_brings_imagenet_statistics(tmp_path, monkeypatch):
    from models import create_model
    from training.config import IMAGENET_MEAN, IMAGENET_STD

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # the cache is $TORCH_HOME/hub/checkpoints
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    weights = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    torch.save(create_model("resnet18", num_classes=1000).state_dict(), weights)
    cfg = _config(build_parser().parse_args(["train", "--model", "resnet18", "--init", "resnet18"]))
    assert cfg.init == str(weights) and cfg.mean == IMAGENET_MEAN and cfg.std == IMAGENET_STD
    own = _config(build_parser().parse_args(["train", "--init", str(weights)]))  # a file: its user's statistics
    assert own.init == str(weights) and own.mean != IMAGENET_MEAN


def test_init_from_safetensors_loads_the_same_weights(tmp_path):
    from safetensors.torch import save_file

    from models import create_model
    from training.train import load_init

    source = create_model("resnet8", num_classes=3)
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    target = create_model("resnet8", num_classes=3)
    load_init(target, str(tmp_path / "w.safetensors"))
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), name
    (tmp_path / "bad.safetensors").write_bytes(b"not weights")
    with pytest.raises(ValueError, match="not a readable weights file"):
        load_init(target, str(tmp_path / "bad.safetensors"))


def test_the_architecture_is_named_as_such_and_the_old_flag_still_works():
    for flag in ("--architecture", "--model"):
        assert _config(build_parser().parse_args(["train", flag, "resnet32"])).architecture == "resnet32"
    for key in ("architecture", "model"):  # --set with today's name and the older one
        assert _config(build_parser().parse_args(["train", "--set", f"{key}=resnet44"])).architecture == "resnet44"


def test_an_unknown_training_setting_is_named():
    out = rescam("train", "--set", "learning_rate=0.1", "--no-register")
    one_line_error(out, 1, "unknown training settings ['learning_rate']")


def test_a_chance_level_model_goes_live_by_no_cli_path(tiny_model, tmp_path):
    """Issue 24's reproduction: `rescam train ... --lr 1e-9 --deploy always` on a registry with a
    live model registers the chance-level version and leaves the live one serving; the audit log
    names the path of every deploy that did happen."""
    shutil.copytree(tiny_model.registry, tmp_path / "registry")
    registry = Registry(tmp_path / "registry")
    live = registry.deployed("default")
    out = rescam("train", "--recipe", "demo", "--model", "resnet8", "--image-size", "32", "--set", "synthetic_train=256",
                 "--set", "synthetic_val=300", "--epochs", "1", "--lr", "1e-9", "--deploy", "always",
                 "--registry", str(tmp_path / "registry"), "--out", str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr
    assert registry.versions("default") == [live, live + 1] and registry.deployed("default") == live
    assert "never deployed, by any policy" in out.stderr and "does not clear chance" in out.stderr
    # the same version through the models command: refused by the same rule, nothing changes
    refused = rescam("models", "deploy", "default", str(live + 1), "--registry", str(tmp_path / "registry"))
    assert refused.returncode == 1 and "never deployed" in refused.stderr and registry.deployed("default") == live
    assert registry.gate("default", live + 1)["deployable"] is False
    assert all(e["version"] != live + 1 for e in registry.audit_log("default") if e["action"] == "deploy")


def test_bootstrap_train_never_deploys_a_first_version_the_gate_marked_never_deployable(tiny_model, tmp_path,
                                                                                       monkeypatch):
    """`rescam bootstrap --train` on an empty registry: its trained first version goes live only
    through the one policy, which refuses a chance-level version even with nothing else live. The
    training is stood in for (a registered version and its gate, as run_job leaves them); the
    deploy path after it is the real one."""
    from types import SimpleNamespace

    import training.job
    from training.cli import main

    never = {"passed": False, "deployable": False, "reason": "top-1 0.12 does not clear chance"}
    staged = tmp_path / "export"
    shutil.copytree(tiny_model.export, staged)
    (staged / "gate.json").write_text(json.dumps(never))
    registry = Registry(tmp_path / "registry")

    def trained(spec):
        return SimpleNamespace(version=registry.register(spec.model_name, staged), live_version=None, gate=never)

    monkeypatch.setattr(training.job, "run_job", trained)
    main(["bootstrap", "--train", "--registry", str(tmp_path / "registry"), "--out", str(tmp_path / "run")])
    assert registry.versions("default") == [1] and registry.deployed("default") is None


def test_serve_on_a_port_in_use_says_so_in_one_line(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = rescam("serve", "--port", str(port), "--registry", str(tmp_path / "registry"))
    one_line_error(out, 1, f"127.0.0.1:{port} is already in use")
    assert "--port N" in out.stderr
    bad = rescam("serve", "--host", "no-such-host.invalid", "--port", str(port), "--registry", str(tmp_path / "r"))
    one_line_error(bad, 1, f"cannot serve on no-such-host.invalid:{port}")
