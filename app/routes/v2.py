"""Open Inference Protocol v2 (KServe / Triton HTTP), so their clients work unchanged.

The model takes `input` (FP32, [-1, 3, H, W]), already normalised as its card says, and returns
`logits` and `cam`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ..schemas import ErrorAnswer
from .deps import EngineDep, ModelsDep, require_predict_token

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"], dependencies=[Depends(require_predict_token)],
                   responses={s: {"model": ErrorAnswer} for s in (400, 401, 403, 404, 503)})
DATATYPES = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "UINT8": np.uint8, "INT32": np.int32,
             "INT64": np.int64}


class InferInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]
    parameters: dict[str, Any] | None = None


class RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    id: str | None = None
    inputs: list[InferInput] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None
    parameters: dict[str, Any] | None = None


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
    data: list[float]


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[OutputTensor]


def _check_name(engine, name: str) -> None:
    if name != engine.name:
        raise HTTPException(404, f"model {name!r} is not served here; this server serves {engine.name!r}")


@router.get("", response_model=ServerMetadata)
def server_metadata() -> dict:
    return {"name": "rescam", "version": "0.1.0", "extensions": []}


@router.get("/health/live", response_model=Liveness)
def live() -> dict:
    return {"live": True}


@router.get("/health/ready", response_model=Ready, responses={503: {"model": Ready}})
def ready(models: ModelsDep) -> JSONResponse:
    ok = models.engine is not None and models.engine.warm
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


@router.get("/models/{name}", response_model=ModelMetadata)
def model_metadata(name: str, engine: EngineDep) -> dict:
    _check_name(engine, name)
    n, side = len(engine.labels), engine.prep.crop
    h, w = engine.card.cam_size
    return {"name": engine.name, "versions": [str(engine.version)], "platform": "onnxruntime_onnx",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3, side, side]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, n]},
                        {"name": "cam", "datatype": "FP32", "shape": [-1, n, h, w]}]}


@router.get("/models/{name}/ready", response_model=ModelReady)
def model_ready(name: str, engine: EngineDep) -> dict:
    _check_name(engine, name)
    return {"name": name, "ready": engine.warm}


@router.post("/models/{name}/infer", response_model=InferResponse)
async def infer(name: str, body: InferRequest, engine: EngineDep) -> dict:
    _check_name(engine, name)
    item = next((i for i in body.inputs if i.name == "input"), None)
    if item is None:
        raise HTTPException(400, f"no input named 'input' (got {[i.name for i in body.inputs]})")
    if item.datatype not in DATATYPES:
        raise HTTPException(400, f"unsupported datatype {item.datatype}")
    side = engine.prep.crop
    if len(item.shape) != 4 or item.shape[1:] != [3, side, side] or item.shape[0] < 1:
        raise HTTPException(400, f"input shape must be [N, 3, {side}, {side}], got {item.shape}")
    try:
        x = np.asarray(item.data, dtype=DATATYPES[item.datatype]).astype(np.float32).reshape(item.shape)
    except (ValueError, TypeError, OverflowError) as e:
        raise HTTPException(400, f"input data does not fit datatype {item.datatype} and shape {item.shape}: {e}") \
            from None
    if not np.isfinite(x).all():
        raise HTTPException(400, "input data must be finite numbers (no NaN or infinity)")
    wanted = {o.name for o in body.outputs} if body.outputs else {"logits", "cam"}
    unknown = wanted - {"logits", "cam"}
    if unknown:
        raise HTTPException(400, f"unknown outputs {sorted(unknown)}; this model has 'logits' and 'cam'")
    # in a worker thread: the event loop keeps serving while the model runs
    logits, cams = await asyncio.get_running_loop().run_in_executor(None, engine.run, x)
    outputs = [{"name": k, "datatype": "FP32", "shape": list(v.shape), "data": v.ravel().tolist()}
               for k, v in (("logits", logits), ("cam", cams)) if k in wanted]
    return {"model_name": engine.name, "model_version": str(engine.version), "id": body.id, "outputs": outputs}
