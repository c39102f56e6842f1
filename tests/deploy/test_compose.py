"""docker-compose.yml and the Dockerfiles, checked without a Docker engine: the compose binary
validates the file against the Compose specification, hadolint lints the Dockerfiles, and the
assertions below hold what the deployment promises."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import compose
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_BIN = Path(compose.__file__).parent / "docker-compose"
HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent))


def compose_config(*files: str) -> dict:
    args = [str(COMPOSE_BIN)] + [x for f in files for x in ("-f", f)] + ["config", "--format", "json"]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    import json

    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def spec() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_the_compose_implementation_accepts_the_file_and_refuses_a_broken_one(tmp_path):
    config = compose_config("docker-compose.yml")
    assert set(config["services"]) == {"api", "trainer", "lb"}
    broken = tmp_path / "broken.yml"
    broken.write_text((ROOT / "docker-compose.yml").read_text().replace("    restart: unless-stopped\n",
                                                                        "    restart: unless-stopped\n    bogus: 1\n", 1))
    out = subprocess.run([str(COMPOSE_BIN), "-f", str(broken), "config", "-q"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0 and "bogus" in out.stderr


def test_gpu_reservations_healthcheck_and_volumes(spec):
    api, trainer = spec["services"]["api"], spec["services"]["trainer"]
    for service in (api, trainer):
        [device] = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert set(service["volumes"]) == {"registry:/srv/registry", "data:/srv/data"}  # shared, named
    assert "/readyz" in " ".join(api["healthcheck"]["test"])
    assert set(spec["volumes"]) == {"registry", "data"}
    assert spec["services"]["lb"]["depends_on"]["api"]["condition"] == "service_healthy"
    assert api["environment"]["RESCAM_RUN_JOBS"] == "false"  # jobs run in the trainer, not the API
    assert "worker" in (ROOT / "docker" / "trainer.Dockerfile").read_text()


def test_a_host_without_a_gpu_drops_the_reservations():
    config = compose_config("docker-compose.yml", "docker/no-gpu.yml")
    for name in ("api", "trainer"):
        assert not config["services"][name].get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")


def test_replicas_share_their_predictions(spec):
    """`--scale api=3`: an overlay URL may reach another replica than the one that answered the
    predict, so predictions are kept in the data volume all replicas mount."""
    api = spec["services"]["api"]
    assert api["environment"]["RESCAM_PREDICTION_STORE"] == "shared"
    assert api["environment"]["RESCAM_DATA_ROOT"] == "/srv/data" and "data:/srv/data" in api["volumes"]


def test_no_secret_is_in_the_file_or_the_images(spec):
    text = (ROOT / "docker-compose.yml").read_text()
    assert "RESCAM_ADMIN_TOKEN" not in text.replace("RESCAM_ADMIN_TOKEN=...", "")
    for service in spec["services"].values():
        for key, value in (service.get("environment") or {}).items():
            assert not re.search(r"TOKEN|SECRET|PASSWORD|KEY", key), key
    for dockerfile in (ROOT / "docker").glob("*.Dockerfile"):
        assert not re.search(r"TOKEN|SECRET|PASSWORD", dockerfile.read_text())
    assert ".env" in (ROOT / ".dockerignore").read_text().split()


@pytest.mark.parametrize("name", ["api", "trainer"])
def test_dockerfiles_are_multi_stage_pinned_non_root_and_lint_clean(name):
    path = ROOT / "docker" / f"{name}.Dockerfile"
    text = path.read_text()
    bases = re.findall(r"^FROM (\S+)", text, flags=re.M)
    assert len(bases) >= 2  # multi-stage
    assert all(re.search(r":\d+\.\d+\.\d+", b) for b in bases)  # pinned to a patch release
    assert re.search(r"^USER (?!0\b|root\b)\S+", text, flags=re.M)
    if HADOLINT:
        out = subprocess.run([HADOLINT, str(path)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout
    else:
        pytest.skip("hadolint is not installed")


def test_dockerfile_installs_are_the_readmes_commands():
    readme = (ROOT / "README.md").read_text()
    api = (ROOT / "docker" / "api.Dockerfile").read_text()
    trainer = (ROOT / "docker" / "trainer.Dockerfile").read_text()
    for command in ('pip install --no-cache-dir ".[gpu]"', "pip install --no-cache-dir torch==2.13.0",
                    'pip install --no-cache-dir ".[train]"'):
        assert command in readme, command
    assert 'pip install --no-cache-dir ".[gpu]"' in api  # the CUDA provider's libraries (tests/deploy/test_cuda_image.py)
    assert all("torch" not in line for line in api.splitlines() if "pip install" in line)  # serving: no torch
    assert "pip install --no-cache-dir torch==2.13.0" in trainer and 'pip install --no-cache-dir ".[train]"' in trainer
