"""Starting weights for fine-tuning (`--init`): a torch state_dict (`.pth`, a rescam checkpoint or
a registry version's weights.pth), a `.safetensors` file, or a torchvision ResNet name (`resnet50`):
found in the local torch hub cache, else downloaded from torchvision's own address into it, its
SHA-256 checked against the prefix in torchvision's file name, where the host can reach it. And,
without `--init`, the shipped shapes model's weights where the network is the same (`shapes_start`)."""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

import torch

from models import list_models
from models.names import TORCHVISION_WEIGHTS

IMAGENET_NAMES = set(TORCHVISION_WEIGHTS)  # torchvision's, trained on ImageNet
# torchvision's own address; RESCAM_WEIGHTS_URL names a mirror (or, in the tests, a loopback server)
WEIGHTS_URL = "https://download.pytorch.org/models/"
DOWNLOAD_TIMEOUT_S = 30
# the shipped shapes model's weights (100,000 synthetic images): a start that needs no download
SHAPES_WEIGHTS = Path(__file__).resolve().parents[1] / "app" / "default_model" / "weights.pth"


class InitError(ValueError):
    """Starting weights that cannot be found or read; the message says what to do."""


def resolve(init: str) -> tuple[str, bool]:
    """(the weights file, whether they are ImageNet weights) for `--init` as the user wrote it."""
    path = Path(init).expanduser()
    if path.is_file():
        return str(path), False
    name = init.removeprefix("torchvision:")
    if name in IMAGENET_NAMES:
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        found = sorted(cache.glob(f"{name}-*.pth"))
        return str(found[-1] if found else download(TORCHVISION_WEIGHTS[name], cache)), True
    if name in list_models():
        raise InitError(f"{name} has no ImageNet weights in torchvision; pass a weights file")
    raise InitError(f"--init {init!r}: no such file, and not a torchvision ResNet ({', '.join(sorted(IMAGENET_NAMES))})")


def download(file: str, cache: Path) -> Path:
    """torchvision's `file` fetched into `cache`, whole and with the SHA-256 its name begins, or
    InitError (nothing left in the cache) saying why and what to do offline."""
    url = os.environ.get("RESCAM_WEIGHTS_URL", WEIGHTS_URL).rstrip("/") + "/" + file
    expected = file.rsplit("-", 1)[1].split(".")[0]
    offline = f"or copy {file} into {cache} (torchvision's name for it), or pass a weights file"
    cache.mkdir(parents=True, exist_ok=True)
    part = cache / f".{file}.{os.getpid()}.part"
    try:
        digest, size = hashlib.sha256(), 0
        # a body cut short ends the reads early (read(amt) raises nothing): the length check sees it
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(part, "wb") as out:
            declared = response.headers.get("Content-Length")
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        if declared is not None and size != int(declared):
            raise InitError(f"{url}: the download stopped at {size} of {declared} bytes; try again, {offline}")
        if not digest.hexdigest().startswith(expected):
            raise InitError(f"{url}: its SHA-256 begins {digest.hexdigest()[:len(expected)]}, not {expected} as "
                            f"torchvision's name says: not used; {offline}")
        os.replace(part, cache / file)
        return cache / file
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise InitError(f"cannot download {url} ({reason}): this host may not reach it; {offline}") from None
    finally:
        part.unlink(missing_ok=True)


def load_state(path: str) -> dict[str, torch.Tensor]:
    """The state_dict in a .safetensors or torch file (a rescam checkpoint's `model` entry)."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch and safetensors raise many kinds; all mean "unreadable"
        raise InitError(f"{path} is not a readable weights file: {e}") from None
    if not isinstance(state, dict):
        raise InitError(f"{path} holds a {type(state).__name__}, not a state_dict")
    return state.get("model", state)


def start_from_shapes(model: torch.nn.Module) -> bool:
    """Load the shipped shapes model's weights into `model`, all but its classifier head (the head
    keeps its fresh initialisation: its classes are shapes), where every other parameter has the
    same name and shape; True if loaded. A network of another architecture or width is left as it is
    (False): the start is a bonus of the default network, never a constraint on the plan."""
    if not SHAPES_WEIGHTS.is_file():
        return False
    state = {k: v for k, v in load_state(str(SHAPES_WEIGHTS)).items() if not k.startswith("fc.")}
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    if state.keys() != own.keys() or any(state[k].shape != own[k].shape for k in own):
        return False
    model.load_state_dict(state, strict=False)
    return True
