"""Peak memory of decoding the worst legal uploads, this checkout against another revision.

    .venv/bin/python bench/decode_memory.py --base 6702662

Each image is decoded in a fresh process (so each peak is its own) through app.imaging.decode with
the default settings (64-megapixel limit, 1024 px working copy, the default decode budget); the
process's peak RSS above its baseline is printed for both trees, side by side, and their ratio.
The images are tiny files that decode to 64 megapixels: 16-bit grey, 1-bit, palette and RGBA
PNGs, and a progressive CMYK JPEG.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from serving import ROOT, git_tree  # bench/ is the script's folder

SIDE = 8000  # 64,000,000 pixels: the default RESCAM_MAX_PIXELS

# ru_maxrss survives fork and exec (a child of a big parent starts "at" its size), so the probe
# resets the peak (clear_refs 5, Linux) and reads VmHWM against VmRSS.
PROBE = """
import sys, time
from app import imaging
from app.settings import Settings
def status(key):
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(key))
s = Settings()
data = open(sys.argv[1], 'rb').read()
open('/proc/self/clear_refs', 'w').write('5')
before = status('VmRSS')
t = time.perf_counter()
try:
    budget = [imaging.MemoryBudget(s.decode_memory_mb * 2**20)] if hasattr(imaging, 'MemoryBudget') else []
    d = imaging.decode(data, s.max_pixels, s.work_max_side, *budget)
    outcome = f'{d.width}x{d.height} -> {d.image.size}'
except Exception as e:
    outcome = f'{type(e).__name__}: {getattr(e, "status", "")} {e}'[:120]
peak = status('VmHWM')
print(f'{(peak - before) / 1024:.0f}|{time.perf_counter() - t:.2f}|{outcome}')
"""


def images() -> dict[str, bytes]:
    def png(im: Image.Image) -> bytes:
        buf = io.BytesIO()
        im.save(buf, "PNG", optimize=False, compress_level=9)
        return buf.getvalue()

    # constant, non-zero pixels: tiny files, and memory that is really written (zero pages are not)
    out = {"16-bit grey PNG": png(Image.fromarray(np.full((SIDE, SIDE), 1000, np.uint16))),
           "1-bit PNG": png(Image.new("1", (SIDE, SIDE), 1)),
           "palette PNG": png(Image.new("P", (SIDE, SIDE), 3)),
           "RGBA PNG": png(Image.new("RGBA", (SIDE, SIDE), (10, 20, 30, 255)))}
    buf = io.BytesIO()
    Image.new("CMYK", (SIDE, SIDE), (10, 20, 30, 40)).save(buf, "JPEG", progressive=True, quality=50)
    out["progressive CMYK JPEG"] = buf.getvalue()
    return out


def peak(tree: Path, path: Path) -> tuple[float, float, str]:
    out = subprocess.run([sys.executable, "-c", PROBE, str(path)], cwd=tree, env={"PYTHONPATH": str(tree)},
                         capture_output=True, text=True, timeout=300)
    mb, seconds, outcome = out.stdout.strip().split("|", 2) if out.returncode == 0 else ("nan", "nan", out.stderr[-200:])
    return float(mb), float(seconds), outcome


def server_peak(tree: Path, registry: Path, uploads: list[bytes], clients: int, data_root: Path) -> dict:
    """A live service from `tree` (default settings): `clients` concurrent requests, each with every
    upload as one multipart part; its peak RSS, its RSS after, and the statuses it answered."""
    import threading
    import urllib.request
    import uuid

    from serving import Server

    server = Server(registry, tree, data_root=data_root)
    statuses: list[int] = []

    def post() -> None:
        boundary = uuid.uuid4().hex
        body = b"".join(b"--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f%d.png\"\r\n"
                        b"Content-Type: image/png\r\n\r\n%s\r\n" % (boundary.encode(), i, data)
                        for i, data in enumerate(uploads)) + b"--%s--\r\n" % boundary.encode()
        req = urllib.request.Request(f"http://127.0.0.1:{server.port}/v1/predict?cam=false", data=body,
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        try:
            with urllib.request.urlopen(req, timeout=300) as r:
                statuses.append(r.status)
        except urllib.error.HTTPError as e:
            statuses.append(e.code)

    try:
        threads = [threading.Thread(target=post) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        status = {k: int(v.split()[0]) / 1024 for k, v in (line.split(":", 1) for line in
                  Path(f"/proc/{server.proc.pid}/status").read_text().splitlines()) if k in ("VmHWM", "VmRSS")}
    finally:
        server.stop()
    return {"peak_mb": round(status["VmHWM"]), "after_mb": round(status["VmRSS"]), "statuses": sorted(statuses)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the git revision to compare with")
    p.add_argument("--clients", type=int, default=4, help="concurrent requests to a live service")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp, git_tree(args.base, Path(tmp)) as base:
        from serving import make_registry

        worst = images()
        registry = make_registry("resnet18", 10, 64, Path(tmp))
        pngs = [worst[k] for k in ("16-bit grey PNG", "RGBA PNG", "palette PNG")]
        for name, tree in (("this", ROOT), ("base", base)):
            print(json.dumps({"service": name, "clients": args.clients, "files_per_request": len(pngs),
                              **server_peak(tree, registry, pngs, args.clients, Path(tmp) / name)}), flush=True)
        for name, data in images().items():
            path = Path(tmp) / "upload"
            path.write_bytes(data)
            this, before = peak(ROOT, path), peak(base, path)
            print(json.dumps({"image": name, "file_kb": round(len(data) / 1024, 1),
                              "peak_mb_this": this[0], "peak_mb_base": before[0],
                              "ratio": round(this[0] / before[0], 3) if before[0] else None,
                              "seconds_this": this[1], "seconds_base": before[1],
                              "this": this[2], "base": before[2]}), flush=True)


if __name__ == "__main__":
    main()
