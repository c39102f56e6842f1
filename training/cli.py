"""`rescam`: train, evaluate, export, serve and predict from the command line.

Serving commands import no torch: every subcommand imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

DEFAULT_REGISTRY = os.environ.get("RESCAM_REGISTRY", "registry")
DEFAULT_NAME = os.environ.get("RESCAM_MODEL_NAME", "default")


def _config(args: argparse.Namespace):
    from .config import recipe

    overrides = {}
    for key in ("model", "data", "epochs", "batch_size", "lr", "image_size", "device", "seed", "init", "workers",
                "boxes_csv", "max_steps", "min_steps", "time_budget_s"):
        value = getattr(args, key, None)
        if value is not None:
            overrides[key] = value
    if args.no_amp:
        overrides["amp"] = False
    if args.compile:
        overrides["compile"] = True
    for item in args.set or []:
        key, _, value = item.partition("=")
        try:  # JSON (numbers, true, lists, objects), else the text itself
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    if "epochs" in overrides:  # epochs the user asked for are what runs: the floor is for when data decide
        overrides.setdefault("min_steps", 0)
    name = args.recipe or default_recipe(overrides.get("data"))
    return recipe(name, **overrides)


def default_recipe(data: str | None) -> str:
    """The demo recipe for the embedded synthetic set (the default model), else `auto`: a user's
    data decide the image size and the number of steps (training/plan.py)."""
    return "demo" if data in (None, "synthetic") else "auto"


def register(export_dir: Path, registry: str, name: str, deploy: str) -> int:
    """Register an export; deploy it if asked, or if it is the model's first version."""
    from app.registry import Registry

    reg = Registry(registry)
    version = reg.register(name, export_dir)
    if deploy == "always" or (deploy == "auto" and reg.deployed(name) is None):
        reg.deploy(name, version, actor="cli", reason="first version" if deploy == "auto" else "--deploy always")
        print(f"registered and deployed {name} v{version} in {registry}")
    else:
        print(f"registered {name} v{version} in {registry} (live stays v{reg.deployed(name)})")
    return version


def cmd_train(args: argparse.Namespace) -> None:
    import torch

    from .export import export_checkpoint
    from .train import train

    cfg = _config(args)
    out = Path(args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{cfg.model}")
    if cfg.device in ("auto", "cpu") and not torch.cuda.is_available() and args.threads:
        torch.set_num_threads(args.threads)
    start = time.time()
    checkpoint = train(cfg, out, resume=args.resume)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    metrics = {k: v for k, v in ckpt.get("metrics", {}).items() if k != "confusion"}
    print(json.dumps({"checkpoint": str(checkpoint), "seconds": round(time.time() - start, 1), **metrics}))
    if args.no_register or not ckpt.get("finished"):
        return
    export_dir = export_checkpoint(checkpoint, out / "export")
    result = {"checkpoint": str(checkpoint), "export": str(export_dir), "metrics": metrics,
              "labels": list(ckpt["classes"])}
    if args.compare_with:
        from .compare import evaluate_onnx

        result["live_metrics"] = evaluate_onnx(args.compare_with, cfg)
    if args.result_file:
        Path(args.result_file).write_text(json.dumps(result))
    if not args.export_only:
        register(export_dir, args.registry, args.name, args.deploy)


def cmd_eval(args: argparse.Namespace) -> None:
    import torch

    from .config import TrainConfig
    from .data import load_data
    from .evaluate import evaluate
    from .train import load_checkpoint_model

    model, ckpt = load_checkpoint_model(args.checkpoint)
    cfg = TrainConfig.from_dict(ckpt["config"])
    if args.data:
        cfg = cfg.replace(data=args.data)
    data = load_data(cfg.replace(synthetic_train=0))
    result = evaluate(model, data.val, cfg, torch.device("cpu"), len(ckpt["classes"]))
    if not args.confusion:
        result.pop("confusion")
    print(json.dumps(result, indent=2))


def cmd_export(args: argparse.Namespace) -> None:
    from .export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out)
    print(f"exported {out / 'model.onnx'}")
    if args.register:
        register(out, args.registry, args.name, args.deploy)


def cmd_bootstrap(args: argparse.Namespace) -> None:
    """Deploy the default model when the registry has no live version: the one the package ships
    (registered in seconds), or, with --train, one trained afresh by the demo recipe."""
    from app.registry import Registry

    registry = Registry(args.registry)
    if registry.deployed(args.name) is not None:
        return
    shipped = shipped_model_dir()
    if not args.train and shipped is not None:
        version = registry.register(args.name, shipped)
        registry.deploy(args.name, version, actor="bootstrap", reason="the default model shipped with rescam")
        print(f"registered and deployed the shipped default model as {args.name} v{version} in {args.registry}",
              file=sys.stderr)
        return
    print(f"no model deployed in {args.registry}: training the default model (the demo recipe; "
          "about 4 minutes on 2 CPU cores)", file=sys.stderr)
    parser = build_parser()
    cmd_train(parser.parse_args(["train", "--registry", args.registry, "--name", args.name, "--out", "runs/default"]))


def shipped_model_dir() -> Path | None:
    """app/default_model: the default model's ONNX file, card and weights, as `rescam bootstrap
    --train` makes them (BENCHMARKS.md); None in an install without it."""
    import app
    from app.registry import CARD_FILE, MODEL_FILE

    folder = Path(app.__file__).resolve().parent / "default_model"
    return folder if (folder / MODEL_FILE).is_file() and (folder / CARD_FILE).is_file() else None


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    os.environ["RESCAM_REGISTRY"] = args.registry
    os.environ["RESCAM_MODEL_NAME"] = args.name
    if args.workers > 1:  # an overlay URL may reach any worker
        os.environ.setdefault("RESCAM_PREDICTION_STORE", "shared")
    uvicorn.run("app.main:create_app", factory=True, host=args.host, port=args.port, workers=args.workers,
                log_level="info")


def cmd_export_triton(args: argparse.Namespace) -> None:
    from app.registry import Registry
    from app.triton import export_triton

    target = export_triton(Registry(args.registry), args.name, args.version, Path(args.out), args.triton_name,
                           args.max_batch_size)
    print(f"wrote {target}: tritonserver --model-repository={Path(args.out).resolve()}")


def cmd_worker(args: argparse.Namespace) -> None:
    """Run retrain jobs from the shared job database, apart from the API (e.g. on a GPU host);
    start the API with RESCAM_RUN_JOBS=false then."""
    import asyncio

    from app.pipeline import Service
    from app.settings import Settings

    service = Service(Settings(registry=Path(args.registry), model_name=args.name, registry_poll_s=0))
    print(f"rescam worker: jobs from {service.jobs.path}, registry {args.registry}", file=sys.stderr)
    try:
        asyncio.run(service.runner.run())
    except KeyboardInterrupt:
        pass


def cmd_predict(args: argparse.Namespace) -> None:
    import asyncio

    from app.pipeline import Options, Service
    from app.settings import Settings

    async def run() -> dict:
        service = Service(Settings(registry=Path(args.registry), model_name=args.name, batching=False))
        await service.start()
        try:
            answer = await service.predict([(args.image, Path(args.image).read_bytes())], Options(top_k=args.top_k))
            result = answer["results"][0]
            if "error" in result:
                raise SystemExit(f"rescam: {args.image}: {result['error']['message']}")
            kept = service.store.get(answer["id"])
            top = result["predictions"][0]
            picture = service.overlay_image(kept.images[0], top["index"], top["label"], 0.5, "turbo",
                                            kept.rule, service.settings.overlay_max_side)
            picture.save(args.out)
            answer["overlay"] = args.out
            return answer
        finally:
            await service.stop()

    print(json.dumps(asyncio.run(run()), indent=2))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rescam", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def registry_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--registry", default=DEFAULT_REGISTRY, help="registry root (default %(default)s)")
        sp.add_argument("--name", default=DEFAULT_NAME, help="model name in the registry (default %(default)s)")

    t = sub.add_parser("train", help="train a model, export it and register it")
    from .config import RECIPES  # plain data: the parser stays free of torch

    t.add_argument("--recipe", choices=tuple(RECIPES),
                   help="default: demo for the synthetic set, auto (steps, size and augmentation from the data) "
                        "for any other --data")
    t.add_argument("--data", help="synthetic | folder:PATH | cifar10:PATH | cifar100:PATH")
    t.add_argument("--boxes-csv", help="path,label,x0,y0,x1,y1 for localization metrics on folders")
    t.add_argument("--model", help="architecture, e.g. resnet20 or resnet50")
    t.add_argument("--epochs", type=int)
    t.add_argument("--max-steps", type=int)
    t.add_argument("--min-steps", type=int, help="at least this many optimizer steps (auto: 1000)")
    t.add_argument("--time-budget", dest="time_budget_s", type=float, metavar="SECONDS",
                   help="cut the steps so that training fits this many seconds (auto: 480)")
    t.add_argument("--batch-size", type=int, help="global batch size")
    t.add_argument("--lr", type=float)
    t.add_argument("--image-size", type=int)
    t.add_argument("--device", help="auto | cpu | cuda")
    t.add_argument("--seed", type=int)
    t.add_argument("--workers", type=int, help="data-loading processes for image folders")
    t.add_argument("--init", help="torchvision-format state_dict to fine-tune from")
    t.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: its default)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="any TrainConfig field")
    t.add_argument("--out", help="run directory (checkpoint, metrics.jsonl, export)")
    t.add_argument("--resume", action="store_true", help="continue from the run directory's checkpoint")
    t.add_argument("--no-register", action="store_true", help="stop after training")
    t.add_argument("--export-only", action="store_true", help="train and export, do not register")
    t.add_argument("--compare-with", help="an exported model directory to evaluate on the same validation set")
    t.add_argument("--result-file", help="write the export's path and the figures here as JSON")
    t.add_argument("--deploy", choices=("auto", "always", "never"), default="auto",
                   help="auto: deploy only the model's first version")
    registry_args(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="accuracy and CAM localization of a checkpoint")
    e.add_argument("checkpoint")
    e.add_argument("--data", help="evaluate on other data than the run's")
    e.add_argument("--confusion", action="store_true", help="print the confusion matrix too")
    e.set_defaults(func=cmd_eval)

    x = sub.add_parser("export", help="export a checkpoint to ONNX with its card (parity-checked)")
    x.add_argument("checkpoint")
    x.add_argument("--out", required=True)
    x.add_argument("--register", action="store_true")
    x.add_argument("--deploy", choices=("auto", "always", "never"), default="auto")
    registry_args(x)
    x.set_defaults(func=cmd_export)

    b = sub.add_parser("bootstrap", help="deploy the shipped default model if none is deployed")
    b.add_argument("--train", action="store_true", help="train the default model afresh instead of registering "
                                                        "the shipped one")
    registry_args(b)
    b.set_defaults(func=cmd_bootstrap)

    s = sub.add_parser("serve", help="run the HTTP service")
    s.add_argument("--host", default=os.environ.get("RESCAM_HOST", "127.0.0.1"))
    s.add_argument("--port", type=int, default=int(os.environ.get("RESCAM_PORT", "8000")))
    s.add_argument("--workers", type=int, default=1)
    registry_args(s)
    s.set_defaults(func=cmd_serve)

    tr = sub.add_parser("export-triton", help="write a Triton model repository from a registry version")
    tr.add_argument("--out", required=True, help="the Triton model repository folder")
    tr.add_argument("--version", type=int, help="default: the deployed version")
    tr.add_argument("--triton-name", help="the model's name in Triton (default: its registry name)")
    tr.add_argument("--max-batch-size", type=int, default=64)
    registry_args(tr)
    tr.set_defaults(func=cmd_export_triton)

    w = sub.add_parser("worker", help="run retrain jobs apart from the API process")
    registry_args(w)
    w.set_defaults(func=cmd_worker)

    pr = sub.add_parser("predict", help="labels, scores and boxes of one image, and its CAM overlay")
    pr.add_argument("image")
    pr.add_argument("--out", default="overlay.png")
    pr.add_argument("--top-k", type=int, default=5)
    registry_args(pr)
    pr.set_defaults(func=cmd_predict)
    return p


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
