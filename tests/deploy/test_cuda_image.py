"""The API image's environment, built here the way its Dockerfile builds it (`pip install ".[gpu]"`
in a fresh venv): every library ONNX Runtime's CUDA provider links resolves from the image's own
files, except the driver's libcuda.so.1 (the container toolkit mounts it), and the service's
preload finds them all. No GPU is needed; the install downloads about 1.6 GB (pip's cache keeps it)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DRIVER = {"libcuda.so.1"}  # the host's, mounted by the NVIDIA container toolkit


def install_command() -> list[str]:
    text = (ROOT / "docker" / "api.Dockerfile").read_text()
    found = re.search(r'/opt/rescam/bin/pip install --no-cache-dir (".*?"|\S+)', text)
    assert found, "the API Dockerfile's install line"
    return ["-m", "pip", "install", "--quiet", "--disable-pip-version-check", found.group(1).strip('"')]


@pytest.fixture(scope="module")
def image_env(tmp_path_factory) -> Path:
    if not sys.platform.startswith("linux") or not Path("/usr/bin/ldd").exists():
        pytest.skip("the image is Linux x86-64; ldd checks it")
    env = tmp_path_factory.mktemp("api-image") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    out = subprocess.run([str(env / "bin" / "python"), *install_command()], cwd=ROOT, capture_output=True, text=True,
                         timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    return env


def test_every_library_the_cuda_provider_links_is_in_the_image_but_the_driver(image_env):
    python = str(image_env / "bin" / "python")
    where = subprocess.run([python, "-c", "import onnxruntime, pathlib, sys; p = pathlib.Path(onnxruntime.__file__)"
                            ".parent / 'capi'; print(p); print(pathlib.Path(sys.prefix))"],
                           capture_output=True, text=True, check=True).stdout.split()
    provider = Path(where[0]) / "libonnxruntime_providers_cuda.so"
    assert provider.is_file()
    libs = sorted({str(p.parent) for p in Path(where[1]).glob("lib/python*/site-packages/nvidia/**/lib*.so*")})
    assert libs, "the gpu extra installed no nvidia-* libraries"
    ldd = subprocess.run(["ldd", str(provider)], capture_output=True, text=True,
                         env={"LD_LIBRARY_PATH": ":".join(libs)}).stdout
    missing = set(re.findall(r"^\s*(\S+) => not found", ldd, flags=re.M))
    assert missing <= DRIVER, missing
    assert {"libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10"} <= \
        {name for name in re.findall(r"^\s*(\S+) =>", ldd, flags=re.M)}


def test_the_service_preloads_them_before_its_first_session(image_env):
    """What app.engine does before a CUDA session: in the image, nothing is left unloaded."""
    out = subprocess.run([str(image_env / "bin" / "python"), "-c",
                          "from app.engine import preload_gpu_libraries; print(list(preload_gpu_libraries()))"],
                         capture_output=True, text=True, cwd="/", timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout
