"""Each version's report (training/report.py), and two versions side by side (admin token
required: a report shows validation images of the user's data)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from ..comparison import compare
from ..model_manager import ModelManager
from ..registry import REPORT_DIR
from ..schemas import Comparison, ErrorAnswer
from .deps import AdminDep, ModelsDep

router = APIRouter(prefix="/v1/models", tags=["reports"],
                   responses={s: {"model": ErrorAnswer} for s in (401, 403, 404)})
MEDIA = {".html": "text/html", ".png": "image/png", ".json": "application/json"}


def report_url(models: ModelManager, version: int) -> str | None:
    """Where a version's report page is served, when it has one."""
    if models.registry.report_index(models.name, version) is None:
        return None
    return f"{router.prefix}/{models.name}/versions/{version}/report/index.html"


@router.get("/{name}/versions/{version}/report/{path:path}", response_class=FileResponse, responses={200: {"content": {
    "text/html": {}, "image/png": {}, "application/json": {}}, "description": "a file of the version's report"}})
def report_file(name: str, version: int, path: str, live: ModelsDep, actor: AdminDep) -> FileResponse:
    """`index.html` (self-contained: opens offline), `report.json`, the figures' PNGs, `gallery/NN.png`."""
    models = live.manager(name)
    folder = (models.registry.version_dir(models.name, version) / REPORT_DIR).resolve()
    file = (folder / path).resolve()
    if not file.is_relative_to(folder) or not file.is_file() or file.suffix not in MEDIA:
        raise HTTPException(404, f"v{version} has no report file {path!r}" if folder.is_dir() else
                            f"v{version} has no report: `rescam report {version}` writes one")
    return FileResponse(Path(file), media_type=MEDIA[file.suffix])


@router.get("/{name}/compare/{a}/{b}", response_model=Comparison)
async def compare_versions(name: str, a: int, b: int, live: ModelsDep, actor: AdminDep) -> dict[str, Any]:
    """Both versions' figures, and both versions' answers (label, score, box, drawn overlay) on the
    same validation images: those of b's report, else a's."""
    models = live.manager(name)
    answer = await asyncio.get_running_loop().run_in_executor(None, compare, models, a, b)
    for side in ("a", "b"):
        answer[side]["report"] = report_url(models, answer[side]["version"])
    return answer
