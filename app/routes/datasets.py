"""Training data sets: upload a zip of an image-folder tree, list them, add labelled samples
(admin token required). DatasetError and ImageError become their 4xx answers in app.main."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request

from ..datasets import Limits
from ..imaging import decode
from ..schemas import DatasetAnswer, DatasetList, ErrorAnswer, SampleAnswer
from .deps import AdminDep, PredictorDep, RetrainingDep, SettingsDep
from .uploads import read_limited, read_uploads, upload_body

router = APIRouter(prefix="/v1/datasets", tags=["datasets"],
                   responses={s: {"model": ErrorAnswer} for s in (401, 403, 404, 413, 415, 422)})
SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif", "MPO": ".jpg"}
ZIP_TYPES = ("application/zip", "application/x-zip-compressed", "application/octet-stream")


@router.get("", response_model=DatasetList)
def list_datasets(retraining: RetrainingDep, actor: AdminDep) -> DatasetList:
    return DatasetList(datasets=retraining.datasets.list())


@router.get("/{name}", response_model=DatasetAnswer)
def show_dataset(name: str, retraining: RetrainingDep, actor: AdminDep) -> DatasetAnswer:
    return DatasetAnswer(**retraining.datasets.describe(name))


@router.post("", status_code=201, response_model=DatasetAnswer, responses={409: {"model": ErrorAnswer}},
             openapi_extra=upload_body(*ZIP_TYPES, description="a zip of <class>/<image> folders"))
async def upload_dataset(request: Request, retraining: RetrainingDep, settings: SettingsDep, actor: AdminDep,
                         name: Annotated[str, Query(description="the new data set's name")]) -> DatasetAnswer:
    """A zip of `<class>/<image>` entries, or `train/<class>/<image>` and `val/<class>/<image>` (the
    split kept), with an optional `boxes.csv` (`path,label,x0,y0,x1,y1`, paths relative to the zip's
    root); multipart `file` or a raw application/zip body. A bad row is a 422 naming it."""
    s = settings
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        _, data = (await read_uploads(request, s.max_dataset_bytes, 1, allowed=("application/",)))[0]
    elif content_type in ZIP_TYPES:
        data = await read_limited(request.stream(), s.max_dataset_bytes)
    else:
        raise HTTPException(415, f"content type {content_type!r}: send application/zip or multipart/form-data")
    limits = Limits(s.max_dataset_bytes, s.max_dataset_files, s.max_dataset_uncompressed)
    described = await asyncio.get_running_loop().run_in_executor(None, retraining.datasets.import_zip, name, data,
                                                                 limits)
    return DatasetAnswer(**described)


@router.post("/{name}/samples", status_code=201, response_model=SampleAnswer,
             openapi_extra=upload_body("image/*", "application/octet-stream", description="the sample's image"))
async def add_sample(name: str, request: Request, retraining: RetrainingDep, predictor: PredictorDep,
                     settings: SettingsDep, actor: AdminDep,
                     label: Annotated[str, Query(description="the sample's class")],
                     x0: Annotated[float | None, Query(
                         description="the object's box in the image's pixels (after EXIF orientation): all four "
                                     "of x0, y0, x1, y1 or none")] = None,
                     y0: float | None = None, x1: float | None = None, y1: float | None = None,
                     split: Annotated[Literal["train", "val"] | None, Query(
                         description="for a data set with train/val folders (default train)")] = None) -> SampleAnswer:
    """One labelled image, e.g. a user's correction of a prediction, with its box if known."""
    corners = (x0, y0, x1, y1)
    if any(v is None for v in corners) and any(v is not None for v in corners):
        raise HTTPException(422, "a box needs all of x0, y0, x1, y1")
    _, data = (await read_uploads(request, settings.max_upload_bytes, 1))[0]
    decoded = await asyncio.get_running_loop().run_in_executor(None, decode, data, settings.max_pixels, 64,
                                                               predictor.decode_memory)
    if not retraining.datasets.path(name).is_dir():
        raise HTTPException(404, f"no dataset {name!r}")
    box = None if x0 is None else corners
    return SampleAnswer(**retraining.datasets.add_sample(name, label, data, SUFFIXES.get(decoded.format, ".img"),
                                                         (decoded.width, decoded.height), box, split))
