"""Shared route dependencies."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from pydantic import SecretStr

from ..engine import Engine
from ..pipeline import Service


def get_service(request: Request) -> Service:
    return request.app.state.service


def get_engine(service: Annotated[Service, Depends(get_service)]) -> Engine:
    if service.engine is None:
        raise HTTPException(503, service.load_error or "no model is loaded yet")
    return service.engine


ServiceDep = Annotated[Service, Depends(get_service)]
EngineDep = Annotated[Engine, Depends(get_engine)]


def check_bearer(request: Request, expected: SecretStr, what: str) -> None:
    """401 without an `Authorization: Bearer` token, 403 when it differs (constant-time compare)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(401, f"{what} required: send 'Authorization: Bearer <token>'",
                            headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(token.encode(), expected.get_secret_value().encode()):
        raise HTTPException(403, f"wrong {what}")


def require_admin(request: Request, service: Annotated[Service, Depends(get_service)]) -> str:
    """The admin bearer token. With no token configured the admin endpoints are off, unless local
    development opened them on purpose."""
    settings = service.settings
    if settings.admin_token is None:
        if settings.open_admin_for_local_development:
            return "local-development"
        raise HTTPException(403, "admin endpoints are off: set RESCAM_ADMIN_TOKEN to use them")
    check_bearer(request, settings.admin_token, "admin token")
    return "admin"


AdminDep = Annotated[str, Depends(require_admin)]


def require_predict_token(request: Request, service: Annotated[Service, Depends(get_service)]) -> None:
    """Predictions need their own bearer token only when RESCAM_PREDICT_TOKEN is set."""
    if service.settings.predict_token is not None:
        check_bearer(request, service.settings.predict_token, "token")
