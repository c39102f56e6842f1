"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import os

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from ..schemas import Health, Readiness
from .deps import ModelsDep

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz(models: ModelsDep) -> Health:
    engine = models.engine
    return Health(status="alive", pid=os.getpid(), model=None if engine is None else engine.describe(),
                  provider=None if engine is None else engine.provider, load_error=models.load_error)


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def readyz(models: ModelsDep):
    engine = models.engine
    if engine is None or not engine.warm:
        return JSONResponse({"ready": False, "reason": models.load_error or "loading"}, status_code=503)
    return Readiness(ready=True, model=engine.name, version=engine.version, provider=engine.provider)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
