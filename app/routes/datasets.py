"""Training data sets: upload a zip of an image-folder tree, list them, add labelled samples."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request

from ..datasets import Limits
from ..imaging import decode
from .deps import AdminDep, ServiceDep
from .predict import read_limited, read_uploads

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])
SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif", "MPO": ".jpg"}

# DatasetError and ImageError become their 4xx JSON answers in app.main's exception handlers.


@router.get("")
def list_datasets(service: ServiceDep, actor: AdminDep) -> dict:
    return {"datasets": service.datasets.list()}


@router.get("/{name}")
def show_dataset(name: str, service: ServiceDep, actor: AdminDep) -> dict:
    return service.datasets.describe(name)


@router.post("", status_code=201)
async def upload_dataset(request: Request, service: ServiceDep, actor: AdminDep,
                         name: Annotated[str, Query(description="the new data set's name")]) -> dict:
    """A zip of `<class>/<image>` entries (multipart `file` or a raw application/zip body)."""
    s = service.settings
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        _, data = (await read_uploads(request, s.max_dataset_bytes, 1, allowed=("application/",)))[0]
    elif content_type in ("application/zip", "application/x-zip-compressed", "application/octet-stream"):
        data = await read_limited(request.stream(), s.max_dataset_bytes)
    else:
        raise HTTPException(415, f"content type {content_type!r}: send application/zip or multipart/form-data")
    limits = Limits(s.max_dataset_bytes, s.max_dataset_files, s.max_dataset_uncompressed)
    return await asyncio.get_running_loop().run_in_executor(None, service.datasets.import_zip, name, data, limits)


@router.post("/{name}/samples", status_code=201)
async def add_sample(name: str, request: Request, service: ServiceDep, actor: AdminDep,
                     label: Annotated[str, Query(description="the sample's class")]) -> dict:
    """One labelled image, e.g. a user's correction of a prediction."""
    s = service.settings
    _, data = (await read_uploads(request, s.max_upload_bytes, 1))[0]
    decoded = await asyncio.get_running_loop().run_in_executor(None, decode, data, s.max_pixels, 64)
    if not service.datasets.path(name).is_dir():
        raise HTTPException(404, f"no dataset {name!r}")
    return service.datasets.add_sample(name, label, data, SUFFIXES.get(decoded.format, ".img"))
