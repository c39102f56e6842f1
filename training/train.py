"""The trainer, top to bottom: setup, data, model, optimiser, loop, evaluation, checkpoints.

Runs as `rescam train ...` in one process, or under `torchrun --nproc_per_node=N` with DDP (NCCL
on CUDA, gloo on CPU); only rank 0 writes. Mixed precision (bf16 autocast), channels_last and
torch.compile are each one flag.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from models import ResNet, create_model

from .config import TrainConfig
from .data import box_masks, boxed_images, decoded, load_data, preprocessing
from .evaluate import channel_stats, evaluate, normalize_batch
from .foreground import fit_dataset
from .losses import box_fit_loss
from .outliers import Outliers, outlier_source
from .plan import (MASKED_AUGMENTATIONS, Plan, adapt_augmentation, adapt_to_data, augment_batch, choose_precision,
                   learning_at_the_end, make_plan, scale_to_budget, time_steps)
from .weights import load_state, start_from_shapes

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pth"
BEST = "best.pth"  # the weights of the epoch with the best validation top-1 (cfg.keep_best)
METRICS = "metrics.jsonl"


# --- setup -------------------------------------------------------------------------------------

def setup_distributed(device_kind: str) -> tuple[int, int, int]:
    """(rank, world size, local rank); joins the process group when torchrun started us."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(name: str) -> str:
    """The configured device, with "auto" made "cuda" or "cpu"."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(cfg: TrainConfig, num_classes: int) -> ResNet:
    return create_model(cfg.architecture, num_classes=num_classes, **cfg.architecture_kwargs)


def load_init(model: ResNet, path: str) -> None:
    """Start from a torchvision-format state_dict (.pth or .safetensors, or a rescam checkpoint); a
    head of another class count is left freshly initialised."""
    state = load_state(path)
    own = model.state_dict()
    head = {k for k in ("fc.weight", "fc.bias") if k in state and state[k].shape != own[k].shape}
    missing, unexpected = model.load_state_dict({k: v for k, v in state.items() if k not in head}, strict=False)
    if unexpected or set(missing) - head:
        lost = sorted(set(missing) - head)
        raise ValueError(f"{path} does not fit this network: {len(lost)} of its parameters are not in the file "
                         f"(e.g. {lost[:2]}) and {len(unexpected)} of the file's are not in it (e.g. {unexpected[:2]}): "
                         "weights of another architecture")
    if head:
        log.info("replaced the classifier head (%s classes)", own["fc.bias"].shape[0])


def freeze_batchnorm(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def lr_factor(cfg: TrainConfig, total_steps: int):
    """The learning-rate multiplier at optimizer step s: linear warm-up, then cosine or steps."""
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "cosine":
            t = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
        if cfg.schedule == "step":
            return 0.1 ** sum(step >= m for m in cfg.milestones)
        return 1.0  # "plateau" is stepped on validation loss instead
    return factor


# --- checkpoints and progress --------------------------------------------------------------------

def save_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


class Progress:
    """One JSON line per report in metrics.jsonl (the service reads it for job progress), and a
    progress bar with the ETA on a terminal (tqdm; none when stderr is not a terminal)."""

    def __init__(self, out_dir: Path, total_steps: int, enabled: bool) -> None:
        self.path, self.total, self.enabled = out_dir / METRICS, total_steps, enabled
        self.start = time.monotonic()
        self.first_step: int | None = None
        self.bar = tqdm(total=total_steps, desc="training", unit="step", disable=None if enabled else True,
                        dynamic_ncols=True)

    def report(self, **fields) -> None:
        if not self.enabled:
            return
        step = fields.get("step", 0)
        if self.first_step is None:
            self.first_step, self.start = step, time.monotonic()
        elapsed = time.monotonic() - self.start
        done = step - self.first_step
        rate = done / elapsed if elapsed > 0 and done > 0 else 0.0
        fields.update(time=time.time(), total_steps=self.total,
                      eta_s=round((self.total - step) / rate, 1) if rate else None)
        with open(self.path, "a") as f:
            f.write(json.dumps(fields) + "\n")
        if self.bar.total != self.total:  # re-planned
            self.bar.total = self.total
        self.bar.update(step - self.bar.n)
        if fields.get("event") == "step":
            self.bar.set_postfix(loss=f"{fields['loss']:.3f}", lr=f"{fields['lr']:.3g}",
                                 img_s=fields["images_per_s"], refresh=False)
        elif fields.get("event") in ("epoch", "done"):
            shown = {k: v for k, v in fields.items() if k.startswith("val_") or k in ("top1", "max_box_acc")}
            self.bar.write(f"{fields['event']} {fields.get('epoch')}: " +
                           " ".join(f"{k}={v:.4g}" for k, v in shown.items() if isinstance(v, float)))

    def close(self) -> None:
        self.bar.close()


# --- the run -----------------------------------------------------------------------------------

def train(cfg: TrainConfig, out_dir: str | Path, resume: bool = False) -> Path:
    """Train; returns the path of the checkpoint that holds the final weights and metrics."""
    out_dir = Path(out_dir)
    device_name = resolve_device(cfg.device)
    rank, world, local_rank = setup_distributed(torch.device(device_name).type)
    device = torch.device(f"cuda:{local_rank}" if device_name == "cuda" else device_name)
    is_main = rank == 0
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True

    # data, and what the data decide (image size, stem, augmentation; training/plan.py)
    cfg = adapt_to_data(cfg, device.type == "cuda")
    data = load_data(cfg)
    data.train, data.val = decoded(data.train, cfg.image_size), decoded(data.val, cfg.image_size)
    cfg = adapt_augmentation(cfg, data.train, data.val)
    if cfg.batch_size % world:
        raise ValueError(f"batch size {cfg.batch_size} does not divide over {world} processes")
    if len(data.train) < world:
        raise ValueError(f"the training set has {len(data.train)} images; at least {world} are needed")
    batch_size = cfg.batch_size
    if len(data.train) < batch_size:  # a small data set: one batch of all of it
        batch_size = len(data.train) // world * world
        log.warning("the training set has %d images: batch size %d instead of %d", len(data.train), batch_size,
                    cfg.batch_size)
    sampler = DistributedSampler(data.train, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
    loader = DataLoader(data.train, batch_size=batch_size // world, sampler=sampler, drop_last=True,
                        num_workers=cfg.workers, pin_memory=device.type == "cuda",
                        persistent_workers=cfg.workers > 0)
    steps_per_epoch = len(loader)
    mean, std = channel_stats(cfg, device)

    # model, the plan (how many steps), optimiser
    checkpoint_path = out_dir / CHECKPOINT
    ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=False) \
        if resume and checkpoint_path.exists() else None
    if ckpt is not None:  # the network and steps its plan chose (scale_to_budget may have grown them)
        saved = ckpt.get("config", {})
        cfg = cfg.replace(architecture_kwargs=ckpt["model_kwargs"],
                          **{k: saved[k] for k in ("epochs", "max_steps") if k in saved})
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = build_model(cfg, len(data.classes))
    if cfg.init:
        load_init(model, cfg.init)
    model = model.to(device, memory_format=memory_format)
    if ckpt is not None and ckpt.get("plan"):
        plan = Plan(**ckpt["plan"])  # a resumed run keeps its schedule
    else:
        precision, timed = choose_precision(cfg, device, bool(cfg.time_budget_s or cfg.adapt),
                                            lambda bf16, limit_s: time_steps(model, loader, cfg, device, bf16=bf16,
                                                                             limit_s=limit_s))
        if timed is not None:  # every process plans alike (rank 0's timing and choice)
            timed = rank0_value(timed, world, device)
            precision = "bfloat16" if rank0_value(float(precision == "bfloat16"), world, device) else "float32"
        fitted = boxed_images(data.train) if cfg.box_loss > 0 and cfg.augment in MASKED_AUGMENTATIONS else 0
        plan = make_plan(cfg, steps_per_epoch, batch_size, len(data.train), len(data.val), timed, device.type,
                         precision, fitted)

        def timed_as(c: TrainConfig) -> float:  # rank 0's time a step of that network, the run's RNG untouched
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                probe = build_model(c, len(data.classes)).to(device, memory_format=memory_format)
            return rank0_value(time_steps(probe, loader, c, device, bf16=precision == "bfloat16"), world, device)

        grown, timed = scale_to_budget(cfg, plan, timed_as)
        if grown != cfg:
            if grown.architecture_kwargs != cfg.architecture_kwargs:
                model = build_model(grown, len(data.classes)).to(device, memory_format=memory_format)
            cfg = grown
            plan = make_plan(cfg, steps_per_epoch, batch_size, len(data.train), len(data.val), timed, device.type,
                             precision, fitted)
        if cfg.init:
            plan = dataclasses.replace(plan, start=Path(cfg.init).name)
        elif cfg.shapes_start and start_from_shapes(model):
            plan = dataclasses.replace(plan, start="the shapes model's weights")
    total_steps, epochs = plan.steps, plan.epochs
    if world > 1 and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    decay, no_decay = [], []
    for p in model.parameters():  # no weight decay on BN and biases
        (no_decay if p.ndim <= 1 else decay).append(p)
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, total_steps))
    plateau = (torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.1, patience=2)
               if cfg.schedule == "plateau" else None)

    averaged = weight_average(model, cfg.ema)
    kept = averaged.module if averaged is not None else model  # what is evaluated, kept and exported
    start_epoch, step, best_top1 = 0, 0, -1.0
    val_curve: list[float] = []  # validation top-1 at each epoch's end
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        if averaged is not None and ckpt.get("ema"):
            averaged.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if plateau is not None:
            plateau.load_state_dict(ckpt["plateau"])
        set_rng_state(ckpt["rng"])
        start_epoch, step, best_top1 = ckpt["epoch"], ckpt["step"], ckpt.get("best_top1", -1.0)
        val_curve = list(ckpt.get("val_curve", []))
        log.info("resumed from %s at epoch %d, step %d", checkpoint_path, start_epoch, step)

    net = DistributedDataParallel(model) if world > 1 else model
    if cfg.compile:
        net = torch.compile(net)
    use_amp = plan.precision == "bfloat16"
    progress = Progress(out_dir, total_steps, is_main)
    if is_main and ckpt is None:
        log.info(plan.describe(len(data.train)))
        print(f"rescam: {plan.describe(len(data.train))}", file=sys.stderr, flush=True)
        progress.report(event="plan", step=0, train_images=len(data.train), val_images=len(data.val),
                        **plan.to_dict())
    aug_gen = torch.Generator()
    fit_boxes = plan.boxes_fitted > 0
    if cfg.box_loss > 0 and cfg.augment not in MASKED_AUGMENTATIONS:
        log.warning("box_loss needs an augmentation that moves boxes along (%s); not %s: boxes are not fitted",
                    ", ".join(MASKED_AUGMENTATIONS), cfg.augment)
    val_metrics: dict = {}
    outliers = (Outliers(outlier_source(cfg, data.classes), cfg.augment, cfg.flip, mean, std, cfg.seed)
                if cfg.outlier_exposure else None)

    # the loop
    epochs_done = start_epoch
    replan_at = cfg.warmup_steps if cfg.time_budget_s and ckpt is None and cfg.warmup_steps >= 10 else None
    step_s: list[float] = []  # each step's time until the re-plan, evaluation excluded
    epoch = start_epoch
    while epoch < epochs:
        if step >= total_steps or (cfg.stop_after_epochs is not None and epoch - start_epoch >= cfg.stop_after_epochs):
            break
        net.train()
        if cfg.freeze_bn:
            freeze_batchnorm(net)
        sampler.set_epoch(epoch)
        aug_gen.manual_seed(cfg.seed * 100_003 + epoch * 1009 + rank)
        seen, tick = 0, time.monotonic()
        mark = tick
        for images, labels, boxes, windows in loader:
            if step >= total_steps:
                break
            x = normalize_batch(images.to(device, non_blocking=True), mean, std)
            masks = None
            if fit_boxes and torch.isfinite(boxes).all(dim=1).any():
                x, masks = augment_batch(x, cfg.augment, aug_gen, box_masks(boxes, windows, x.shape[-1]).to(device), cfg.flip)
            else:
                x = augment_batch(x, cfg.augment, aug_gen, flip=cfg.flip)
            y = labels.to(device, non_blocking=True)
            donor, own = None, 1.0
            if cfg.cutmix and masks is None and float(torch.rand(1, generator=aug_gen)) < cfg.cutmix:
                x, donor, own = cutmix(x, aug_gen)
            x = x.contiguous(memory_format=memory_format)
            if cfg.outlier_exposure:
                x = torch.cat([x, outliers(x, aug_gen)])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits, cams = net(x, with_cam=True) if masks is not None else (net(x), None)
                if cfg.outlier_exposure:
                    logits, outlier_logits = logits[: len(y)], logits[len(y):]
                scored = logit_normalised(logits, cfg.logit_norm)
                loss = F.cross_entropy(scored, y, label_smoothing=cfg.label_smoothing)
                if donor is not None:  # the patch's share of the image is its donor's label
                    donor_loss = F.cross_entropy(scored, y[donor], label_smoothing=cfg.label_smoothing)
                    loss = own * loss + (1 - own) * donor_loss
                fit = box_fit_loss(cams[: len(y)], y, masks) if masks is not None else None
                if fit is not None:
                    loss = loss + cfg.box_loss * fit
                if cfg.outlier_exposure:  # cross-entropy to the uniform distribution
                    loss = loss - cfg.outlier_exposure * F.log_softmax(outlier_logits.float(), dim=1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if averaged is not None:
                averaged.update_parameters(model)
            step += 1
            if replan_at and step <= replan_at:
                step_s.append(time.monotonic() - mark)
            mark = time.monotonic()
            if step == replan_at:
                # the loop's own speed (the probe's can be off on a busy machine): fit the budget
                # again before the cosine phase, whose shape depends on the step count
                # the median of the steps after the first few (kernels warming up): a stretch of
                # steps slowed by something else on the machine does not cut the whole run
                plan = replan(cfg, plan, statistics.median(step_s[min(5, len(step_s) - 1):]), len(data.train),
                              len(data.val), world, device, done=step)
                total_steps, epochs, progress.total = plan.steps, plan.epochs, plan.steps
                scheduler.lr_lambdas = [lr_factor(cfg, total_steps)] * len(optimizer.param_groups)
                progress.report(event="plan", step=step, replanned=True, train_images=len(data.train),
                                val_images=len(data.val), **plan.to_dict())
                if is_main:
                    log.info("re-planned at step %d: %s", step, plan.describe(len(data.train)))
            seen += len(y) * world
            if step % cfg.log_every == 0 or step == total_steps:
                elapsed = time.monotonic() - tick
                progress.report(event="step", epoch=epoch, step=step, loss=loss.item(),
                                train_top1=(logits.argmax(1) == y).float().mean().item(),  # the augmented batch
                                lr=optimizer.param_groups[0]["lr"], images_per_s=round(seen / elapsed, 1))
                seen, tick = 0, time.monotonic()

        # evaluation and checkpoint at every epoch's end; rank 0 only
        if is_main:
            val_metrics = evaluate(kept, data.val, cfg, device, len(data.classes), localization=False)
            val_curve.append(val_metrics["top1"])
            if plateau is not None:
                plateau.step(val_metrics["loss"])
            progress.report(event="epoch", epoch=epoch + 1, step=step, val_loss=val_metrics["loss"],
                            val_top1=val_metrics["top1"], val_top5=val_metrics["top5"])
            if cfg.keep_best and val_metrics["top1"] > best_top1:
                best_top1 = val_metrics["top1"]
                save_atomic({"model": kept.state_dict(), "epoch": epoch + 1, "step": step, "top1": best_top1},
                            out_dir / BEST)
            save_atomic({"model": model.state_dict(), "ema": averaged.state_dict() if averaged is not None else None,
                         "architecture": cfg.architecture, "model_kwargs": cfg.architecture_kwargs,
                         "classes": data.classes, "config": cfg.to_dict(), "fingerprint": data.fingerprint,
                         "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "plateau": plateau.state_dict() if plateau is not None else None,
                         "rng": rng_state(), "epoch": epoch + 1, "step": step, "metrics": val_metrics,
                         "plan": plan.to_dict(), "best_top1": best_top1, "val_curve": val_curve},
                        checkpoint_path)
        epochs_done = epoch = epoch + 1
        if world > 1:
            dist.barrier()

    finished = step >= total_steps or epochs_done >= epochs
    if is_main and finished:
        ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        if averaged is not None:  # the average is the model from here on
            model.load_state_dict(kept.state_dict())
            ckpt["model"], ckpt["ema"] = model.state_dict(), None
        if cfg.keep_best and (out_dir / BEST).exists():
            best = torch.load(out_dir / BEST, map_location="cpu", weights_only=False)
            model.load_state_dict(best["model"])
            ckpt["model"], ckpt["best_epoch"] = best["model"], best["epoch"]
            log.info("kept the weights of epoch %d (validation top-1 %.4f)", best["epoch"], best["top1"])
        # the foreground direction, for the pc1 box rules measured below and the exported graph
        foreground = fit_dataset(model, data.train, preprocessing(cfg), cfg.seed)
        ckpt["foreground"] = foreground.to_dict()
        metrics = evaluate(model, data.val, cfg, device, len(data.classes), localization=True, foreground=foreground)
        metrics["diverged"] = diverged(ckpt, metrics)
        end = learning_at_the_end(val_curve)
        if end:
            metrics.update(end)
            print(f"rescam: validation top-1 {end['late_gain']:+.1%} over the last {end['late_epochs']} epochs: "
                  + ("still learning, a longer time budget would likely add more" if end["still_learning"]
                     else "levelled off"), file=sys.stderr, flush=True)
        ckpt["metrics"] = metrics
        ckpt["finished"] = True  # the run is complete: export and registration may follow
        save_atomic(ckpt, checkpoint_path)
        progress.report(event="done", epoch=ckpt["epoch"], step=step,
                        **{k: v for k, v in metrics.items() if k != "confusion"})
    progress.close()
    if world > 1:
        dist.barrier()
        # leave the group before the interpreter exits: gloo's threads torn down at exit can abort a
        # process that has finished its work ("terminate called without an active exception")
        dist.destroy_process_group()
    return checkpoint_path


def weight_average(model: torch.nn.Module, decay: float) -> AveragedModel | None:
    """An exponential moving average of `model`'s weights and buffers (BatchNorm's statistics
    with them, so the average is evaluated as it is), or None when `decay` is 0."""
    if not decay:
        return None
    if not 0 < decay < 1:
        raise ValueError(f"ema must lie between 0 and 1 (a decay such as 0.998), got {decay}")

    def ema(average: torch.Tensor, current: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        d = torch.clamp((1 + n) / (10 + n), max=decay).to(average.dtype)
        return average * d + current * (1 - d)

    return AveragedModel(model, avg_fn=ema, use_buffers=True)


def rank0_value(value: float, world: int, device: torch.device) -> float:
    """Rank 0's `value` in every process: a plan made from timings must be the same everywhere, or
    the processes stop at different steps and the all-reduce hangs."""
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, 0)
    return float(t.item())


def replan(cfg: TrainConfig, plan: Plan, seconds_per_step: float, train_images: int, val_images: int, world: int,
           device: torch.device, done: int = 0) -> Plan:
    """The plan again with the loop's measured speed (rank 0's), never fewer steps than the `done`
    ones: on a machine slow enough that the budget is already spent, the run ends where it is."""
    seconds_per_step = rank0_value(seconds_per_step, world, device)
    plan = make_plan(cfg, plan.steps_per_epoch, plan.batch_size, train_images, val_images, seconds_per_step,
                     plan.device, plan.precision, plan.boxes_fitted)
    if plan.steps < done:
        plan = dataclasses.replace(plan, steps=done, epochs=math.ceil(done / plan.steps_per_epoch))
    return plan


def diverged(ckpt: dict, metrics: dict) -> bool:
    """A run whose validation loss is not a number learnt nothing usable (NaN or inf weights)."""
    weights_ok = all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    return not (math.isfinite(metrics["loss"]) and weights_ok)


def logit_normalised(logits: torch.Tensor, tau: float) -> torch.Tensor:
    """LogitNorm (Wei et al. 2022): the loss sees each row's logits scaled to norm 1 / tau, so
    training cannot lower it by growing the logits alone; tau = 0 leaves them as they are."""
    if not tau:
        return logits
    return logits / (tau * logits.float().norm(dim=1, keepdim=True).clamp_min(1e-7)).to(logits.dtype)


def cutmix(x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """CutMix (Yun et al. 2019): a rectangle of each image replaced by the same rectangle of another
    image of the batch, its area a share 1 - lam ~ U(0, 1) of the image. Returns the images, which
    image each one's patch came from, and lam, the share that is still the image's own (the loss
    weighs the two labels so). Unlike mixup no pixel is a blend, so a CAM still has one object to find."""
    n, _, h, w = x.shape
    lam = float(torch.rand(1, generator=generator))
    ch, cw = round(h * (1 - lam) ** 0.5), round(w * (1 - lam) ** 0.5)
    top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
    donor = torch.randperm(n, generator=generator).to(x.device)
    out = x.clone()
    out[:, :, top:top + ch, left:left + cw] = x[donor, :, top:top + ch, left:left + cw]
    return out, donor, 1 - ch * cw / (h * w)


def checkpoint_architecture(ckpt: dict) -> str:
    """The network design a checkpoint holds (`resnet20`); checkpoints written before the word
    "model" was kept for the registry's names call it `model_name`."""
    return ckpt["architecture"] if "architecture" in ckpt else ckpt["model_name"]


def load_checkpoint_model(path: str | Path) -> tuple[ResNet, dict]:
    """The model of a checkpoint in eval mode, and the checkpoint."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = create_model(checkpoint_architecture(ckpt), num_classes=len(ckpt["classes"]), **ckpt["model_kwargs"])
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt
