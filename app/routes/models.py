"""The registry's versions and their cards."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from ..registry import RegistryError
from .deps import ServiceDep

router = APIRouter(prefix="/v1/models", tags=["models"])


def _summary(service: ServiceDep, version: int) -> dict:
    name = service.settings.model_name
    card = service.registry.card(name, version)
    live = service.engine.version if service.engine else None
    return {"name": name, "version": version, "deployed": version == service.registry.deployed(name),
            "serving": version == live, "architecture": card.get("architecture"),
            "labels": card.get("labels"), "metrics": card.get("metrics"), "created": card.get("created")}


@router.get("")
def list_models(service: ServiceDep) -> dict:
    name = service.settings.model_name
    return {"name": name, "deployed": service.registry.deployed(name),
            "versions": [_summary(service, v) for v in service.registry.versions(name)]}


@router.get("/{version}")
def show_model(version: int, service: ServiceDep) -> dict:
    try:
        return {**_summary(service, version), "card": service.registry.card(service.settings.model_name, version)}
    except RegistryError as e:
        raise HTTPException(404, str(e)) from None
