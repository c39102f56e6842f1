"""Shared route dependencies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

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
