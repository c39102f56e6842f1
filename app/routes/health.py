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
    """Alive; the default model's engine, and every loaded one."""
    default = models.manager()
    engine = default.engine
    loaded = {m.name: m.engine.describe() for m in models.serving() if m.engine is not None}
    return Health(status="alive", pid=os.getpid(), model=None if engine is None else engine.describe(),
                  provider=None if engine is None else engine.provider, load_error=default.load_error,
                  models=loaded)


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def readyz(models: ModelsDep):
    """Ready when every model that must serve is serving (or in standby, loaded on demand)."""
    ready, states = models.readiness()
    default = models.manager().engine
    body = Readiness(ready=ready, models=states, model=models.default,
                     version=default.version if default else None, provider=default.provider if default else None,
                     reason=None if ready else "; ".join(f"{n}: {s.get('reason') or s['state']}"
                                                         for n, s in states.items()
                                                         if s["state"] not in ("serving", "standby")))
    return body if ready else JSONResponse(body.model_dump(), status_code=503)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
