"""POST images for predictions; fetch their CAM overlays and raw heatmaps."""

from __future__ import annotations

import asyncio
import io
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from ..cam import BoxRule
from ..engine import ModelLoadError
from ..pipeline import Options
from .deps import ServiceDep, require_predict_token

router = APIRouter(tags=["predict"], dependencies=[Depends(require_predict_token)])
RAW_TYPES = ("image/", "application/octet-stream")


async def read_limited(stream, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"upload is larger than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_uploads(request: Request, max_bytes: int, max_files: int, allowed: tuple[str, ...] = RAW_TYPES
                       ) -> list[tuple[str, bytes]]:
    """The images of a request: multipart parts named `file` (or `files`), or the raw body."""
    content_type = request.headers.get("content-type", "").lower()
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes * max(1, max_files):
        raise HTTPException(413, f"upload is larger than the limit of {max_bytes} bytes per file")
    if content_type.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=max_files, max_fields=50, max_part_size=1024 * 1024)
        except MultiPartException as e:
            raise HTTPException(400, f"malformed multipart body: {e.message}") from None
        files = [v for k, v in form.multi_items() if k in ("file", "files") and isinstance(v, UploadFile)]
        if not files:
            raise HTTPException(422, "multipart body has no part named 'file' holding an image")
        out = []
        for f in files:
            if f.size is not None and f.size > max_bytes:
                raise HTTPException(413, f"{f.filename!r} is larger than the limit of {max_bytes} bytes")
            part_type = (f.content_type or "").lower()
            if part_type and not part_type.startswith(allowed):
                raise HTTPException(415, f"{f.filename!r} has content type {part_type!r}; send an image")
            out.append((f.filename or "upload", await f.read()))
        return out
    if content_type and not content_type.startswith(RAW_TYPES):
        raise HTTPException(415, f"content type {content_type!r} is not an image; send image/* or multipart/form-data")
    body = await read_limited(request.stream(), max_bytes)
    if not body:
        raise HTTPException(400, "the request body is empty; send an image")
    return [("body", body)]


def request_rule(threshold: float | None, box_rule: str | None) -> BoxRule | None:
    if threshold is not None and box_rule is not None:
        raise HTTPException(422, "give threshold or box_rule, not both")
    if threshold is not None:
        return BoxRule("threshold", threshold)
    if box_rule is None:
        return None
    try:
        return BoxRule.parse(box_rule)
    except ValueError as e:
        raise HTTPException(422, str(e)) from None


@router.post("/v1/predict")
async def predict(
    request: Request,
    service: ServiceDep,
    top_k: Annotated[int, Query(ge=1, le=1000, description="labels to return")] = 5,
    cam: Annotated[bool, Query(description="keep CAMs for overlay URLs")] = True,
    boxes: Annotated[bool, Query(description="CAM boxes per label")] = True,
    threshold: Annotated[float | None, Query(gt=0, lt=1, description="box threshold, a fraction of the CAM's max")] = None,
    box_rule: Annotated[str | None, Query(max_length=32, description="threshold:F, mass:F (the smallest region "
                                          "holding F of the CAM's heat) or otsu; default: the model's rule")] = None,
    all_boxes: Annotated[bool, Query(description="every component, not only the largest")] = False,
    min_area: Annotated[float, Query(ge=0, le=1, description="smallest component kept, a fraction of the image")] = 0.0,
):
    """Multipart `file` (one or several) or a raw image body. Answers labels, scores, CAM boxes
    and overlay URLs for each image."""
    s = service.settings
    uploads = await read_uploads(request, s.max_upload_bytes, s.max_files)
    # top_k beyond the label count returns every label; no model loaded is a 503 (ModelLoadError)
    opts = Options(top_k=top_k, cams=cam, boxes=boxes, rule=request_rule(threshold, box_rule), all_boxes=all_boxes,
                   min_area=min_area)
    try:
        answer = await service.predict(uploads, opts)
    except asyncio.TimeoutError:
        raise HTTPException(504, f"no answer within {s.request_timeout_s} s; the service is overloaded") from None
    except ModelLoadError as e:
        raise HTTPException(503, str(e)) from None
    errors = [r["error"] for r in answer["results"] if "error" in r]
    if errors and len(errors) == len(answer["results"]):
        first = errors[0]
        return JSONResponse({"error": first["message"], "detail": answer["results"]}, status_code=first["status"])
    return answer


def _stored_image(service: ServiceDep, pid: str, image: int):
    stored = service.store.get(pid)
    if stored is None:
        raise HTTPException(404, f"prediction {pid!r} is unknown or has expired "
                                 f"(predictions are kept {service.settings.prediction_ttl_s:.0f} s)")
    if not 0 <= image < len(stored.images):
        raise HTTPException(404, f"prediction {pid!r} has {len(stored.images)} image(s); no image {image}")
    return stored, stored.images[image]


@router.get("/v1/predictions/{pid}/cam")
def cam_overlay(
    pid: str,
    service: ServiceDep,
    label: Annotated[str, Query(description="a label name or index")],
    image: Annotated[int, Query(ge=0)] = 0,
    format: Annotated[Literal["png", "jpeg", "webp", "heatmap.png", "npy"], Query()] = "png",
    alpha: Annotated[float, Query(ge=0, le=1)] = 0.5,
    colormap: Annotated[Literal["turbo", "jet"], Query()] = "turbo",
    threshold: Annotated[float | None, Query(gt=0, lt=1)] = None,
    max_side: Annotated[int | None, Query(ge=16, le=8192)] = None,
):
    """The CAM of any label over the image (png/jpeg/webp), the raw heatmap as a grey PNG, or
    the float32 heatmap as .npy; the heatmap is at the working resolution of the image."""
    from ..overlay import encode, grey_png

    stored, item = _stored_image(service, pid, image)
    try:
        index = service.resolve_label(stored.labels, label)
    except KeyError:
        raise HTTPException(404, f"model {stored.model} v{stored.version} has no label {label!r}") from None
    if format == "npy":
        buf = io.BytesIO()
        np.save(buf, service.heatmap(item, index))
        return Response(buf.getvalue(), media_type="application/octet-stream")
    if format == "heatmap.png":
        return Response(grey_png(service.heatmap(item, index)), media_type="image/png")
    picture = service.overlay_image(item, index, stored.labels[index], alpha, colormap,
                                    BoxRule("threshold", threshold) if threshold else stored.rule,
                                    max_side or service.settings.overlay_max_side)
    data, media_type = encode(picture, format)
    return Response(data, media_type=media_type)
