"""The open-world verdict's cost for two exports of one model side by side (e.g. a bank of 20,000
and one of 5,000): for each, Predictor.predict with CAM boxes on a 640x480 JPEG, the verdict off
and on interleaved (bench/serving.py's in_process_open_world_cost), the two exports alternating
round by round on the same machine.

    python bench/verdict_cost.py OLD_VERSION_DIR NEW_VERSION_DIR [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from app.registry import Registry  # noqa: E402
from bench.serving import in_process_open_world_cost, jpeg  # noqa: E402


def registry_of(version_dir: Path, root: Path) -> Path:
    reg = Registry(root / "registry")
    reg.deploy("default", reg.register("default", version_dir))
    return root / "registry"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        registries = {name: registry_of(folder, Path(tmp) / name) for name, folder in (("old", args.old),
                                                                                       ("new", args.new))}
        body = jpeg(640, 480)
        for r in range(args.rounds):
            for name, registry in registries.items():
                off, on = in_process_open_world_cost(registry, body, rounds=100)
                print(json.dumps({"round": r, "export": name, "p50_off_ms": round(off, 3), "p50_on_ms": round(on, 3),
                                  "ratio": round(on / off, 4)}), flush=True)


if __name__ == "__main__":
    main()
