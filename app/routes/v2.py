"""Open Inference Protocol v2 (KServe / Triton HTTP), so their clients work unchanged.

Every model the service has answers at /v2/models/{name} (one in standby loads on the request);
`POST /v2/repository/index` lists them. A model takes `input` (FP32, [-1, 3, H, W]), already
normalised as its card says, and returns `logits` and `cam`, `features` and `foreground` where its
graph has them,
and the open-world verdict of each image (app.scoring): `ood_score` (FP32 [-1]) and `unknown`
(BOOL [-1]; only for a version with a fitted threshold).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, RootModel

from .. import oip
from ..engine import Engine
from ..live_models import LiveModels
from ..predictor import Predictor
from ..schemas import ErrorAnswer
from .deps import ModelsDep, PredictorDep, SettingsDep, require_predict_token
from .uploads import read_limited

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"],
                   responses={s: {"model": ErrorAnswer} for s in (400, 401, 403, 404, 503)})
TOKEN = [Depends(require_predict_token)]  # the model routes, as /v1/predict; health stays open to probes


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Liveness(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ModelReady(BaseModel):
    name: str
    ready: bool


class OutputTensor(TensorMetadata):
    data: list[float] | None = None
    parameters: dict[str, Any] | None = Field(None, description="binary_data_size, for a binary output")


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[OutputTensor]


@router.get("", response_model=ServerMetadata)
def server_metadata() -> dict:
    return {"name": "rescam", "version": "0.1.0", "extensions": ["binary_tensor_data"]}


@router.get("/health/live", response_model=Liveness)
def live() -> dict:
    return {"live": True}


@router.get("/health/ready", response_model=Ready, responses={503: {"model": Ready}})
def ready(models: ModelsDep) -> JSONResponse:
    ok, _ = models.readiness()
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


class RepositoryModel(BaseModel):
    name: str
    version: str | None
    state: str = Field(description="READY or UNAVAILABLE (Triton's repository index)")
    reason: str = ""


class RepositoryIndex(RootModel[list[RepositoryModel]]):
    """A bare list, as Triton answers it."""


@router.post("/repository/index", response_model=RepositoryIndex, dependencies=TOKEN)
def repository_index(models: ModelsDep) -> list[dict]:
    """Every model and the version that answers it (Triton's model repository extension)."""
    index = []
    for name in models.known_names():
        manager = models.manager(name)
        engine, version = manager.engine, manager.registry.deployed(name)
        ready = engine is not None or manager.state == "standby"
        index.append({"name": name, "version": str(engine.version if engine else version) if version else None,
                      "state": "READY" if ready else "UNAVAILABLE",
                      "reason": "" if ready else (manager.load_error or manager.state)})
    return index


async def _model(models: LiveModels, name: str, version: str | None) -> Engine:
    """The model's live engine (loaded on demand), by its name, and by its version when one is named."""
    engine, _ = await models.engine(name)
    if version is not None and version != str(engine.version):
        raise HTTPException(404, f"{name} version {version} is not loaded; version {engine.version} serves")
    return engine


def output_shapes(engine) -> dict[str, tuple[str, list[int]]]:
    """Each output this model answers with: its datatype and shape."""
    n, (h, w) = len(engine.labels), engine.card.cam_size
    shapes = {"logits": ("FP32", [-1, n]), "cam": ("FP32", [-1, n, h, w])}
    if "features" in engine.outputs:
        shapes["features"] = ("FP32", [-1, engine.scorer.feature_size or -1])
    if "foreground" in engine.outputs:
        shapes["foreground"] = ("FP32", [-1, h, w])
    shapes["ood_score"] = ("FP32", [-1])
    if engine.scorer.threshold is not None:
        shapes["unknown"] = ("BOOL", [-1])
    return shapes


def metadata(engine) -> dict:
    side = engine.prep.crop
    return {"name": engine.name, "versions": [str(engine.version)], "platform": "onnxruntime_onnx",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3, side, side]}],
            "outputs": [{"name": k, "datatype": t, "shape": shape} for k, (t, shape) in output_shapes(engine).items()]}


@router.get("/models/{name}", response_model=ModelMetadata, dependencies=TOKEN)
async def model_metadata(name: str, models: ModelsDep) -> dict:
    return metadata(await _model(models, name, None))


@router.get("/models/{name}/versions/{version}", response_model=ModelMetadata, dependencies=TOKEN)
async def version_metadata(name: str, version: str, models: ModelsDep) -> dict:
    return metadata(await _model(models, name, version))


@router.get("/models/{name}/ready", response_model=ModelReady, dependencies=TOKEN)
async def model_ready(name: str, models: ModelsDep) -> dict:
    return {"name": name, "ready": (await _model(models, name, None)).warm}


@router.get("/models/{name}/versions/{version}/ready", response_model=ModelReady, dependencies=TOKEN)
async def version_ready(name: str, version: str, models: ModelsDep) -> dict:
    return {"name": name, "ready": (await _model(models, name, version)).warm}


INFER = {"dependencies": TOKEN, "response_model": InferResponse, "openapi_extra": {"requestBody": {
    "required": True, "description": f"JSON, or a JSON header of `{oip.HEADER_LENGTH}` bytes followed by the binary "
                                     "tensors it names (the binary tensor data extension)",
    "content": {"application/json": {"schema": oip.request_schema()},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}}


@router.post("/models/{name}/infer", **INFER)
async def infer(name: str, request: Request, models: ModelsDep, settings: SettingsDep, predictor: PredictorDep):
    return await run_inference(await _model(models, name, None), request, settings, predictor)


@router.post("/models/{name}/versions/{version}/infer", **INFER)
async def infer_version(name: str, version: str, request: Request, models: ModelsDep, settings: SettingsDep,
                        predictor: PredictorDep):
    return await run_inference(await _model(models, name, version), request, settings, predictor)


async def run_inference(engine: Engine, request: Request, settings, predictor: Predictor) -> Response:
    body = await read_limited(request.stream(), settings.max_upload_bytes * settings.max_files)
    try:
        parsed, arrays = oip.parse(body, request.headers.get(oip.HEADER_LENGTH))
    except oip.ProtocolError as e:
        raise HTTPException(400, str(e)) from None
    if "input" not in arrays:
        raise HTTPException(400, f"no input named 'input' (got {sorted(arrays)})")
    side = engine.prep.crop
    shape = list(arrays["input"].shape)
    if len(shape) != 4 or shape[1:] != [3, side, side] or shape[0] < 1:
        raise HTTPException(400, f"input shape must be [N, 3, {side}, {side}], got {shape}")
    with np.errstate(over="ignore", invalid="ignore"):  # what does not fit float32 is refused just below
        x = np.ascontiguousarray(arrays["input"], dtype=np.float32)
    if not np.isfinite(x).all():
        raise HTTPException(400, "input data must be finite numbers (no NaN or infinity)")
    offered = output_shapes(engine)
    wanted = [o.name for o in parsed.outputs] if parsed.outputs else list(offered)
    missing = set(wanted) - set(offered)
    if missing:
        raise HTTPException(400, f"unknown outputs {sorted(missing)}; this model has {', '.join(offered)}")
    # the images' own inference thread, batched with theirs: the two protocols never run the model
    # side by side on the same cores
    out = await predictor.infer_batch(engine, x)
    verdicts = engine.scorer.verdicts(out.logits, out.features)
    computed = {"logits": out.logits, "cam": out.cams, "features": out.features, "foreground": out.foreground,
                "ood_score": np.array([v.ood_score for v in verdicts], dtype=np.float32),
                "unknown": np.array([bool(v.unknown) for v in verdicts], dtype=np.bool_)}
    content, header_length = oip.encode({"model_name": engine.name, "model_version": str(engine.version),
                                         "id": parsed.id}, {k: computed[k] for k in wanted}, parsed)
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type="application/octet-stream",
                    headers={oip.HEADER_LENGTH: str(header_length)})
