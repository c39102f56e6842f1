"""The models this service serves, their registry versions and their cards."""

from __future__ import annotations

from fastapi import APIRouter

from ..model_manager import ModelManager
from ..registry import RegistryError, UnknownVersion
from ..schemas import ErrorAnswer, ModelDetail, ModelEntry, ModelIndex, ModelList, ModelSummary
from .deps import ModelsDep
from .reports import report_url

router = APIRouter(prefix="/v1/models", tags=["models"], responses={404: {"model": ErrorAnswer}})


def summary(models: ModelManager, version: int, deployed: int | None, with_card: bool = False) -> ModelDetail:
    """A version's figures; a version whose card cannot be read is listed as broken, not an error."""
    live = models.engine.version if models.engine else None
    base = dict(name=models.name, version=version, deployed=version == deployed, serving=version == live)
    try:
        card = models.registry.card(models.name, version)
    except UnknownVersion:
        raise
    except RegistryError as e:
        return ModelDetail(**base, broken=str(e))
    return ModelDetail(**base, architecture=card.architecture, precision=card.precision, labels=list(card.labels),
                       metrics=card.metrics, created=card.created, card=card.to_dict() if with_card else None,
                       report=report_url(models, version))


def entry(manager: ModelManager, default: str) -> ModelEntry:
    """One model at a glance: its state, its live version's card and its routes."""
    registry, name, engine = manager.registry, manager.name, manager.engine
    deployed = registry.deployed(name)
    card, error = (engine.card if engine else None), (manager.load_error if engine is None else None)
    if card is None and deployed is not None:
        try:
            card = registry.card(name, deployed)
        except RegistryError as e:
            error = error or str(e)
    return ModelEntry(name=name, default=name == default, state=manager.state, deployed=deployed,
                      serving=engine.version if engine else None, versions=len(registry.versions(name)),
                      architecture=card.architecture if card else None, precision=card.precision if card else None,
                      labels=list(card.labels) if card else None,
                      memory_bytes=manager.memory_bytes if engine else None, error=error,
                      routes={"predict": f"{router.prefix}/{name}/predict",
                              "versions": f"{router.prefix}/{name}/versions",
                              "oip": f"/v2/models/{name}"})


@router.get("", response_model=ModelIndex)
def list_models(models: ModelsDep) -> ModelIndex:
    """Every model: those that serve (the default first), then those with versions but none live."""
    managers = [models.manager(n) for n in models.known_names()]
    return ModelIndex(default=models.default, max_loaded=models.bound or None,
                      models=[entry(m, models.default) for m in managers])


@router.get("/{name}", response_model=ModelList)
@router.get("/{name}/versions", response_model=ModelList)
def list_versions(name: str, models: ModelsDep) -> ModelList:
    manager = models.manager(name)
    deployed = manager.registry.deployed(manager.name)
    versions = [ModelSummary(**summary(manager, v, deployed).model_dump(exclude={"card"}))
                for v in manager.registry.versions(manager.name)]
    return ModelList(name=manager.name, state=manager.state, deployed=deployed, versions=versions)


@router.get("/{name}/versions/{version}", response_model=ModelDetail)
def show_version(name: str, version: int, models: ModelsDep) -> ModelDetail:
    manager = models.manager(name)
    return summary(manager, version, manager.registry.deployed(manager.name), with_card=True)
