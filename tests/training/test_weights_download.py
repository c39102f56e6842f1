"""torchvision's ImageNet weights by name, as users have them: from the torch hub cache, or
downloaded from a host (here a loopback HTTP server standing in for torchvision's) with the
SHA-256 prefix of torchvision's file name checked; each way it can go wrong is one clear line and
leaves nothing in the cache or the registry."""

import hashlib
import http.server
import io
import shutil
import threading

import pytest
import torch

from app.jobspec import JobSpec
from app.registry import Registry
from models import create_model
from training import weights
from training.config import IMAGENET_MEAN
from training.job import config_for, run_job
from training.weights import InitError, resolve


@pytest.fixture(scope="module")
def resnet18_file():
    """A resnet18 state_dict (random weights: the test checks the plumbing, not ImageNet) and the
    name torchvision would give it: resnet18-<the start of its SHA-256>.pth."""
    buffer = io.BytesIO()
    torch.save(create_model("resnet18", num_classes=1000).state_dict(), buffer)
    data = buffer.getvalue()
    return data, f"resnet18-{hashlib.sha256(data).hexdigest()[:8]}.pth"


class Host:
    """Serves `files` {name: (body, declared length)} on loopback; counts the requests."""

    def __init__(self, files):
        self.files, self.requests = files, 0
        host = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                host.requests += 1
                name = self.path.rsplit("/", 1)[-1]
                if name not in host.files:
                    self.send_error(404)
                    return
                body, declared = host.files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(declared))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/models/"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def host(tmp_path, monkeypatch, resnet18_file):
    data, name = resnet18_file
    monkeypatch.setitem(weights.TORCHVISION_WEIGHTS, "resnet18", name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    server = Host({name: (data, len(data))})
    monkeypatch.setenv("RESCAM_WEIGHTS_URL", server.url)
    yield server
    server.close()


def cache_files(tmp_path):
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_a_name_is_downloaded_once_checked_and_then_found_in_the_cache(host, tmp_path, resnet18_file):
    path, imagenet = resolve("resnet18")
    assert imagenet and cache_files(tmp_path) == [resnet18_file[1]] and host.requests == 1
    assert open(path, "rb").read() == resnet18_file[0]
    assert resolve("torchvision:resnet18") == (path, True) and host.requests == 1  # the cache, no download
    cfg = config_for(JobSpec(run_dir=str(tmp_path / "run"), data="synthetic", init="torchvision:resnet18"))
    assert (cfg.architecture, cfg.lr, cfg.image_size, cfg.mean) == ("resnet18", 0.01, 160, IMAGENET_MEAN)


@pytest.mark.parametrize("serve, words", [
    ("wrong", "its SHA-256 begins"),
    ("truncated", "the download stopped"),
    ("missing", "Not Found"),
    ("unreachable", "this host may not reach it"),
])
def test_each_bad_download_is_one_clear_line_and_leaves_nothing(host, tmp_path, resnet18_file, monkeypatch,
                                                                serve, words):
    data, name = resnet18_file
    if serve == "wrong":
        host.files[name] = (data[:-1] + bytes([data[-1] ^ 1]), len(data))
    elif serve == "truncated":
        host.files[name] = (data[: len(data) // 2], len(data))
    elif serve == "missing":
        host.files.clear()
    else:
        monkeypatch.setenv("RESCAM_WEIGHTS_URL", "http://127.0.0.1:9/models/")  # the discard port: refused
    with pytest.raises(InitError, match=words) as e:
        resolve("resnet18")
    assert "\n" not in str(e.value) and f"copy {name} into" in str(e.value)
    assert cache_files(tmp_path) == []  # no partial file left to be found next time


def test_weights_of_another_architecture_or_a_bad_hash_end_the_job_with_nothing_registered(host, tmp_path,
                                                                                          resnet18_file):
    registry = tmp_path / "registry"
    spec = dict(run_dir=str(tmp_path / "run"), data="synthetic", registry=str(registry),
                settings={"synthetic_train": 64, "synthetic_val": 32, "max_steps": 1})
    with pytest.raises(InitError, match="weights of another architecture"):
        run_job(JobSpec(**{**spec, "settings": {**spec["settings"], "model": "resnet20"}}, init="resnet18"))
    assert cache_files(tmp_path) == [resnet18_file[1]]  # the download was good: kept for the next job
    shutil.rmtree(tmp_path / "torch")
    data, name = resnet18_file
    host.files[name] = (b"x" * 1000, 1000)
    with pytest.raises(InitError, match="SHA-256"):
        run_job(JobSpec(**spec, init="resnet18"))
    assert not registry.exists() or Registry(registry).versions("default") == []
