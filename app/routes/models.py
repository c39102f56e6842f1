"""The registry's versions and their cards."""

from __future__ import annotations

from fastapi import APIRouter

from ..model_manager import ModelManager
from ..registry import RegistryError, UnknownVersion
from ..schemas import ErrorAnswer, ModelDetail, ModelList, ModelSummary
from .deps import ModelsDep
from .reports import report_url

router = APIRouter(prefix="/v1/models", tags=["models"])


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


@router.get("", response_model=ModelList)
def list_models(models: ModelsDep) -> ModelList:
    deployed = models.registry.deployed(models.name)
    versions = [ModelSummary(**summary(models, v, deployed).model_dump(exclude={"card"}))
                for v in models.registry.versions(models.name)]
    return ModelList(name=models.name, deployed=deployed, versions=versions)


@router.get("/{version}", response_model=ModelDetail, responses={404: {"model": ErrorAnswer}})
def show_model(version: int, models: ModelsDep) -> ModelDetail:
    return summary(models, version, models.registry.deployed(models.name), with_card=True)
