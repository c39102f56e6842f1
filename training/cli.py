"""`rescam`: train, evaluate, export, serve and predict from the command line.

Serving commands import no torch: every subcommand imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import time
from pathlib import Path

DEFAULT_REGISTRY = os.environ.get("RESCAM_REGISTRY", "registry")
DEFAULT_NAME = os.environ.get("RESCAM_DEFAULT_MODEL", "default")


TRAIN_FLAGS = ("architecture", "epochs", "batch_size", "lr", "image_size", "device", "seed", "workers", "max_steps",
               "min_steps", "time_budget_s")


class UserError(Exception):
    """A mistake the user can fix; main() prints it as one line and exits 1."""


def job_spec(args: argparse.Namespace):
    """`rescam train`'s flags as the JobSpec every training job runs from."""
    from app.jobspec import JobSpec

    settings = {k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k, None) is not None}
    if args.precision:
        settings["precision"] = args.precision
    if args.compile:
        settings["compile"] = True
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: write KEY=VALUE, e.g. --set synthetic_train=36000")
        try:  # JSON (numbers, true, lists, objects), else the text itself
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value
    data = settings.pop("data", None) or args.data or "synthetic"
    out = args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{settings.get('architecture', 'model')}"
    return JobSpec(run_dir=out, data=data, boxes_csv=args.boxes_csv, recipe=args.recipe, settings=settings,
                   init=args.init, resume=args.resume, export=not args.no_register,
                   registry=None if args.no_register or args.export_only else args.registry,
                   model_name=args.name, threads=args.threads, export_precision=args.export_precision)


def _config(args: argparse.Namespace):
    """The TrainConfig `rescam train ARGS` runs with."""
    from .job import config_for

    return config_for(job_spec(args))


def apply_deploy_policy(registry_root: str, name: str, version: int, policy: str, first: bool,
                        gate: dict | None, via: str) -> bool:
    """After registering `version`: the one deploy policy (app.deploy_policy) decides, and the
    service's own deploy (app.model_manager: never-deployable versions refused, the smoke test, the
    audit entry naming `via`) makes it live. Whether it went live."""
    from app.deploy_policy import decide
    from app.model_manager import ModelManager, NotDeployed
    from app.settings import Settings

    decision = decide(policy, gate, first)
    manager = ModelManager(Settings(registry=registry_root), name, keep_scratch_in_data_root=False)
    if decision.deploy:
        try:
            manager.deploy(version, actor="cli", reason=decision.reason, via=via, forced=decision.forced,
                           **({"gate": gate} if gate else {}))
        except NotDeployed as e:
            print(f"registered {name} v{version} in {registry_root}; {e}", file=sys.stderr)
            return False
        print(f"registered and deployed {name} v{version} in {registry_root} ({decision.reason})", file=sys.stderr)
        return True
    live = manager.registry.deployed(name)
    print(f"registered {name} v{version} in {registry_root}; not deployed: {decision.reason} "
          f"({f'v{live} stays live' if live else 'no version is live'})", file=sys.stderr)
    return False


def deploy_after_job(result, registry_root: str, name: str, policy: str, via: str) -> None:
    if result is not None and result.version is not None:
        apply_deploy_policy(registry_root, name, result.version, policy, result.live_version is None, result.gate,
                            via)


def cmd_train(args: argparse.Namespace) -> None:
    from .job import run_job

    result = run_job(job_spec(args))
    if result is None:  # not rank 0
        return
    figures = {k: v for k, v in result.metrics.items() if not isinstance(v, dict)}  # the curves are in the report
    print(json.dumps({"checkpoint": result.checkpoint, "seconds": result.seconds, **figures}))
    if not (args.no_register or args.export_only):
        deploy_after_job(result, args.registry, args.name, args.deploy, "rescam train")


def cmd_run_job(args: argparse.Namespace) -> None:
    """What the service's job runner starts: the spec's job, its JobResult in result.json."""
    from app.jobspec import JobSpec

    from .job import run_job

    run_job(JobSpec.load(args.spec))


def cmd_report(args: argparse.Namespace) -> None:
    """Write or refresh the report of a run folder (its export) or of a registry version."""
    from .report import write_report
    from .train import METRICS

    target = Path(args.target)
    if target.is_dir():
        model_dir, curves = target / "export", target / METRICS
        if not (model_dir / "model.onnx").is_file():
            raise UserError(f"{target} has no export/model.onnx: a finished run folder, or a version number")
    elif args.target.isdigit():
        from app.registry import Registry

        model_dir, curves = Registry(args.registry).version_dir(args.name, int(args.target)), None
    else:
        raise UserError(f"{args.target!r} is neither a run folder nor a version number of {args.name!r}")
    print(write_report(model_dir, metrics_jsonl=curves) / "index.html")


def register(export_dir: Path, registry: str, name: str, deploy: str) -> int:
    """Register an export, then deploy it as `deploy` says (apply_deploy_policy)."""
    from app.registry import Registry

    reg = Registry(registry)
    first = reg.deployed(name) is None
    version = reg.register(name, export_dir)
    apply_deploy_policy(registry, name, version, deploy, first, None, "rescam export --register")
    return version


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

    out = export_checkpoint(args.checkpoint, args.out, args.precision)
    print(f"exported {out / 'model.onnx'} ({args.precision})")
    if args.register:
        register(out, args.registry, args.name, args.deploy)


def cmd_bootstrap(args: argparse.Namespace) -> None:
    """Deploy the default model when the registry has no live version: the one the package ships
    (registered in seconds), or, with --train, one trained afresh by the demo recipe."""
    from app.jobspec import JobSpec
    from app.model_manager import ModelManager
    from app.registry import Registry
    from app.settings import Settings

    from .job import run_job

    registry = Registry(args.registry)
    if registry.deployed(args.name) is not None:
        return
    shipped = shipped_model_dir()
    if not args.train and shipped is not None:
        version = registry.register(args.name, shipped)
        ModelManager(Settings(registry=args.registry), args.name, keep_scratch_in_data_root=False).deploy(
            version, actor="bootstrap", reason="the default model shipped with rescam", via="rescam bootstrap")
        print(f"registered and deployed the shipped default model as {args.name} v{version} in {args.registry}",
              file=sys.stderr)
        return
    print(f"no model deployed in {args.registry}: training the default model (the demo recipe; "
          "about 4 minutes on 2 CPU cores)", file=sys.stderr)
    result = run_job(JobSpec(run_dir=args.out, registry=args.registry, model_name=args.name))
    deploy_after_job(result, args.registry, args.name, "auto", "rescam bootstrap --train")


def shipped_model_dir() -> Path | None:
    """app/default_model: the default model's ONNX file, card and weights, as `rescam bootstrap
    --train` makes them (BENCHMARKS.md); None in an install without it."""
    import app
    from app.registry import CARD_FILE, MODEL_FILE

    folder = Path(app.__file__).resolve().parent / "default_model"
    return folder if (folder / MODEL_FILE).is_file() and (folder / CARD_FILE).is_file() else None


def port_taken(host: str, port: int) -> bool:
    """Whether something already listens on host:port (binding as uvicorn does, with SO_REUSEADDR,
    so a port left in TIME_WAIT by a stopped server counts as free)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return True
            raise UserError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None
    return False


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    if port_taken(args.host, args.port):  # uvicorn's own message is a traceback-free "[Errno 98]" line
        raise UserError(f"{args.host}:{args.port} is already in use (a rescam already serving? curl "
                        f"http://{args.host}:{args.port}/healthz): stop it, or serve on another port with "
                        "--port N (or RESCAM_PORT=N)")
    os.environ["RESCAM_REGISTRY"] = args.registry
    os.environ["RESCAM_DEFAULT_MODEL"] = args.name
    if args.workers > 1:  # an overlay URL, and a scrape, may reach any worker
        os.environ.setdefault("RESCAM_PREDICTION_STORE", "shared")
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # a fresh folder: no counts from an earlier run
            import tempfile

            os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="rescam-prometheus-")
    uvicorn.run("app.main:create_app", factory=True, host=args.host, port=args.port, workers=args.workers,
                log_level="info")


def cmd_export_triton(args: argparse.Namespace) -> None:
    from app.registry import Registry
    from app.triton import export_all, export_triton

    if args.name is None:
        if args.version is not None or args.triton_name:
            raise UserError("--version and --triton-name need --name: one model")
        targets = export_all(Registry(args.registry), Path(args.out), args.max_batch_size)
    else:
        targets = [export_triton(Registry(args.registry), args.name, args.version, Path(args.out), args.triton_name,
                                 args.max_batch_size)]
    print(f"wrote {', '.join(str(t) for t in targets)}: tritonserver --model-repository={Path(args.out).resolve()}")


def settings_for(args: argparse.Namespace, **fields):
    from app.settings import Settings

    return Settings(registry=Path(args.registry), default_model=args.name, **fields)


def cmd_worker(args: argparse.Namespace) -> None:
    """Run retrain jobs from the shared job database, apart from the API (e.g. on a GPU host);
    start the API with RESCAM_RUN_JOBS=false then."""
    import asyncio

    from app.live_models import LiveModels
    from app.retraining import Retraining

    settings = settings_for(args, registry_poll_s=0)
    retraining = Retraining(settings, LiveModels(settings))
    print(f"rescam worker: jobs from {retraining.jobs.path}, registry {args.registry}", file=sys.stderr)
    try:
        asyncio.run(retraining.runner.run())
    except KeyboardInterrupt:
        pass


def cmd_predict(args: argparse.Namespace) -> None:
    """One image through the predictor, in this process: no HTTP, no job runner, no job database."""
    import asyncio

    from app.predictor import Options, standalone

    image = Path(args.image)
    if not image.is_file():
        raise UserError(f"{image}: no such file")

    async def run() -> dict:
        async with standalone(settings_for(args, batching=False)) as predictor:
            answer = await predictor.predict([(args.image, image.read_bytes())], Options(top_k=args.top_k))
        result = answer.results[0]
        if result.error is not None:
            raise UserError(f"{args.image}: {result.error.message}")
        top = result.predictions[0]
        fmt = {".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}.get(Path(args.out).suffix.lower(), "png")
        data, _ = predictor.cam_picture(answer.id, 0, str(top.index), fmt)
        Path(args.out).write_bytes(data)
        return {**answer.model_dump(), "overlay": args.out}

    print(json.dumps(asyncio.run(run()), indent=2))


def cmd_models(args: argparse.Namespace) -> None:
    """The registry's models and versions: list, show a card, deploy (after a smoke test), roll back,
    delete."""
    from app.live_models import LiveModels

    models = LiveModels(settings_for(args, registry_poll_s=0), keep_scratch_in_data_root=False)
    registry = models.registry
    if args.action == "list" and args.model is None:
        names = registry.models()
        if not names:
            print(f"no models in {args.registry}; `rescam bootstrap` registers the default model")
        for name in names:
            live = registry.deployed(name)
            print(f"{'*' if name == models.default else ' '} {name:<24} {len(registry.versions(name))} version(s), "
                  f"{f'v{live} live' if live else 'none live'}")
        return
    if args.model is None:
        raise UserError(f"rescam models {args.action} needs a model name: rescam models list shows them")
    name = args.model
    manager = models.manager(name)
    if args.action == "list":
        live = registry.deployed(name)
        for v in registry.versions(name):
            try:
                card = registry.card(name, v)
                m = card.metrics
                line = (f"{card.architecture or '?':<10} top-1 {m.get('top1', float('nan')):.3f}  "
                        f"{len(card.labels)} labels  boxes {card.box_rule}  {card.created or ''}")
            except Exception as e:  # noqa: BLE001 - a broken version is listed as broken
                line = f"broken: {e}"
            print(f"{'*' if v == live else ' '} v{v:<4} {line}")
        return
    if args.action == "rollback":
        version, left = manager.rollback(actor="cli", reason=args.reason)
        print(f"{name}: v{version} is live again (rolled back from v{left})")
        return
    if args.version is None:
        raise UserError(f"rescam models {args.action} needs a version, e.g. rescam models {args.action} {name} 2")
    if args.action == "show":
        print(registry.card(name, args.version).to_json(), end="")
    elif args.action == "deploy":
        engine = manager.deploy(args.version, actor="cli", reason=args.reason, via="rescam models deploy")
        print(f"{name}: v{args.version} is live ({engine.provider}, smoke-tested in {engine.load_ms:.0f} ms)")
    elif args.action == "delete":
        manager.delete(args.version, actor="cli")
        print(f"{name}: v{args.version} deleted")


def build_parser() -> argparse.ArgumentParser:
    from models import list_models  # names only: the parser stays free of torch

    from .config import RECIPES  # plain data

    p = argparse.ArgumentParser(prog="rescam", description=__doc__)
    p.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def registry_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--registry", default=DEFAULT_REGISTRY, help="registry root (default %(default)s)")
        sp.add_argument("--name", default=DEFAULT_NAME, help="model name in the registry (default %(default)s)")

    t = sub.add_parser("train", help="train a model, export it and register it")
    t.add_argument("--recipe", choices=tuple(RECIPES),
                   help="default: demo for the synthetic set, auto (steps, size and augmentation from the data) "
                        "for any other --data")
    t.add_argument("--data", help="synthetic | folder:PATH | cifar10:PATH | cifar100:PATH (default synthetic)")
    t.add_argument("--boxes-csv", help="path,label,x0,y0,x1,y1 for localization metrics on folders")
    # "model" is a registry name everywhere else (--name, the API); --model stays for old scripts
    t.add_argument("--architecture", "--model", dest="architecture", choices=list_models(), metavar="ARCH",
                   help="resnet18/34/50/101/152, resnet8/20/32/44/56/110/1202 (CIFAR), plainN "
                        "(no shortcuts); default: the recipe's")
    t.add_argument("--epochs", type=int, help="passes over the training set (default: the recipe's)")
    t.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    t.add_argument("--min-steps", type=int, help="at least this many optimizer steps (auto: 1000)")
    t.add_argument("--time-budget", dest="time_budget_s", type=float, metavar="SECONDS",
                   help="cut the steps so that training fits this many seconds (auto: 480)")
    t.add_argument("--batch-size", type=int, help="global batch size")
    t.add_argument("--lr", type=float, help="peak learning rate")
    t.add_argument("--image-size", type=int, help="the network's input side in pixels")
    t.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto: the GPU when there is one)")
    t.add_argument("--seed", type=int, help="random seed (default 0)")
    t.add_argument("--workers", type=int, help="data-loading processes for image folders")
    t.add_argument("--init", help="weights to fine-tune from: a .pth or .safetensors state_dict, or a torchvision "
                                  "name (resnet50) from the local torch hub cache or downloaded with its SHA-256 "
                                  "checked; a torchvision name brings ImageNet's mean and std, lr 0.01 and 160 px")
    t.add_argument("--precision", choices=("auto", "float32", "bfloat16"),
                   help="bf16 autocast: auto (default) takes it on CUDA, and on a CPU where it measures faster")
    t.add_argument("--export-precision", choices=("float32", "int8"), default="float32",
                   help="the exported model's arithmetic: int8 (CPUs) is kept only where it passes its parity check "
                        "against float32, else float32 is exported (default %(default)s)")
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: its default)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="any TrainConfig field (training/config.py)")
    t.add_argument("--out", help="run directory (checkpoint, metrics.jsonl, export; default runs/DATE-MODEL)")
    t.add_argument("--resume", action="store_true", help="continue from the run directory's checkpoint")
    t.add_argument("--no-register", action="store_true", help="stop after training")
    t.add_argument("--export-only", action="store_true", help="train and export; register nothing")
    t.add_argument("--deploy", choices=("auto", "gate", "always", "never"), default="auto",
                   help="auto: a model's first version, or one that passes the promotion gate against the live "
                        "version (what a job does); gate: only when it passes; always: over a failed gate too. A "
                        "version that diverged or does not clear chance never goes live (default %(default)s)")
    registry_args(t)
    t.set_defaults(func=cmd_train)

    j = sub.add_parser("run-job", help="run a job from its spec.json (what the service's job runner starts)")
    j.add_argument("spec", help="a JobSpec file (app/jobspec.py)")
    j.set_defaults(func=cmd_run_job)

    e = sub.add_parser("eval", help="accuracy and CAM localization of a checkpoint")
    e.add_argument("checkpoint", help="a checkpoint.pth from a run directory")
    e.add_argument("--data", help="evaluate on other data than the run's")
    e.add_argument("--confusion", action="store_true", help="print the confusion matrix too")
    e.set_defaults(func=cmd_eval)

    x = sub.add_parser("export", help="export a checkpoint to ONNX with its card (parity-checked)")
    x.add_argument("checkpoint", help="a checkpoint.pth from a run directory")
    x.add_argument("--out", required=True, help="the folder for model.onnx, card.json and weights.pth")
    x.add_argument("--precision", choices=("float32", "float16", "int8"), default="float32",
                   help="the graph's arithmetic; float16 for GPUs (tensor cores), parity-checked at 1%% of each "
                        "output's range; int8 for CPUs (ONNX Runtime static quantization calibrated on training "
                        "images; refused unless it keeps >= 99%% of float32's top-1, CAM correlation >= 0.99 and "
                        "median box IoU >= 0.9 on validation images; where only near-ties flip, float32 answers "
                        "them from model.float32.onnx beside it); input and outputs stay float32 "
                        "(default %(default)s)")
    x.add_argument("--register", action="store_true", help="register the export in the registry")
    x.add_argument("--deploy", choices=("auto", "always", "never"), default="auto",
                   help="with --register; auto: only a model's first version (no gate runs here); a version "
                        "that diverged or does not clear chance never goes live (default %(default)s)")
    registry_args(x)
    x.set_defaults(func=cmd_export)

    b = sub.add_parser("bootstrap", help="deploy the shipped default model if none is deployed")
    b.add_argument("--train", action="store_true", help="train the default model afresh instead of registering "
                                                        "the shipped one")
    b.add_argument("--out", default="runs/default", help="run directory for --train (default %(default)s)")
    registry_args(b)
    b.set_defaults(func=cmd_bootstrap)

    rp = sub.add_parser("report", help="write or refresh a model's report (figures, confusion, localization, "
                                       "gallery, index.html)")
    rp.add_argument("target", metavar="RUN_OR_VERSION", help="a run folder (runs/...), or a version in the registry")
    registry_args(rp)
    rp.set_defaults(func=cmd_report)

    s = sub.add_parser("serve", help="run the HTTP service")
    s.add_argument("--host", default=os.environ.get("RESCAM_HOST", "127.0.0.1"), help="default %(default)s")
    s.add_argument("--port", type=int, default=int(os.environ.get("RESCAM_PORT", "8000")), help="default %(default)s")
    s.add_argument("--workers", type=int, default=1, help="worker processes (default %(default)s)")
    registry_args(s)
    s.set_defaults(func=cmd_serve)

    tr = sub.add_parser("export-triton", help="write a Triton model repository: every model's deployed version, "
                                              "or one model's (--name)")
    tr.add_argument("--out", required=True, help="the Triton model repository folder")
    tr.add_argument("--name", help="only this model (default: every model with a deployed version)")
    tr.add_argument("--version", type=int, help="with --name; default: the deployed version")
    tr.add_argument("--triton-name", help="with --name: the model's name in Triton (default: its registry name)")
    tr.add_argument("--max-batch-size", type=int, default=64, help="default %(default)s")
    tr.add_argument("--registry", default=DEFAULT_REGISTRY, help="registry root (default %(default)s)")
    tr.set_defaults(func=cmd_export_triton)

    w = sub.add_parser("worker", help="run retrain jobs apart from the API process")
    registry_args(w)
    w.set_defaults(func=cmd_worker)

    pr = sub.add_parser("predict", help="labels, scores and boxes of one image, and its CAM overlay")
    pr.add_argument("image", help="an image file")
    pr.add_argument("--out", default="overlay.png", help="the top label's overlay (.png, .jpeg or .webp; "
                                                         "default %(default)s)")
    pr.add_argument("--top-k", type=int, default=5, help="labels to return (default %(default)s)")
    registry_args(pr)
    pr.set_defaults(func=cmd_predict)

    m = sub.add_parser("models", help="the registry's models and their versions: list [NAME], show NAME VERSION, "
                                      "deploy NAME VERSION, rollback NAME, delete NAME VERSION")
    m.add_argument("action", choices=("list", "show", "deploy", "rollback", "delete"), help="what to do")
    m.add_argument("model", nargs="?", metavar="NAME", help="the model (list without it: every model)")
    m.add_argument("version", type=int, nargs="?", help="the version, for show, deploy and delete")
    m.add_argument("--reason", default="", help="recorded in the audit log (deploy, rollback)")
    m.add_argument("--registry", default=DEFAULT_REGISTRY, help="registry root (default %(default)s)")
    m.set_defaults(name=DEFAULT_NAME)
    m.set_defaults(func=cmd_models)
    return p


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rescam")
    except PackageNotFoundError:
        return "(not installed)"


def user_errors() -> tuple[type[Exception], ...]:
    """The exceptions that mean the user asked for something that cannot be done; each names it."""
    from app.card import CardError
    from app.engine import ModelLoadError
    from app.jobspec import JobFileError
    from app.model_manager import NotDeployed
    from app.registry import RegistryError

    from .quantize import QuantizationError

    return (UserError, CardError, ModelLoadError, JobFileError, NotDeployed, RegistryError, QuantizationError,
            FileNotFoundError, ValueError)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except user_errors() as e:
        if os.environ.get("RESCAM_DEBUG"):
            raise
        message = str(e) if not isinstance(e, FileNotFoundError) else f"{e.filename}: no such file"
        print(f"rescam: error: {message}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
