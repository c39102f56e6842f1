"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import os

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .deps import ServiceDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(service: ServiceDep) -> dict:
    engine = service.engine
    return {"status": "alive", "pid": os.getpid(), "model": None if engine is None else engine.describe(),
            "provider": None if engine is None else engine.provider, "load_error": service.load_error}


@router.get("/readyz")
def readyz(service: ServiceDep) -> JSONResponse:
    engine = service.engine
    if engine is None or not engine.warm:
        return JSONResponse({"ready": False, "reason": service.load_error or "loading"}, status_code=503)
    return JSONResponse({"ready": True, "model": engine.name, "version": engine.version,
                         "provider": engine.provider})


@router.get("/metrics")
def metrics(service: ServiceDep) -> Response:
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
