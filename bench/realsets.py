"""Real, boxed data sets that no one here drew, built offline from files that packages ship.

- `digits`: scikit-learn's handwritten digits (UCI, 1,797 scans of 43 writers' digits, 8x8, 17
  grey levels) placed at a random size and position on a cluttered 64x64 canvas (a colour
  gradient, noise, and fragments of other digits), the box being the extent of the digit's ink.
  The handwriting is real; the canvas is ours. 10 classes: 360 images held out (`test/`, never
  uploaded; what the figures in BENCHMARKS.md are measured on) and 1,437 to upload, of which 288
  are `val/` and 1,149 `train/`. The same seed, the same set.

- `faces`: scikit-image's subset of Labeled Faces in the Wild (100 face and 100 non-face 25x25
  grey patches of real photographs) pasted at 20-40 px onto 64x64 crops of the real photographs
  scikit-image ships (brick, grass, gravel, coffee, a cat, a rocket, coins, the Hubble deep field),
  the box being the patch. 2 classes; the held-out `test/` images use 30 faces and 30 non-faces that
  no uploaded image contains. Needs `pip install scikit-image` (its wheel carries the files).

- `objects`: real-object clip art (Debian's `openclipart-png`: public-domain drawings and traced
  photographs, sorted by subject) cut out along their own transparency and pasted at 10-85% of a
  96x96 canvas onto crops of the real photographs scikit-image ships, the box being the extent
  of the object's opaque pixels. 8 classes (bird, insect, mammal, fish, fruit, flower, vehicle,
  house), 2,400 `train/`, 480 `val/`, 480 `test/` images of the same objects in new composites,
  and 480 `unseen/` images of the 20% of each class's objects that no other split shows.
  Needs `apt-get install openclipart-png` and `pip install scikit-image`.

- `cutouts`: the same drawings on nothing: 96x96 RGBA PNGs whose transparent pixels are black
  underneath, as clip art, icons and product cut-outs are stored; 800 `train/`, 160 each of `val/`,
  `test/` and `unseen/`. What a folder of transparent images teaches (bench/served_pixels.py).

- `photos`: the real photographs scikit-image ships, whole and as random crops: a set of images
  of none of any model's classes (bench/ood.py). Not a training set.

Written as an image-folder tree (`train/<class>/`, `val/<class>/`, `test/<class>/`) with a
`boxes.csv` (`path,label,x0,y0,x1,y1`, paths relative to the root): what `rescam train --data
folder:ROOT --boxes-csv ROOT/boxes.csv` reads. The zip holds train/ and val/ only (with or without
their boxes), as `POST /v1/datasets` takes it.

    python bench/realsets.py digits /tmp/digits [--zip /tmp/digits.zip] [--no-boxes]
"""

from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from app.datasets import BOXES_FILE, boxes_csv_text, read_boxes, write_boxes
from training.open_world import PHOTOS, photo

SIZE = 64
INK = 0.25  # a canvas pixel belongs to the digit where its ink covers at least this much


def _clutter(rng: np.random.Generator, digits: np.ndarray) -> np.ndarray:
    """A gradient between two colours, noise, and 3-6 fragments (4x4 crops) of other digits."""
    a, b = rng.integers(0, 256, size=(2, 3)).astype(np.float32)
    t = np.linspace(0, 1, SIZE, dtype=np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(theta) * t[None, :] + np.sin(theta) * t[:, None]
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    canvas = a + (b - a) * ramp[..., None]
    for _ in range(int(rng.integers(3, 7))):
        d = digits[rng.integers(len(digits))]
        y, x = rng.integers(0, 5, size=2)
        piece = np.kron(d[y:y + 4, x:x + 4], np.ones((3, 3))) / 16.0  # 12x12
        py, px = rng.integers(0, SIZE - 12, size=2)
        tone = rng.integers(0, 256, size=3).astype(np.float32)
        alpha = piece[..., None] * 0.6
        region = canvas[py:py + 12, px:px + 12]
        canvas[py:py + 12, px:px + 12] = region * (1 - alpha) + tone * alpha
    return canvas


def render_digit(rng: np.random.Generator, digit: np.ndarray, digits: np.ndarray) -> tuple[np.ndarray, tuple]:
    """One canvas with `digit` (8x8, 0..16) at 20-48 px, and the box of its ink."""
    canvas = _clutter(rng, digits)
    side = int(rng.integers(20, 49))
    ink = np.asarray(Image.fromarray((digit / 16.0 * 255).astype(np.uint8)).resize((side, side),
                     Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    y, x = rng.integers(0, SIZE - side + 1, size=2)
    colour = rng.integers(0, 256, size=3).astype(np.float32)
    # the ink contrasts with the canvas under it (a digit nobody can see has no box)
    under = canvas[y:y + side, x:x + side].mean(axis=(0, 1))
    if np.abs(colour - under).sum() < 200:
        colour = np.where(under > 127, 0.0, 255.0).astype(np.float32)
    alpha = ink[..., None]
    canvas[y:y + side, x:x + side] = canvas[y:y + side, x:x + side] * (1 - alpha) + colour * alpha
    canvas = np.clip(canvas + rng.normal(0, 6, canvas.shape), 0, 255).astype(np.uint8)
    ys, xs = np.nonzero(ink >= INK)
    box = (int(x + xs.min()), int(y + ys.min()), int(x + xs.max()) + 1, int(y + ys.max()) + 1)
    return canvas, box


def build_digits(root: str | Path, seed: int = 0) -> Path:
    from sklearn.datasets import load_digits

    root = Path(root)
    data = load_digits()
    images, labels = data.images, data.target
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    n_test, n_val = 360, 288
    split = {int(i): ("test" if k < n_test else "val" if k < n_test + n_val else "train")
             for k, i in enumerate(order)}
    rows = []
    for i in range(len(labels)):
        canvas, box = render_digit(np.random.default_rng([seed, i]), images[i], images)
        rel = Path(split[i]) / str(labels[i]) / f"{i:04d}.png"
        (root / rel.parent).mkdir(parents=True, exist_ok=True)
        Image.fromarray(canvas).save(root / rel)
        rows.append((rel.as_posix(), str(labels[i]), box))
    write_boxes(root, rows)
    return root


def _photos() -> list[np.ndarray]:
    return [photo(name) for name in ("brick", "grass", "gravel", "coffee", "chelsea", "rocket", "coins",
                                      "hubble_deep_field")]


def build_faces(root: str | Path, seed: int = 0, per_patch: int = 8) -> Path:
    """1,600 images: each of the 200 patches `per_patch` times, at its own size, place and backdrop."""
    import skimage.data as d

    root = Path(root)
    patches = d.lfw_subset()  # the first 100 are faces
    photos = _photos()
    rows = []
    for i, patch in enumerate(patches):
        label = "face" if i < 100 else "other"
        k = i % 100
        split = "test" if k >= 70 else "val" if k >= 56 else "train"
        for j in range(per_patch):
            rng = np.random.default_rng([seed, i, j])
            photo = photos[rng.integers(len(photos))]
            scale = rng.uniform(0.15, 0.5)
            side = max(64, int(min(photo.shape[:2]) * scale))
            y, x = rng.integers(0, photo.shape[0] - side + 1), rng.integers(0, photo.shape[1] - side + 1)
            canvas = np.asarray(Image.fromarray(photo[y:y + side, x:x + side]).resize((SIZE, SIZE),
                                Image.Resampling.BILINEAR)).astype(np.float32)
            size = int(rng.integers(20, 41))
            grey = np.asarray(Image.fromarray((patch * 255).astype(np.uint8)).resize((size, size),
                              Image.Resampling.BILINEAR), dtype=np.float32)
            py, px = rng.integers(0, SIZE - size + 1, size=2)
            canvas[py:py + size, px:px + size] = grey[..., None]
            canvas = np.clip(canvas + rng.normal(0, 4, canvas.shape), 0, 255).astype(np.uint8)
            rel = Path(split) / label / f"{i:03d}-{j}.png"
            (root / rel.parent).mkdir(parents=True, exist_ok=True)
            Image.fromarray(canvas).save(root / rel)
            rows.append((rel.as_posix(), label, (int(px), int(py), int(px) + size, int(py) + size)))
    write_boxes(root, rows)
    return root


CLIPART = Path("/usr/share/openclipart/png")
OBJECT_CLASSES = {"bird": "animals/birds", "insect": "animals/bugs", "mammal": "animals/mammals",
                  "fish": "animals/fish", "fruit": "food/fruit", "flower": "plants/flowers",
                  "vehicle": "transportation/vehicles", "house": "buildings/homes"}
OBJECT_SIZE = 96
OBJECT_SPLITS = {"train": 2400, "val": 480, "test": 480, "unseen": 480}
CUTOUT_SPLITS = {"train": 800, "val": 160, "test": 160, "unseen": 160}
def _cutouts(folder: Path, longest: int = 192) -> list[Image.Image]:
    """Each drawing as RGBA cropped to its opaque pixels, its longest side at most `longest`;
    drawings without transparency (no outline to cut along) are left out."""
    if not folder.is_dir():
        raise SystemExit(f"{folder} is missing: the objects sets need Debian's drawings (apt-get install openclipart-png)")
    out = []
    for p in sorted(folder.rglob("*.png")):
        with Image.open(p) as im:
            im.draft("RGBA", (longest * 4, longest * 4))
            rgba = im.convert("RGBA")
        alpha = np.asarray(rgba)[..., 3]
        if (alpha < 128).mean() < 0.05 or (alpha >= 128).sum() < 50:
            continue
        rgba = rgba.crop(Image.fromarray(((alpha >= 128) * 255).astype(np.uint8)).getbbox())
        rgba.thumbnail((longest, longest), Image.Resampling.LANCZOS)
        if (np.asarray(rgba)[..., 3] >= 128).sum() >= 50:
            out.append(rgba)
    return out


def _backdrop(rng: np.random.Generator, photos: list[np.ndarray], side: int) -> Image.Image:
    photo = photos[rng.integers(len(photos))]
    crop = int(min(photo.shape[:2]) * rng.uniform(0.2, 0.7))
    y, x = rng.integers(0, photo.shape[0] - crop + 1), rng.integers(0, photo.shape[1] - crop + 1)
    return Image.fromarray(photo[y:y + crop, x:x + crop]).resize((side, side), Image.Resampling.BILINEAR)


def _composite(rng: np.random.Generator, cutout: Image.Image, photos: list[np.ndarray]) -> tuple[np.ndarray, tuple]:
    """The cutout at 10-85% of the canvas (its longest side), anywhere it fits, and its box. Without
    `photos` the canvas stays transparent (black underneath, as clip art stores it): RGBA out."""
    canvas = _backdrop(rng, photos, OBJECT_SIZE) if photos else Image.new("RGBA", (OBJECT_SIZE, OBJECT_SIZE))
    longest = max(4, int(OBJECT_SIZE * rng.uniform(0.10, 0.85)))
    while True:  # a thin drawing shrunk far may keep no opaque pixel: then a little larger
        s = longest / max(cutout.size)
        obj = cutout.resize((max(2, round(cutout.width * s)), max(2, round(cutout.height * s))),
                            Image.Resampling.BILINEAR)
        if (np.asarray(obj)[..., 3] >= 128).any() or longest >= OBJECT_SIZE:
            break
        longest = min(OBJECT_SIZE, longest + 4)
    if rng.random() < 0.5:
        obj = obj.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    x, y = int(rng.integers(0, OBJECT_SIZE - obj.width + 1)), int(rng.integers(0, OBJECT_SIZE - obj.height + 1))
    alpha = np.asarray(obj)[..., 3]
    ys, xs = np.nonzero(alpha >= 128 if (alpha >= 128).any() else alpha > 0)
    box = (x + int(xs.min()), y + int(ys.min()), x + int(xs.max()) + 1, y + int(ys.max()) + 1)
    if not photos:
        canvas.alpha_composite(obj, (x, y))
        return np.asarray(canvas), box
    canvas.paste(obj, (x, y), obj)
    noisy = np.asarray(canvas, dtype=np.float32) + rng.normal(0, 3, (OBJECT_SIZE, OBJECT_SIZE, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8), box


def _write_composite(root: Path, rel: Path, rng: np.random.Generator, pool: list[Image.Image],
                     photos: list[np.ndarray]) -> tuple:
    """One of `pool`'s drawings pasted on a photograph (_composite), saved at root/rel; its boxes.csv
    row (the label is rel's folder)."""
    image, box = _composite(rng, pool[rng.integers(len(pool))], photos)
    (root / rel.parent).mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / rel)
    return rel.as_posix(), rel.parent.name, box


def build_objects(root: str | Path, seed: int = 0, splits: dict[str, int] = OBJECT_SPLITS,
                  backdrops: bool = True) -> Path:
    """Composites of real-object clip art on real photographs (on nothing, transparent, without
    `backdrops`); 20% of each class's objects appear only in `unseen/`."""
    root = Path(root)
    photos = [photo(n) for n in PHOTOS] if backdrops else []
    cutouts = {c: _cutouts(CLIPART / sub) for c, sub in OBJECT_CLASSES.items()}
    seen, unseen = {}, {}
    for c, objs in cutouts.items():
        order = np.random.default_rng([seed, len(c)]).permutation(len(objs))
        k = max(1, round(len(objs) * 0.2))
        unseen[c], seen[c] = [objs[i] for i in order[:k]], [objs[i] for i in order[k:]]
    classes = sorted(OBJECT_CLASSES)
    rows = []
    for split, count in splits.items():
        pool = unseen if split == "unseen" else seen
        for i in range(count):
            rng = np.random.default_rng([seed, list(splits).index(split), i])
            label = classes[i % len(classes)]
            rows.append(_write_composite(root, Path(split) / label / f"{i:04d}.png", rng, pool[label], photos))
    write_boxes(root, rows)
    return root


def build_cutouts(root: str | Path, seed: int = 0) -> Path:
    """The objects' drawings on a transparent canvas, as a user's product cut-outs or icons come."""
    return build_objects(root, seed, CUTOUT_SPLITS, backdrops=False)


# drawings of things none of OBJECT_CLASSES is: the near-out-of-distribution set of an objects model
OTHER_OBJECTS = {"tool": "tools", "electronics": "electronics", "person": "people", "office": "office"}


def build_other_objects(root: str | Path, seed: int = 0, count: int = 480) -> Path:
    """Composites made as build_objects makes them, on the same photographs, of drawings of other
    things (OTHER_OBJECTS): what an objects model meets when a user sends something else."""
    root = Path(root)
    photos = [photo(n) for n in PHOTOS]
    cutouts = {c: _cutouts(CLIPART / sub) for c, sub in OTHER_OBJECTS.items()}
    classes = sorted(c for c in cutouts if cutouts[c])
    rows = []
    for i in range(count):
        label = classes[i % len(classes)]
        rows.append(_write_composite(root, Path("test") / label / f"{i:04d}.png", np.random.default_rng([seed, 99, i]),
                                     cutouts[label], photos))
    write_boxes(root, rows)
    return root


def build_photos(root: str | Path, seed: int = 0, crops: int = 20) -> Path:
    """Each photograph whole and as `crops` random square crops (20-100% of its shorter side)."""
    root = Path(root) / "photos"
    root.mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        image = photo(name)
        Image.fromarray(image).save(root / f"{name}.png")
        rng = np.random.default_rng([seed, PHOTOS.index(name)])
        for j in range(crops):
            side = int(min(image.shape[:2]) * rng.uniform(0.2, 1.0))
            y, x = rng.integers(0, image.shape[0] - side + 1), rng.integers(0, image.shape[1] - side + 1)
            Image.fromarray(image[y:y + side, x:x + side]).save(root / f"{name}-{j:02d}.png")
    return root.parent


def read_set_boxes(root: str | Path) -> dict[str, tuple[str, tuple[float, float, float, float]]]:
    """The set's boxes.csv, read by the service's own reader."""
    return read_boxes(Path(root) / BOXES_FILE)


def zip_bytes(root: str | Path, splits: tuple[str, ...] = ("train", "val"), boxes: bool = True) -> bytes:
    """The upload: the named splits' images, and boxes.csv with their rows when `boxes`."""
    root = Path(root)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for split in splits:
            for p in sorted((root / split).rglob("*.png")):
                z.write(p, p.relative_to(root).as_posix())
        if boxes:
            rows = [(path, label, box) for path, (label, box) in read_set_boxes(root).items()
                    if path.split("/")[0] in splits]
            z.writestr(BOXES_FILE, boxes_csv_text(rows))
    return buf.getvalue()


BUILDERS = {"digits": build_digits, "faces": build_faces, "objects": build_objects, "cutouts": build_cutouts,
            "photos": build_photos, "other-objects": build_other_objects}

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", choices=sorted(BUILDERS))
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--zip", help="also write the folder as a zip here")
    ap.add_argument("--no-boxes", action="store_true", help="leave boxes.csv out")
    args = ap.parse_args()
    folder = BUILDERS[args.name](args.out, args.seed)
    if args.zip:
        Path(args.zip).write_bytes(zip_bytes(folder, boxes=not args.no_boxes))
    print(folder)
