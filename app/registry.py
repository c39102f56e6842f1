"""The model registry on disk, in Triton's model-repository layout:

    <root>/<model>/<version>/model.onnx   immutable, version a positive integer
    <root>/<model>/<version>/card.json
    <root>/<model>/<version>/ood.npz      the training features the OOD score compares with (app.scoring)
    <root>/<model>/<version>/report/      optional: figures, gallery and index.html
    <root>/<model>/DEPLOYED               {"version": v, "history": [...]}, replaced atomically
    <root>/<model>/audit.jsonl            who deployed what, when and why

Used by the service and by training's `register` step; a version's card is read here, once, into a
typed ModelCard.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from .card import CardError, ModelCard
from .scoring import OOD_FILE, OpenWorldError

MODEL_FILE = "model.onnx"
FLOAT32_FILE = "model.float32.onnx"  # an int8 version's float32 graph, for its near-ties (training/quantize.py)
CARD_FILE = "card.json"
WEIGHTS_FILE = "weights.pth"  # optional: the torch state_dict, to fine-tune from the live model
REPORT_DIR = "report"  # optional: the version's report (training/report.py)
GATE_FILE = "gate.json"  # optional: the promotion gate's decision when the version was trained (training/gate.py)
POINTER = "DEPLOYED"
AUDIT = "audit.jsonl"
MODEL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
MODEL_NAME_RULE = "letters, digits, '-' and '_', at most 64 characters"


class RegistryError(Exception):
    """A request the registry cannot honour; the message says why."""


class UnknownVersion(RegistryError):
    """The model has no such version (or no such model)."""


class InvalidModelName(RegistryError, ValueError):
    """A model name outside MODEL_NAME_RULE (a ValueError too, so settings validation reports it)."""


def check_model_name(name: str) -> str:
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
        raise InvalidModelName(f"invalid model name {name!r}: use {MODEL_NAME_RULE}")
    return name


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Registry:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        # OOD files already checked against their cards, by (size, mtime): a listing of the versions
        # reads every card, and hashing each bank (megabytes) at every listing is work done again
        self.checked: dict[Path, tuple[int, int]] = {}

    def model_dir(self, model: str) -> Path:
        return self.root / check_model_name(model)

    def models(self) -> list[str]:
        """The names of the models with at least one version, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and MODEL_NAME.fullmatch(p.name) and self.versions(p.name))

    def versions(self, model: str) -> list[int]:
        d = self.model_dir(model)
        if not d.is_dir():
            return []
        return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit() and (p / MODEL_FILE).is_file())

    def version_dir(self, model: str, version: int) -> Path:
        d = self.model_dir(model) / str(int(version))
        if not (d / MODEL_FILE).is_file():
            raise UnknownVersion(f"model {model!r} has no version {version}")
        return d

    def card(self, model: str, version: int) -> ModelCard:
        """The version's card; RegistryError when it is missing or unreadable, or when the OOD file it
        names is missing or not the one it names, or the float32 graph for its near-ties is missing
        (such a version is listed as broken, never loaded)."""
        directory = self.version_dir(model, version)
        try:
            card = ModelCard.load(directory / CARD_FILE)
            if card.ood_spec is not None:
                self._check_ood(directory, card)
            near_ties = card.near_tie_margin is not None
        except CardError as e:
            raise RegistryError(f"model {model!r} v{version} has a broken card: {e}") from None
        except OpenWorldError as e:
            raise RegistryError(f"model {model!r} v{version} is broken: {e}") from None
        if near_ties and not (directory / FLOAT32_FILE).is_file():
            raise RegistryError(f"model {model!r} v{version} is broken: its card answers near-ties with "
                                f"{FLOAT32_FILE}, which is missing")
        return card

    def _check_ood(self, directory: Path, card: ModelCard) -> None:
        path = directory / card.ood_spec.file
        try:
            stat = path.stat()
            seen = (stat.st_size, stat.st_mtime_ns)
        except OSError:
            seen = None
        if seen is None or self.checked.get(path) != seen:
            card.ood_spec.check_file(directory)  # OpenWorldError when it is not the card's file
            self.checked[path] = seen

    def report_index(self, model: str, version: int) -> Path | None:
        """The version's report page (training/report.py), when it has one."""
        index = self.version_dir(model, version) / REPORT_DIR / "index.html"
        return index if index.is_file() else None

    def register(self, model: str, source: str | Path) -> int:
        """Copy source/{model.onnx, card.json} in as the next version; the new directory appears
        whole or not at all."""
        source = Path(source)
        for name in (MODEL_FILE, CARD_FILE):
            if not (source / name).is_file():
                raise RegistryError(f"{source} has no {name}")
        try:
            ModelCard.load(source / CARD_FILE)
        except CardError as e:
            raise RegistryError(f"{source}: {e}") from None
        d = self.model_dir(model)
        d.mkdir(parents=True, exist_ok=True)
        staging = d / f".staging-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            for name in (MODEL_FILE, CARD_FILE, WEIGHTS_FILE, OOD_FILE, GATE_FILE, FLOAT32_FILE):
                if (source / name).is_file():
                    shutil.copy2(source / name, staging / name)
            if (source / REPORT_DIR).is_dir():
                shutil.copytree(source / REPORT_DIR, staging / REPORT_DIR)
            while True:
                version = max(self.versions(model) + [0]) + 1
                try:
                    os.rename(staging, d / str(version))  # fails if another writer took the number
                    return version
                except OSError:
                    if not (d / str(version)).exists():
                        raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def delete(self, model: str, version: int, actor: str = "cli") -> None:
        """Remove a version that is not live; it disappears at once and whole, and leaves the
        rollback history (a rollback goes to the deployment before it)."""
        directory = self.version_dir(model, version)
        current = self.pointer(model)
        if current is not None and version == int(current["version"]):
            raise RegistryError(f"v{version} is live; deploy another version before deleting it")
        trash = directory.with_name(f".deleted-{version}-{uuid.uuid4().hex}")
        directory.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
        if current is not None and version in current["history"]:
            history = [v for v in current["history"] if v != version]
            write_atomic(self.model_dir(model) / POINTER, json.dumps({**current, "history": history}))
        self._audit(model, {"action": "delete", "version": int(version), "actor": actor})

    def pointer(self, model: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.model_dir(model) / POINTER).read_text())
        except FileNotFoundError:
            return None

    def gate(self, model: str, version: int) -> dict[str, Any] | None:
        """The promotion gate's decision recorded with the version, or None (none ran, or it is
        unreadable: then nothing is known against the version)."""
        try:
            decision = json.loads((self.version_dir(model, version) / GATE_FILE).read_text())
        except (OSError, ValueError):
            return None
        return decision if isinstance(decision, dict) else None

    def deployed(self, model: str) -> int | None:
        p = self.pointer(model)
        return None if p is None else int(p["version"])

    def deploy(self, model: str, version: int, actor: str = "cli", reason: str = "", **audit: Any) -> None:
        self.version_dir(model, version)
        current = self.pointer(model)
        history = [] if current is None else current["history"] + [current["version"]]
        self._set(model, version, history[-50:], "deploy", actor, reason, audit)

    def rollback(self, model: str, actor: str = "cli", reason: str = "") -> int:
        current = self.pointer(model)
        if current is None or not current["history"]:
            raise RegistryError(f"model {model!r} has no earlier deployment to roll back to")
        *history, previous = current["history"]
        self._set(model, previous, history, "rollback", actor, reason, {"from": current["version"]})
        return previous

    def _set(self, model: str, version: int, history: list[int], action: str, actor: str, reason: str,
             audit: dict[str, Any]) -> None:
        write_atomic(self.model_dir(model) / POINTER, json.dumps({"version": int(version), "history": history}))
        self._audit(model, {"action": action, "version": int(version), "actor": actor, "reason": reason, **audit})

    def _audit(self, model: str, entry: dict[str, Any]) -> None:
        with open(self.model_dir(model) / AUDIT, "a") as f:
            f.write(json.dumps({"time": time.time(), **entry}) + "\n")

    def audit_log(self, model: str) -> list[dict[str, Any]]:
        try:
            lines = (self.model_dir(model) / AUDIT).read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]
