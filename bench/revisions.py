"""Serving speed of this checkout against another git revision, side by side in one run.

    .venv/bin/python bench/revisions.py --base 64a0074

Both services run the same model from the same registry on this machine; the rounds alternate
between them so that noise hits both alike. Prints each round and the medians' ratios (this
checkout / base): p50 at concurrency 1 (lower is better) and throughput at concurrency 8.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from serving import ROOT, Server, git_tree, jpeg, load, make_registry


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the git revision to compare with")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--seconds", type=float, default=6.0, help="per measurement")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp, git_tree(args.base, Path(tmp)) as base:
        registry = make_registry(args.model, 1000, args.size, Path(tmp))
        body = jpeg(640, 480)
        servers = {"this": Server(registry, ROOT, data_root=Path(tmp) / "a"),
                   "base": Server(registry, base, data_root=Path(tmp) / "b")}
        figures: dict[str, dict[str, list[float]]] = {k: {"p50_c1": [], "rps_c8": []} for k in servers}
        try:
            for r in range(args.rounds):
                for name, server in servers.items():
                    c1 = load(server, "/v1/predict", body, 1, args.seconds)
                    c8 = load(server, "/v1/predict", body, 8, args.seconds)
                    assert c1["failed"] == c8["failed"] == 0, (name, c1, c8)
                    figures[name]["p50_c1"].append(c1["p50_ms"])
                    figures[name]["rps_c8"].append(c8["rps"])
                    print(json.dumps({"round": r, "server": name, "p50_c1_ms": round(c1["p50_ms"], 2),
                                      "rps_c8": round(c8["rps"], 1)}), flush=True)
        finally:
            for server in servers.values():
                server.stop()
        med = {k: {m: statistics.median(v) for m, v in f.items()} for k, f in figures.items()}
        print(json.dumps({"base": args.base, "model": args.model, "this": med["this"], "base_figures": med["base"],
                          "p50_c1_ratio": round(med["this"]["p50_c1"] / med["base"]["p50_c1"], 3),
                          "rps_c8_ratio": round(med["this"]["rps_c8"] / med["base"]["rps_c8"], 3)}))


if __name__ == "__main__":
    main()
