"""The service's one settings object; every field can be set from the environment as RESCAM_<NAME>."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .cam import BoxRule
from .registry import check_model_name


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RESCAM_", protected_namespaces=())

    registry: Path = Path("registry")
    # the model that answers where a request names none (POST /v1/predict, `rescam predict`)
    default_model: str = "default"
    # the models that must serve (RESCAM_MODELS=shapes,birds); empty: every registry model with a
    # deployed version, the default one too
    models: Annotated[list[str], NoDecode] = []
    # at most this many models loaded at once (0: no bound); the least recently used is unloaded
    # and loads again on its next request
    max_loaded_models: int = Field(0, ge=0)
    # ONNX Runtime providers, tried in order; the one that really loaded is reported.
    providers: list[str] = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    # "all" is fastest on the CPU (about 20% faster than "extended" for resnet50; BENCHMARKS.md)
    graph_optimization: Literal["all", "extended", "basic", "disabled"] = "all"
    # on the CPU provider, serve the optimized graph without the original weights beside it
    # (resnet50: about 150 MB less memory, same speed)
    lean_cpu_session: bool = True
    intra_op_threads: int = 0  # 0: ONNX Runtime's default (one per core)
    inter_op_threads: int = 0
    # input limits
    max_upload_bytes: int = 25 * 1024 * 1024
    max_pixels: int = 64_000_000  # decompression bombs stop here
    # memory that image decodes may hold at once in a process (and the most one image may need): a
    # decode reserves its estimate first, and waits while others hold the rest (app.imaging)
    decode_memory_mb: int = Field(512, ge=16)
    max_files: int = 16
    # dynamic batching
    batching: bool = True
    max_batch_size: int = 16
    # how long a batch waits for company. 0: greedy, a batch is what queued while the previous one
    # ran (no added latency when idle). Unset: 0 on the CPU, where a batch of 8 runs no faster per
    # image than 8 of one (BENCHMARKS.md), GPU_BATCH_WAIT_MS on a GPU, where it does
    max_batch_wait_ms: float | None = Field(None, ge=0)
    # on a GPU provider: inputs and outputs through ONNX Runtime's I/O binding
    io_binding: bool = True
    request_timeout_s: float = 30.0
    # answers
    top_k: int = 5
    # box threshold, a fraction of the CAM's max; unset: the model card's calibrated one (the best
    # threshold on its validation set, Choe et al. 2020), else the CAM paper's 0.2
    cam_threshold: float | None = Field(None, gt=0, lt=1)
    # or a whole box rule for every model: threshold:F, mass:F, otsu or spread:K (app.cam.BoxRule)
    box_rule: str | None = None

    @field_validator("default_model")
    @classmethod
    def _model_name(cls, value: str) -> str:
        return check_model_name(value)

    @field_validator("models", mode="before")
    @classmethod
    def _model_names(cls, value: str | list[str]) -> list[str]:
        names = [n.strip() for n in value.split(",")] if isinstance(value, str) else list(value)
        return [check_model_name(n) for n in names if n]

    @field_validator("box_rule")
    @classmethod
    def _known_rule(cls, value: str | None) -> str | None:
        if value:
            BoxRule.parse(value)  # a ValueError names what is wrong
        return value

    def configured_rule(self) -> BoxRule | None:
        if self.box_rule:
            return BoxRule.parse(self.box_rule)
        return BoxRule("threshold", self.cam_threshold) if self.cam_threshold is not None else None
    work_max_side: int = 1024  # heatmaps, boxes and overlays are computed at most this long
    overlay_max_side: int = 1024
    prediction_ttl_s: float = 900.0
    # memory for kept predictions (images and CAMs for overlays); the oldest go first. It adds to
    # the process's RSS as predictions arrive (a 640x480 image with 1000 CAMs is about 1.1 MB).
    prediction_store_mb: int = Field(256, ge=1)
    # "shared": predictions are also kept under data_root/predictions, so that every worker of
    # `rescam serve --workers N` (which sets it) answers every overlay URL
    prediction_store: Literal["memory", "shared"] = "memory"
    cors_origins: list[str] = []
    # the live version is re-read this often, so every worker and replica follows a deploy
    registry_poll_s: float = 2.0
    # retraining: data sets and run directories live under data_root, jobs in data_root/jobs.sqlite
    data_root: Path = Path("data")
    run_jobs: bool = True  # this process runs queued jobs (or leave them to `rescam worker`)
    max_concurrent_jobs: int = 1
    train_processes: int = 1  # > 1: each job runs under torchrun with this many processes (GPUs)
    gate_margin: float = 0.02  # how much CAM localization may drop for a retrained model to go live
    max_dataset_bytes: int = 512 * 1024 * 1024
    max_dataset_files: int = 100_000
    max_dataset_uncompressed: int = 2 * 1024 * 1024 * 1024
    predict_token: SecretStr | None = None  # when set, predictions need it too
    # admin endpoints (deploy, rollback, delete): off unless a token is set, or opened on purpose
    admin_token: SecretStr | None = None
    open_admin_for_local_development: bool = False
