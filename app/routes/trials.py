"""Shadow trials of a model's candidate versions (app.shadow): start, watch, stop, promote.

Every route needs the admin token (a trial's figures describe live traffic); promoting is a deploy like any other (the
gate, the smoke test, the audit entry naming the trial)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from ..schemas import ErrorAnswer, TrialAnswer, TrialFigures, TrialList, TrialRequest
from ..shadow import ShadowTrials
from .admin import DeployRequest
from .deps import AdminDep, ModelsDep

router = APIRouter(prefix="/v1/models", tags=["trials"],
                   responses={s: {"model": ErrorAnswer} for s in (401, 403, 404, 409)})


async def get_trials(request: Request) -> ShadowTrials:
    return request.app.state.trials


TrialsDep = Annotated[ShadowTrials, Depends(get_trials)]


def answer(trials: ShadowTrials, trial: dict[str, Any]) -> TrialAnswer:
    return TrialAnswer(**trial, figures=TrialFigures(**trials.store.figures(trial["id"])))


async def off_loop(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


@router.get("/{name}/trials", response_model=TrialList)
async def list_trials(name: str, models: ModelsDep, trials: TrialsDep, _: AdminDep) -> TrialList:
    """The model's trials, newest first, each with its figures so far."""
    model = models.manager(name).name
    return TrialList(model=model, trials=[answer(trials, t) for t in await off_loop(trials.store.list, model)])


@router.post("/{name}/trials", response_model=TrialAnswer, status_code=201)
async def start_trial(name: str, body: TrialRequest, models: ModelsDep, trials: TrialsDep, actor: AdminDep
                      ) -> TrialAnswer:
    """Put `version` in shadow beside the live version: it answers `share` of the live requests
    (nobody sees its answers) until `samples` images are compared."""
    trial = await off_loop(lambda: trials.start(models.manager(name).name, body.version, body.share, body.samples,
                                                actor, body.reason))
    return answer(trials, trial)


@router.get("/{name}/trials/{trial_id}", response_model=TrialAnswer)
async def get_trial(name: str, trial_id: str, models: ModelsDep, trials: TrialsDep, _: AdminDep) -> TrialAnswer:
    return answer(trials, trials.trial(models.manager(name).name, trial_id))


@router.post("/{name}/trials/{trial_id}/stop", response_model=TrialAnswer)
async def stop_trial(name: str, trial_id: str, models: ModelsDep, trials: TrialsDep, actor: AdminDep) -> TrialAnswer:
    return answer(trials, await off_loop(trials.stop_trial, models.manager(name).name, trial_id, actor))


@router.post("/{name}/trials/{trial_id}/promote", response_model=TrialAnswer)
async def promote_trial(name: str, trial_id: str, models: ModelsDep, trials: TrialsDep, actor: AdminDep,
                        body: DeployRequest | None = None) -> TrialAnswer:
    """Deploy the trial's candidate; 409 (and nothing changed) when the deploy refuses it."""
    model = models.manager(name).name
    return answer(trials, await off_loop(trials.promote, model, trial_id, actor, body.reason if body else ""))
