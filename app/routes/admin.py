"""Deploy, roll back and delete model versions (admin token required).

A version goes live only after it loaded in a fresh session and passed its smoke inference;
otherwise the call answers with the reason and the old version keeps serving.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel

from ..engine import ModelLoadError
from ..registry import RegistryError
from .deps import AdminDep, ServiceDep

router = APIRouter(prefix="/v1/models", tags=["admin"])


class DeployRequest(BaseModel):
    reason: str = ""


async def _in_thread(service: ServiceDep, version: int, fn, *args):
    """Run a load-and-check step off the event loop; a version that does not load is a 409 and the
    live one keeps serving."""
    try:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)
    except ModelLoadError as e:
        live = service.registry.deployed(service.settings.model_name)
        raise HTTPException(409, f"v{version} was not deployed, v{live} keeps serving: {e}") from None


@router.post("/{version}/deploy")
async def deploy(version: int, service: ServiceDep, actor: AdminDep, body: DeployRequest | None = None) -> dict:
    name = service.settings.model_name
    if version not in service.registry.versions(name):
        raise HTTPException(404, f"model {name!r} has no version {version}")
    engine = await _in_thread(service, version, service.deploy_checked, version,
                              {"actor": actor, "reason": body.reason if body else ""})
    return {"name": name, "deployed": version, "provider": engine.provider}


@router.post("/rollback")
async def rollback(service: ServiceDep, actor: AdminDep, body: DeployRequest | None = None) -> dict:
    name = service.settings.model_name
    pointer = service.registry.pointer(name)
    if pointer is None or not pointer["history"]:
        raise HTTPException(409, f"model {name!r} has no earlier deployment to roll back to")
    previous = pointer["history"][-1]
    engine = await _in_thread(service, previous, service.load_version, previous)
    try:
        version = service.registry.rollback(name, actor=actor, reason=body.reason if body else "")
    except RegistryError as e:
        raise HTTPException(409, str(e)) from None
    service.swap(engine)
    return {"name": name, "deployed": version, "rolled_back_from": pointer["version"]}


@router.delete("/{version}")
def delete(version: int, service: ServiceDep, actor: AdminDep) -> dict:
    name = service.settings.model_name
    if version not in service.registry.versions(name):
        raise HTTPException(404, f"model {name!r} has no version {version}")
    try:
        service.registry.delete(name, version)
    except RegistryError as e:
        raise HTTPException(409, str(e)) from None
    return {"name": name, "deleted": version, "by": actor}
