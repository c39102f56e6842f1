"""The registry's versions and their cards."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from ..registry import RegistryError
from .deps import ServiceDep

router = APIRouter(prefix="/v1/models", tags=["models"])


def _summary(service: ServiceDep, version: int, card: dict, deployed: int | None) -> dict:
    live = service.engine.version if service.engine else None
    return {"name": service.settings.model_name, "version": version, "deployed": version == deployed,
            "serving": version == live, "architecture": card.get("architecture"),
            "labels": card.get("labels"), "metrics": card.get("metrics"), "created": card.get("created")}


@router.get("")
def list_models(service: ServiceDep) -> dict:
    name, registry = service.settings.model_name, service.registry
    deployed = registry.deployed(name)
    return {"name": name, "deployed": deployed,
            "versions": [_summary(service, v, registry.card(name, v), deployed) for v in registry.versions(name)]}


@router.get("/{version}")
def show_model(version: int, service: ServiceDep) -> dict:
    name, registry = service.settings.model_name, service.registry
    try:
        card = registry.card(name, version)
    except RegistryError as e:
        raise HTTPException(404, str(e)) from None
    return {**_summary(service, version, card, registry.deployed(name)), "card": card}
