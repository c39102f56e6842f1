"""int8 against float32 on each model named: the parity figures `rescam export --precision int8`
writes on the card (top-1 agreement, CAM correlation, box IoU, each one's top-1, size, speed),
one JSON line per model.

    .venv/bin/python bench/int8_parity.py shipped /tmp/q/run-digits/checkpoint.pth RUN/checkpoint.pth

`shipped`: the model in app/default_model, from its weights and card. Each export goes to a
scratch folder and is removed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reexport_shipped import SHIPPED, checkpoint_of  # noqa: E402

from training.export import export_checkpoint  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="shipped, or a checkpoint.pth")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(args.models):
            checkpoint = checkpoint_of(SHIPPED, Path(tmp) / "shipped.pth") if name == "shipped" else Path(name)
            out = export_checkpoint(checkpoint, Path(tmp) / f"export-{i}", "int8", int8_fallback=True)
            q = json.loads((out / "card.json").read_text())["quantization"]
            print(json.dumps({"bench": "int8_parity", "model": name, **{k: v for k, v in q.items() if k != "method"}}),
                  flush=True)


if __name__ == "__main__":
    main()
