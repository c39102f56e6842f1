"""Deploy, roll back and delete a model's versions (admin token required).

A version goes live only after it loaded in a fresh session and passed its smoke inference;
otherwise the call answers 409 with the reason and the old version keeps serving
(app.model_manager).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from ..schemas import DeleteAnswer, DeployAnswer, ErrorAnswer
from .deps import AdminDep, ModelsDep, RetrainingDep

router = APIRouter(prefix="/v1/models", tags=["admin"],
                   responses={s: {"model": ErrorAnswer} for s in (401, 403, 404, 409)})


class DeployRequest(BaseModel):
    reason: str = Field("", max_length=2000, description="recorded in the audit log")


@router.post("/{name}/versions/{version}/deploy", response_model=DeployAnswer)
async def deploy(name: str, version: int, models: ModelsDep, actor: AdminDep, body: DeployRequest | None = None
                 ) -> DeployAnswer:
    manager = models.manager(name)
    engine = await asyncio.get_running_loop().run_in_executor(
        None, lambda: manager.deploy(version, actor=actor, reason=body.reason if body else "",
                                    via=f"POST /v1/models/{name}/versions/{version}/deploy"))
    return DeployAnswer(name=manager.name, deployed=version, provider=engine.provider)


@router.post("/{name}/rollback", response_model=DeployAnswer)
async def rollback(name: str, models: ModelsDep, actor: AdminDep, body: DeployRequest | None = None) -> DeployAnswer:
    manager = models.manager(name)
    version, left = await asyncio.get_running_loop().run_in_executor(
        None, lambda: manager.rollback(actor=actor, reason=body.reason if body else ""))
    return DeployAnswer(name=manager.name, deployed=version, rolled_back_from=left)


@router.delete("/{name}/versions/{version}", response_model=DeleteAnswer)
def delete(name: str, version: int, models: ModelsDep, retraining: RetrainingDep, actor: AdminDep) -> DeleteAnswer:
    manager = models.manager(name)
    busy = retraining.jobs_for(manager.name)
    if busy:
        raise HTTPException(409, f"job {busy[0]} is training a candidate for model {manager.name!r}; "
                                 "delete its versions when it has ended (or cancel it)")
    manager.delete(version, actor)
    return DeleteAnswer(name=manager.name, deleted=version, by=actor)
