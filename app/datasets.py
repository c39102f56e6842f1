"""Training data sets on the server: image-folder trees under the data root, made from uploaded
zips (checked for path escapes, links and bombs before anything is written) or grown one
labelled sample at a time.

A data set is `<class>/<image>`, or `train/<class>/<image>` and `val/<class>/<image>` (the split
kept as given), with an optional `boxes.csv` (`path,label,x0,y0,x1,y1`, paths relative to the data
set's root, pixel coordinates, x1/y1 exclusive): the boxes that calibrate a model's box threshold
and measure its localization (what `rescam train --boxes-csv` reads)."""

from __future__ import annotations

import csv
import io
import math
import os
import re
import shutil
import stat
import threading
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
BOXES_FILE = "boxes.csv"
BOX_FIELDS = ("path", "label", "x0", "y0", "x1", "y1")
SPLITS = ("train", "val")
Box = tuple[float, float, float, float]


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
        """Images and boxed images per split (`all` when the data set has no train/val folders) and
        class; `classes` and `images` add the splits up."""
        d = self.path(name)
        if not d.is_dir():
            raise DatasetError(404, f"no dataset {name!r}")
        boxed = set(dataset_boxes(d))
        splits = {}
        for split, root in _split_roots(d).items():
            per_class = {}
            for c in sorted(p for p in root.iterdir() if p.is_dir() and not (root == d and p.name in SPLITS)):
                files = [f for f in c.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES]
                per_class[c.name] = {"images": len(files),
                                     "boxed": sum(f.relative_to(d).as_posix() in boxed for f in files)}
            splits[split] = {"images": sum(v["images"] for v in per_class.values()),
                             "boxed_images": sum(v["boxed"] for v in per_class.values()), "classes": per_class}
        classes: dict[str, int] = {}
        for part in splits.values():
            for c, v in part["classes"].items():
                classes[c] = classes.get(c, 0) + v["images"]
        return {"name": name, "classes": classes, "images": sum(classes.values()),
                "boxed_images": sum(p["boxed_images"] for p in splits.values()), "splits": splits}

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
        boxes = self._plan_boxes(archive, members, plan)
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
            if boxes:
                write_boxes(staging, boxes)
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
        top = _common_top(images)
        if top:  # one top folder around everything: drop it
            images = [(m, PurePosixPath(*p.parts[1:])) for m, p in images]
        split = images[0][1].parts[0] in SPLITS and len(images[0][1].parts) == 3
        plan, taken = [], set()
        for m, p in images:
            if split and not (len(p.parts) == 3 and p.parts[0] in SPLITS):
                raise DatasetError(422, f"{m.filename!r} is not train/<class>/<image> or val/<class>/<image>, "
                                        "as the zip's other images are")
            if not split and len(p.parts) != 2:
                raise DatasetError(422, f"{m.filename!r} is not <class>/<image> (or train|val/<class>/<image>)")
            folder = PurePosixPath(*p.parts[:-1])
            check_name(p.parts[-2], "class folder")
            # names are kept (the validation split is drawn from them, so it stays the same)
            target, n = folder / check_safe_file(p.name), 1
            while target in taken:
                target, n = folder / f"{n}-{check_safe_file(p.name)}", n + 1
            taken.add(target)
            plan.append((m, target))
        return plan

    @staticmethod
    def _plan_boxes(archive: zipfile.ZipFile, members: list[zipfile.ZipInfo],
                    plan: list[tuple[zipfile.ZipInfo, PurePosixPath]]) -> list[tuple[str, str, Box]]:
        """The rows of the zip's boxes.csv, checked (each names an image of the zip, with its class,
        and a non-empty box inside that image), with the paths the images will have."""
        found = [m for m in members if PurePosixPath(m.filename).name == BOXES_FILE
                 and len(PurePosixPath(m.filename).parts) <= 2]
        if not found:
            return []
        if len(found) > 1:
            raise DatasetError(422, "the zip holds more than one boxes.csv")
        csv_dir = PurePosixPath(found[0].filename).parent
        where = {}  # the paths a row may use (from the zip's root, or from the csv's folder) -> plan entry
        for m, target in plan:
            original = PurePosixPath(m.filename.replace("\\", "/"))
            where[original.as_posix()] = (m, target)
            if csv_dir.parts and original.parts[:len(csv_dir.parts)] == csv_dir.parts:
                where[PurePosixPath(*original.parts[len(csv_dir.parts):]).as_posix()] = (m, target)
        try:
            text = archive.read(found[0]).decode("utf-8-sig")
        except (UnicodeDecodeError, zipfile.BadZipFile, OSError) as e:
            raise DatasetError(422, f"boxes.csv could not be read: {e}") from None
        rows, seen = [], set()
        reader = csv.DictReader(io.StringIO(text))
        missing = set(BOX_FIELDS) - set(reader.fieldnames or ())
        if missing:
            raise DatasetError(422, f"boxes.csv needs the columns {', '.join(BOX_FIELDS)}; missing {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            key = PurePosixPath((row["path"] or "").replace("\\", "/").lstrip("./")).as_posix()
            if key not in where:
                raise DatasetError(422, f"boxes.csv line {line}: {row['path']!r} names no image in the zip")
            member, target = where[key]
            if row["label"] != target.parts[-2]:
                raise DatasetError(422, f"boxes.csv line {line}: label {row['label']!r}, but {row['path']!r} is in "
                                        f"class folder {target.parts[-2]!r}")
            if target in seen:
                raise DatasetError(422, f"boxes.csv line {line}: a second box for {row['path']!r}; one box per image")
            seen.add(target)
            with archive.open(member) as f:
                size = _image_size(f)
            box = check_box(row, size, f"boxes.csv line {line} ({row['path']})")
            rows.append((target.as_posix(), target.parts[-2], box))
        return rows

    def add_sample(self, name: str, label: str, data: bytes, suffix: str, size: tuple[int, int],
                   box: Box | None = None, split: str | None = None) -> dict:
        """One labelled image (already checked to decode, `size` its width and height) into data
        set `name`, with an optional box (appended to boxes.csv) and split (train or val, for a
        data set that has them)."""
        d = self.path(name)
        roots = _split_roots(d)
        if split is not None and split not in roots:
            raise DatasetError(422, f"dataset {name!r} has no train/val folders; leave split out" if "all" in roots
                               else f"split must be train or val, not {split!r}")
        split = split or next(iter(roots))  # train, or all for a data set without splits
        root = roots[split]
        if box is not None:
            box = check_box(dict(zip(("x0", "y0", "x1", "y1"), box)), size, "the box")
        folder = root / check_name(label, "label")
        folder.mkdir(parents=True, exist_ok=True)
        out = folder / f"{uuid.uuid4().hex}{suffix}"
        tmp = out.with_name("." + out.name + ".tmp")
        tmp.write_bytes(data)
        with self._boxes_lock:
            if box is not None:
                rows = [(p, lab, b) for p, (lab, b) in dataset_boxes(d).items()]
                write_boxes(d, [*rows, (out.relative_to(d).as_posix(), label, box)])
            tmp.rename(out)
        return {"dataset": name, "label": label, "file": out.name, "split": split,
                "box": list(box) if box else None}

    _boxes_lock = threading.Lock()


def check_safe_file(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[-100:]
    return cleaned.lstrip(".") or "image"


def _common_top(images: list[tuple[zipfile.ZipInfo, PurePosixPath]]) -> bool:
    """Whether every image lies under one top folder that is neither a class nor a split."""
    tops = {p.parts[0] for _, p in images}
    if len(tops) != 1 or next(iter(tops)) in SPLITS:
        return False
    depths = {len(p.parts) for _, p in images}
    return depths == {3} or (depths == {4} and all(p.parts[1] in SPLITS for _, p in images))


def _split_roots(d: Path) -> dict[str, Path]:
    if all((d / s).is_dir() for s in SPLITS):
        return {s: d / s for s in SPLITS}
    return {"all": d}


def _image_size(f) -> tuple[int, int]:
    try:
        with Image.open(f) as im:  # the size as served: after EXIF orientation (5-8 turn it)
            w, h = im.size
            return (h, w) if im.getexif().get(0x0112) in (5, 6, 7, 8) else (w, h)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DatasetError(422, f"an image named in boxes.csv could not be read: {e}") from None


def check_box(row: dict, size: tuple[int, int], where: str) -> Box:
    """x0, y0, x1, y1 from `row`: numbers, a box of some area, inside a width x height image."""
    try:
        x0, y0, x1, y1 = (float(row[k]) for k in ("x0", "y0", "x1", "y1"))
    except (TypeError, ValueError, KeyError):
        raise DatasetError(422, f"{where}: x0, y0, x1, y1 must be numbers") from None
    w, h = size
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise DatasetError(422, f"{where}: x0, y0, x1, y1 must be finite")
    if x1 <= x0 or y1 <= y0:
        raise DatasetError(422, f"{where}: the box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is empty (x1 > x0 and y1 > y0 "
                                "needed)")
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        raise DatasetError(422, f"{where}: the box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside the {w}x{h} image")
    return x0, y0, x1, y1


def read_boxes(csv_path: str | Path) -> dict[str, tuple[str, Box]]:
    """A boxes.csv (`path,label,x0,y0,x1,y1`): path as written -> (label, box). The one reader of
    the format: the service's data sets, training's --boxes-csv and the bench's data sets."""
    with open(csv_path, newline="") as f:
        return {r["path"]: (r["label"], tuple(float(r[k]) for k in ("x0", "y0", "x1", "y1")))
                for r in csv.DictReader(f)}


def dataset_boxes(d: Path) -> dict[str, tuple[str, Box]]:
    """The boxes of data set folder `d` (none when it has no boxes.csv)."""
    return read_boxes(d / BOXES_FILE) if (d / BOXES_FILE).is_file() else {}


def boxes_csv_text(rows: list[tuple[str, str, Box]]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(BOX_FIELDS)
    w.writerows((p, label, *(f"{v:g}" for v in box)) for p, label, box in rows)
    return out.getvalue()


def write_boxes(d: Path, rows: list[tuple[str, str, Box]]) -> None:
    """boxes.csv written whole: a reader sees the old file or the new one."""
    tmp = d / f".{BOXES_FILE}.{uuid.uuid4().hex}.tmp"
    tmp.write_text(boxes_csv_text(rows))
    os.replace(tmp, d / BOXES_FILE)
