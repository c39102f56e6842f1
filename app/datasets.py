"""Training data sets on the server: image-folder trees under the data root, made from uploaded
zips (checked for path escapes, links and bombs before anything is written) or grown one
labelled sample at a time."""

from __future__ import annotations

import io
import re
import shutil
import stat
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class DatasetError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_files: int
    max_uncompressed: int
    max_ratio: float = 200.0  # a member that inflates more than this is a bomb, not a photo


def check_name(name: str, what: str = "dataset name") -> str:
    if not SAFE_NAME.match(name or "") or ".." in name:
        raise DatasetError(422, f"invalid {what} {name!r}: use letters, digits, '_', '-', '.' (at most 64)")
    return name


class Datasets:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, name: str) -> Path:
        return self.root / check_name(name)

    def list(self) -> list[dict]:
        if not self.root.is_dir():
            return []
        return [self.describe(p.name) for p in sorted(self.root.iterdir()) if p.is_dir() and SAFE_NAME.match(p.name)]

    def describe(self, name: str) -> dict:
        d = self.path(name)
        if not d.is_dir():
            raise DatasetError(404, f"no dataset {name!r}")
        classes = {c.name: sum(1 for f in c.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
                   for c in sorted(d.iterdir()) if c.is_dir()}
        return {"name": name, "classes": classes, "images": sum(classes.values())}

    def import_zip(self, name: str, data: bytes, limits: Limits) -> dict:
        """Unpack a zip of `<class>/<image>` (optionally under one top folder) as dataset `name`."""
        target = self.path(name)
        if target.exists():
            raise DatasetError(409, f"dataset {name!r} exists already")
        if len(data) > limits.max_bytes:
            raise DatasetError(413, f"upload is larger than the limit of {limits.max_bytes} bytes")
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
            members = [m for m in archive.infolist() if not m.is_dir()]
        except (zipfile.BadZipFile, ValueError, OSError) as e:
            raise DatasetError(400, f"not a readable zip file: {e}") from None
        plan = self._plan(members, limits)
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".staging-{uuid.uuid4().hex}"
        try:
            written = 0
            for member, relative in plan:
                out = staging / relative
                out.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as src, open(out, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > limits.max_uncompressed:  # sizes in the header can lie
                            raise DatasetError(413, "the zip inflates past the uncompressed limit")
                        dst.write(chunk)
            staging.rename(target)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise DatasetError(400, f"the zip could not be unpacked: {e}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self.describe(name)

    @staticmethod
    def _plan(members: list[zipfile.ZipInfo], limits: Limits) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
        """Check every member before writing anything: (member, where it goes)."""
        if len(members) > limits.max_files:
            raise DatasetError(413, f"the zip holds {len(members)} files; the limit is {limits.max_files}")
        total = 0
        paths = []
        for m in members:
            mode = m.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise DatasetError(400, f"the zip holds a link ({m.filename}); links are refused")
            path = PurePosixPath(m.filename.replace("\\", "/"))
            if path.is_absolute() or ".." in path.parts or ":" in m.filename:
                raise DatasetError(400, f"the zip path {m.filename!r} escapes the dataset folder")
            total += m.file_size
            if total > limits.max_uncompressed:
                raise DatasetError(413, f"the zip inflates to more than {limits.max_uncompressed} bytes")
            if m.compress_size and m.file_size / m.compress_size > limits.max_ratio:
                raise DatasetError(413, f"{m.filename!r} inflates {m.file_size / m.compress_size:.0f}x: a zip bomb")
            paths.append(path)
        images = [(m, p) for m, p in zip(members, paths)
                  if p.suffix.lower() in IMAGE_SUFFIXES and not any(part.startswith((".", "__")) for part in p.parts)]
        if not images:
            raise DatasetError(422, "the zip holds no images (expected <class>/<image> entries)")
        tops = {p.parts[0] for _, p in images}
        if len(tops) == 1 and all(len(p.parts) == 3 for _, p in images):  # one top folder: drop it
            images = [(m, PurePosixPath(*p.parts[1:])) for m, p in images]
        plan, taken = [], set()
        for m, p in images:
            if len(p.parts) != 2:
                raise DatasetError(422, f"{m.filename!r} is not <class>/<image>")
            check_name(p.parts[0], "class folder")
            # names are kept (the validation split is drawn from them, so it stays the same)
            target, n = PurePosixPath(p.parts[0], check_safe_file(p.name)), 1
            while target in taken:
                target, n = PurePosixPath(p.parts[0], f"{n}-{check_safe_file(p.name)}"), n + 1
            taken.add(target)
            plan.append((m, target))
        return plan

    def add_sample(self, name: str, label: str, data: bytes, suffix: str) -> dict:
        """One labelled image (already checked to decode) into dataset `name`."""
        d = self.path(name)
        folder = d / check_name(label, "label")
        folder.mkdir(parents=True, exist_ok=True)
        out = folder / f"{uuid.uuid4().hex}{suffix}"
        tmp = out.with_name("." + out.name + ".tmp")
        tmp.write_bytes(data)
        tmp.rename(out)
        return {"dataset": name, "label": label, "file": out.name}


def check_safe_file(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[-100:]
    return cleaned.lstrip(".") or "image"
