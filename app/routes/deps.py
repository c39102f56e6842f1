"""Route dependencies: each part of the service as a typed alias, and the two token rules.

All `async def`: none of them blocks, and FastAPI runs a plain `def` dependency in its thread pool,
a thread hop per dependency per request (three of them: about 0.55 ms more CPU a request;
BENCHMARKS.md, peers)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from pydantic import SecretStr

from ..live_models import LiveModels
from ..predictor import Predictor
from ..retraining import Retraining
from ..settings import Settings


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_models(request: Request) -> LiveModels:
    return request.app.state.models


async def get_predictor(request: Request) -> Predictor:
    return request.app.state.predictor


async def get_retraining(request: Request) -> Retraining:
    return request.app.state.retraining


SettingsDep = Annotated[Settings, Depends(get_settings)]
ModelsDep = Annotated[LiveModels, Depends(get_models)]
PredictorDep = Annotated[Predictor, Depends(get_predictor)]
RetrainingDep = Annotated[Retraining, Depends(get_retraining)]


def check_bearer(request: Request, expected: SecretStr, what: str) -> None:
    """401 without an `Authorization: Bearer` token, 403 when it differs (constant-time compare)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(401, f"{what} required: send 'Authorization: Bearer <token>'",
                            headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(token.encode(), expected.get_secret_value().encode()):
        raise HTTPException(403, f"wrong {what}")


async def require_admin(request: Request, settings: SettingsDep) -> str:
    """The admin bearer token. With no token configured the admin endpoints are off, unless local
    development opened them on purpose."""
    if settings.admin_token is None:
        if settings.open_admin_for_local_development:
            return "local-development"
        raise HTTPException(403, "admin endpoints are off: set RESCAM_ADMIN_TOKEN to use them")
    check_bearer(request, settings.admin_token, "admin token")
    return "admin"


AdminDep = Annotated[str, Depends(require_admin)]


async def require_predict_token(request: Request, settings: SettingsDep) -> None:
    """Inference (v1 and v2) needs its own bearer token only when RESCAM_PREDICT_TOKEN is set."""
    if settings.predict_token is not None:
        check_bearer(request, settings.predict_token, "token")
