"""Open Inference Protocol v2 (KServe / Triton HTTP), so their clients work unchanged.

The model takes `input` (FP32, [-1, 3, H, W]), already normalised as its card says, and returns
`logits` and `cam`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from .deps import EngineDep, ServiceDep

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])
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


def _check_name(engine, name: str) -> None:
    if name != engine.name:
        raise HTTPException(404, f"model {name!r} is not served here; this server serves {engine.name!r}")


@router.get("")
def server_metadata() -> dict:
    return {"name": "rescam", "version": "0.1.0", "extensions": []}


@router.get("/health/live")
def live() -> dict:
    return {"live": True}


@router.get("/health/ready")
def ready(service: ServiceDep) -> JSONResponse:
    ok = service.engine is not None and service.engine.warm
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


@router.get("/models/{name}")
def model_metadata(name: str, engine: EngineDep) -> dict:
    _check_name(engine, name)
    n, side = len(engine.labels), engine.prep.crop
    h, w = engine.card.get("cam_size", [-1, -1])
    return {"name": engine.name, "versions": [str(engine.version)], "platform": "onnxruntime_onnx",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3, side, side]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, n]},
                        {"name": "cam", "datatype": "FP32", "shape": [-1, n, h, w]}]}


@router.get("/models/{name}/ready")
def model_ready(name: str, engine: EngineDep) -> dict:
    _check_name(engine, name)
    return {"name": name, "ready": engine.warm}


@router.post("/models/{name}/infer")
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
    except (ValueError, TypeError) as e:
        raise HTTPException(400, f"input data does not fit shape {item.shape}: {e}") from None
    wanted = {o.name for o in body.outputs} if body.outputs else {"logits", "cam"}
    unknown = wanted - {"logits", "cam"}
    if unknown:
        raise HTTPException(400, f"unknown outputs {sorted(unknown)}; this model has 'logits' and 'cam'")
    # in a worker thread: the event loop keeps serving while the model runs
    logits, cams = await asyncio.get_running_loop().run_in_executor(None, engine.run, x)
    outputs = [{"name": k, "datatype": "FP32", "shape": list(v.shape), "data": v.ravel().tolist()}
               for k, v in (("logits", logits), ("cam", cams)) if k in wanted]
    return {"model_name": engine.name, "model_version": str(engine.version), "id": body.id, "outputs": outputs}
