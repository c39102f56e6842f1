"""Deploy, roll back and delete model versions (admin token required).

A version goes live only after it loaded in a fresh session and passed its smoke inference;
otherwise the call answers 409 with the reason and the old version keeps serving
(app.model_manager).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from pydantic import BaseModel, Field

from ..schemas import DeleteAnswer, DeployAnswer, ErrorAnswer
from .deps import AdminDep, ModelsDep

router = APIRouter(prefix="/v1/models", tags=["admin"],
                   responses={s: {"model": ErrorAnswer} for s in (401, 403, 404, 409)})


class DeployRequest(BaseModel):
    reason: str = Field("", max_length=2000, description="recorded in the audit log")


@router.post("/{version}/deploy", response_model=DeployAnswer)
async def deploy(version: int, models: ModelsDep, actor: AdminDep, body: DeployRequest | None = None) -> DeployAnswer:
    engine = await asyncio.get_running_loop().run_in_executor(
        None, lambda: models.deploy(version, actor=actor, reason=body.reason if body else "",
                                   via=f"POST /v1/models/{version}/deploy"))
    return DeployAnswer(name=models.name, deployed=version, provider=engine.provider)


@router.post("/rollback", response_model=DeployAnswer)
async def rollback(models: ModelsDep, actor: AdminDep, body: DeployRequest | None = None) -> DeployAnswer:
    version, left = await asyncio.get_running_loop().run_in_executor(
        None, lambda: models.rollback(actor=actor, reason=body.reason if body else ""))
    return DeployAnswer(name=models.name, deployed=version, rolled_back_from=left)


@router.delete("/{version}", response_model=DeleteAnswer)
def delete(version: int, models: ModelsDep, actor: AdminDep) -> DeleteAnswer:
    models.delete(version, actor)
    return DeleteAnswer(name=models.name, deleted=version, by=actor)
